import { describe, expect, it } from 'vitest';
import { TpmError, decodeRc } from '../../keyvault/tpm/index.ts';
import { Reader, Writer } from '../../keyvault/tpm/marshal.ts';

describe('TPM response codes become sentences', () => {
  it.each([
    [0x99d, /^POLICY_FAIL: a policy check failed \(session 1\) \[0x99d\]$/],
    [0x1c4, /^VALUE: .* \(parameter 1\) \[0x1c4\]$/],
    [0x18b, /^HANDLE: .* \(handle 1\) \[0x18b\]$/],
    [0x902, /^OBJECT_MEMORY: out of memory for object contexts/],
    [0x14a, /^NV_UNINITIALIZED: /],
    [0x100, /^INITIALIZE: /],
    [0x921, /^LOCKOUT: /],
  ])('0x%s', (rc, message) => {
    expect(decodeRc(rc).message).toMatch(message);
  });

  it('masks the parameter/handle/session number out of the base code', () => {
    expect(decodeRc(0x99d).base).toBe(0x09d);
    expect(decodeRc(0x2c4).base).toBe(0x084);
    expect(decodeRc(0x902).warning).toBe(true);
  });

  it('names the command in the error', () => {
    expect(new TpmError('Unseal', 0x99d).message).toBe(
      'TPM2_Unseal: POLICY_FAIL: a policy check failed (session 1) [0x99d]',
    );
  });

  it('never reads past the end of a truncated structure', () => {
    const bytes = new Writer().u16(5).bytes(Buffer.from('abc')).done();
    expect(() => new Reader(bytes).tpm2b()).toThrow(/truncated/);
  });
});
