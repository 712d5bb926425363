import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BACKUP_ALGORITHM,
  checkBackupVersion,
  signedAuthData,
} from '../../endpoint/backup/index.ts';
import { generateBackupKey } from '../../keyvault/backup/index.ts';

// Which backup version we upload to, with the crypto core's own signature check: a homeserver
// that swaps the version, the key or the signature gets nothing.
let machine: wasm.OlmMachine;
let other: wasm.OlmMachine;
const ourKey = generateBackupKey().publicKey;
const serverKey = generateBackupKey().publicKey;

beforeAll(async () => {
  await wasm.initAsync();
  machine = await wasm.OlmMachine.initialize(
    new wasm.UserId('@alice:example.org'),
    new wasm.DeviceId('OURS'),
  );
  // Another device of the same user, which we never verified (the homeserver could make one).
  other = await wasm.OlmMachine.initialize(
    new wasm.UserId('@alice:example.org'),
    new wasm.DeviceId('INJECTED'),
  );
});
afterAll(() => {
  machine.close();
  other.close();
});

const info = (version: string, auth_data: object, algorithm = BACKUP_ALGORITHM) => ({
  algorithm,
  auth_data,
  version,
  count: 0,
  etag: '0',
});

describe('the backup version we upload to', () => {
  it('is ours when the version, the key and our device signature match', async () => {
    const auth = await signedAuthData(machine, ourKey);
    expect(Object.keys(auth.signatures['@alice:example.org'] ?? {})).toEqual(['ed25519:OURS']);
    await expect(
      checkBackupVersion(machine, { version: '7', publicKey: ourKey }, info('7', auth)),
    ).resolves.toEqual({ ok: true });
  });

  it('a new version the homeserver puts in place, even with our key and signature, is refused', async () => {
    const auth = await signedAuthData(machine, ourKey);
    const verdict = await checkBackupVersion(
      machine,
      { version: '7', publicKey: ourKey },
      info('8', auth),
    );
    expect(verdict).toMatchObject({ ok: false, code: 'BACKUP_VERSION_CHANGED' });
  });

  it("the same version with the homeserver's key is refused", async () => {
    const verdict = await checkBackupVersion(
      machine,
      { version: '7', publicKey: ourKey },
      info('7', { public_key: serverKey, signatures: {} }),
    );
    expect(verdict).toMatchObject({ ok: false, code: 'BACKUP_NOT_OUR_KEY' });
  });

  it('our key without our signature, or with a forged one, is refused', async () => {
    const ours = { version: '7', publicKey: ourKey };
    const unsigned = await checkBackupVersion(machine, ours, info('7', { public_key: ourKey }));
    expect(unsigned).toMatchObject({ ok: false, code: 'BACKUP_NOT_SIGNED_BY_US' });
    const auth = await signedAuthData(machine, ourKey);
    const real = auth.signatures['@alice:example.org']?.['ed25519:OURS'] ?? '';
    const forged = `${real.startsWith('A') ? 'B' : 'A'}${real.slice(1)}`;
    const verdict = await checkBackupVersion(
      machine,
      ours,
      info('7', {
        public_key: ourKey,
        signatures: { '@alice:example.org': { 'ed25519:OURS': forged } },
      }),
    );
    expect(verdict).toMatchObject({ ok: false, code: 'BACKUP_NOT_SIGNED_BY_US' });
  });

  it('a signature by a device of ours that we never verified is refused', async () => {
    const auth = await signedAuthData(other, ourKey);
    expect(Object.keys(auth.signatures['@alice:example.org'] ?? {})).toEqual(['ed25519:INJECTED']);
    const verdict = await checkBackupVersion(
      machine,
      { version: '7', publicKey: ourKey },
      info('7', auth),
    );
    expect(verdict).toMatchObject({ ok: false, code: 'BACKUP_NOT_SIGNED_BY_US' });
  });

  it('another algorithm, or an answer that is not a backup version, is refused with a reason', async () => {
    const auth = await signedAuthData(machine, ourKey);
    const ours = { version: '7', publicKey: ourKey };
    await expect(
      checkBackupVersion(machine, ours, info('7', auth, 'org.example.backdoor')),
    ).resolves.toMatchObject({ ok: false, code: 'BACKUP_WRONG_ALGORITHM' });
    for (const answer of [
      null,
      'x',
      {},
      { ...info('7', auth), version: 7 },
      { ...info('7', auth), auth_data: { public_key: 'A'.repeat(10_000) } },
    ]) {
      const verdict = await checkBackupVersion(machine, ours, answer);
      expect(verdict).toMatchObject({ ok: false, code: 'BACKUP_MALFORMED' });
    }
  });
});
