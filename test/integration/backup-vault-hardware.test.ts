import { cp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { BACKUP_KEY_FILE, createBackupKey, encryptSession } from '../../keyvault/backup/index.ts';
import type { Pkcs11Config, TpmConfig } from '../../keyvault/config.ts';
import { openVault } from '../../keyvault/open.ts';
import { VaultCode, type VaultBackend } from '../../keyvault/vault.ts';
import { makeTempDir, startSoftHsm, startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

/**
 * The backup key sealed by real hardware: a swtpm (a sealed object under the vault's own
 * primary, to its PCRs) and SoftHSM2 (AES-GCM under the token's non-extractable KEK). Each
 * decrypts what was encrypted to its key; the sealed key copied to another TPM, another token
 * or another vault on the same token is refused, not used.
 */
const tpmA = useFixture(() => startSwtpm());
const tpmB = useFixture(() => startSwtpm());
const hsm = useFixture(() => startSoftHsm());

beforeAll(() => {
  // SoftHSM reads its configuration from the environment, once per process.
  process.env.SOFTHSM2_CONF = hsm().env.SOFTHSM2_CONF;
});

const roomKey = {
  algorithm: 'm.megolm.v1.aes-sha2' as const,
  sender_key: 'c2VuZGVyIGN1cnZlMjU1MTkga2V5IGluIGJhc2U2NCAxMjM',
  session_key: `AgAAAAB${'x'.repeat(200)}`,
  sender_claimed_keys: { ed25519: 'ZWQyNTUxOSBrZXkgb2YgdGhlIHNlbmRlciBpbiBiYXNlNjQ' },
  forwarding_curve25519_key_chain: [],
};

async function withVault<T>(
  config: TpmConfig | Pkcs11Config,
  run: (v: VaultBackend) => Promise<T>,
): Promise<T> {
  const vault = await openVault(config);
  try {
    return await run(vault);
  } finally {
    await vault.close();
  }
}

async function tpmConfig(name: string, tpm: ReturnType<typeof tpmA>): Promise<TpmConfig> {
  return {
    backend: 'tpm',
    stateDir: join(await makeTempDir(`backup-hw-${name}`), 'vault'),
    transport: tpm.transport,
    pcrs: [16],
    owner: { userId: '@alice:example.org' },
  };
}

function pkcs11Config(name: string): Pkcs11Config {
  return {
    backend: 'pkcs11',
    stateDir: join(hsm().dir, name),
    module: hsm().modulePath,
    token: `pkcs11:token=${encodeURIComponent(hsm().label)}`,
    pin: { file: hsm().pinFile },
    owner: { userId: '@alice:example.org' },
  };
}

/** Provisions, makes a vault-mode key, and checks the vault decrypts a session for it. */
async function sealedHere(config: TpmConfig | Pkcs11Config): Promise<string> {
  return withVault(config, async (vault) => {
    await vault.provision();
    const { info } = await createBackupKey(vault, config.stateDir, { mode: 'vault' });
    const text = await readFile(join(config.stateDir, BACKUP_KEY_FILE), 'utf8');
    expect(text).toContain(`"backend": "${config.backend}"`);
    const [result] = await vault.backupDecrypt(info.publicKey, [
      { roomId: '!r:x', sessionId: 's', sessionData: encryptSession(info.publicKey, roomKey) },
    ]);
    expect(result).toMatchObject({ ok: true, session: roomKey });
    return info.publicKey;
  });
}

async function refusedThere(
  config: TpmConfig | Pkcs11Config,
  from: string,
  publicKey: string,
): Promise<string> {
  await cp(join(from, BACKUP_KEY_FILE), join(config.stateDir, BACKUP_KEY_FILE));
  return withVault(config, async (vault) => {
    const attempt = vault.backupDecrypt(publicKey, [
      { roomId: '!r:x', sessionId: 's', sessionData: encryptSession(publicKey, roomKey) },
    ]);
    await expect(attempt).rejects.toMatchObject({ code: VaultCode.ForeignOrTampered });
    return attempt.then(
      () => '',
      (e: unknown) => (e as Error).message,
    );
  });
}

describe('the backup key sealed by hardware', () => {
  it('TPM: sealed to the vault primary; the key file copied to another TPM does not unseal', async () => {
    const here = await tpmConfig('a', tpmA());
    const publicKey = await sealedHere(here);
    const there = await tpmConfig('b', tpmB());
    await withVault(there, (v) => v.provision());
    const message = await refusedThere(there, here.stateDir, publicKey);
    expect(message).not.toContain(publicKey);
  }, 120_000);

  it('PKCS#11: under the KEK; the key file copied to another vault on the same token is refused', async () => {
    const here = pkcs11Config('one');
    const publicKey = await sealedHere(here);
    const there = pkcs11Config('two');
    await withVault(there, (v) => v.provision());
    const message = await refusedThere(there, here.stateDir, publicKey);
    expect(message).toMatch(/KEK/);
  }, 120_000);
});
