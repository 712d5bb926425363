import { randomBytes } from 'node:crypto';
import {
  decodeRecoveryKey as sdkDecode,
  encodeRecoveryKey as sdkEncode,
} from 'matrix-js-sdk/lib/crypto-api/recovery-key.js';
import { describe, expect, it } from 'vitest';
import { decodeRecoveryKey, encodeRecoveryKey } from '../../keyvault/backup/index.ts';

// Ours against matrix-js-sdk's, the code Element uses to print and read recovery keys.
describe('Matrix recovery keys', () => {
  it('what we print, matrix-js-sdk reads; what it prints, we read (100 random keys)', () => {
    for (let i = 0; i < 100; i++) {
      const key = new Uint8Array(randomBytes(32));
      const ours = encodeRecoveryKey(key);
      expect(ours).toBe(sdkEncode(key));
      expect(sdkDecode(ours)).toEqual(key);
      const decoded = decodeRecoveryKey(sdkEncode(key) ?? '');
      expect(decoded).toEqual({ ok: true, key });
    }
  });

  it('is printed in groups of four, and read back with any spacing or line breaks', () => {
    const key = new Uint8Array(randomBytes(32));
    const printed = encodeRecoveryKey(key);
    expect(printed).toMatch(/^(\S{4} )+\S{1,4}$/);
    const retyped = printed.replace(/ /g, '').replace(/(.{8})/g, '$1\n  ');
    expect(decodeRecoveryKey(retyped)).toEqual({ ok: true, key });
  });

  it('a mistyped character is nearly always caught; one that slips through is another key', () => {
    // The format has one parity byte, so about one change in 256 passes it (as in Element):
    // a restore must compare the key it read with the backup's public key before using it.
    // A fixed key keeps the counts deterministic.
    const key = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff);
    const printed = encodeRecoveryKey(key).replace(/ /g, '');
    let caught = 0;
    let tried = 0;
    for (let i = 0; i < printed.length; i++) {
      for (const swapped of ['2', 'x']) {
        if (printed[i] === swapped) continue;
        tried++;
        const result = decodeRecoveryKey(printed.slice(0, i) + swapped + printed.slice(i + 1));
        if (result.ok) expect(Buffer.from(result.key).equals(Buffer.from(key))).toBe(false);
        else caught++;
      }
    }
    expect(caught / tried).toBeGreaterThan(0.95);
  });

  it('refuses what is not a recovery key with a one-line reason that does not repeat it', () => {
    const key = new Uint8Array(randomBytes(32));
    const other = encodeRecoveryKey(key).replace(/ /g, '');
    for (const text of ['', 'hello world!', '0OIl', other.slice(0, -4), `${other}1111`]) {
      const result = decodeRecoveryKey(text);
      expect(result.ok).toBe(false);
      if (!result.ok) {
        expect(result.error.message).not.toContain('\n');
        if (text.length > 8) expect(result.error.message).not.toContain(text.slice(0, 8));
      }
    }
  });
});
