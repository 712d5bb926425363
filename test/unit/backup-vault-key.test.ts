import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createBackupKey,
  decodeRecoveryKey,
  encryptSession,
  generateBackupKey,
  importBackupKey,
  publicKeyOf,
  BACKUP_KEY_FILE,
} from '../../keyvault/backup/index.ts';
import { vaultClient } from '../../keyvault/client.ts';
import { RpcCode, inProcessPair } from '../../keyvault/common/rpc/index.ts';
import { MAX_BACKUP_BATCH } from '../../keyvault/contract.ts';
import { openVault } from '../../keyvault/open.ts';
import { serveVault } from '../../keyvault/server.ts';
import { VaultCode, type VaultBackend } from '../../keyvault/vault.ts';
import { makeTempDir } from '../fixtures/process.ts';
import { openssl } from '../fixtures/x509.ts';

/**
 * The vault's side of key backup on the dev backend (the TPM and PKCS#11 sealing is in
 * test/integration/backup-vault-hardware.test.ts): the three modes, the fixed-purpose decrypt,
 * its refusals, the RPC's bounds, and escrow opened by openssl, which shares no code with ours.
 */
let root: string;
let n = 0;
beforeAll(async () => {
  root = await makeTempDir('backup-vault-key');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function freshVault(): Promise<{ vault: VaultBackend; stateDir: string }> {
  const stateDir = join(root, `state-${n++}`);
  const vault = await openVault({ backend: 'dev', stateDir, allowInsecureDevBackend: true });
  await vault.provision();
  return { vault, stateDir };
}

const roomKey = (i: number) => ({
  algorithm: 'm.megolm.v1.aes-sha2' as const,
  sender_key: 'c2VuZGVyIGN1cnZlMjU1MTkga2V5IGluIGJhc2U2NCAxMjM',
  session_key: `AgAAAAB${'x'.repeat(40)}${i}`,
  sender_claimed_keys: { ed25519: 'ZWQyNTUxOSBrZXkgb2YgdGhlIHNlbmRlciBpbiBiYXNlNjQ' },
  forwarding_curve25519_key_chain: [],
});

const session = (publicKey: string, i: number) => ({
  roomId: '!room:example.org',
  sessionId: `session-${i}`,
  sessionData: encryptSession(publicKey, roomKey(i)),
});

describe('backup key in the vault', () => {
  it('vault mode: the vault decrypts backed-up sessions, and answers only room keys', async () => {
    const { vault, stateDir } = await freshVault();
    expect(await vault.backupKey()).toBeNull();
    const created = await createBackupKey(vault, stateDir, { mode: 'vault' });
    expect(created.recoveryKey).toBeUndefined();
    expect(created.escrow).toBeUndefined();
    const info = await vault.backupKey();
    expect(info).toMatchObject({
      mode: 'vault',
      canDecrypt: true,
      publicKey: created.info.publicKey,
    });
    const results = await vault.backupDecrypt(created.info.publicKey, [
      session(created.info.publicKey, 1),
      session(created.info.publicKey, 2),
      // A session encrypted to another key: refused by its MAC, the others still answered.
      session(generateBackupKey().publicKey, 3),
    ]);
    expect(results.map((r) => r.ok)).toEqual([true, true, false]);
    expect(results[0]).toMatchObject({ sessionId: 'session-1', session: roomKey(1) });
    expect(results[2]).toMatchObject({ ok: false, code: 'BACKUP_MAC_MISMATCH' });
    // The key file holds no scalar in clear other than the dev backend's own "sealing".
    const file = JSON.parse(await readFile(join(stateDir, BACKUP_KEY_FILE), 'utf8')) as object;
    expect(Object.keys(file).sort()).toEqual(
      ['createdAt', 'kind', 'mode', 'origin', 'publicKey', 'sealed', 'version'].sort(),
    );
    await vault.close();
  });

  it('refuses a decrypt for another public key, and a second key without --replace', async () => {
    const { vault, stateDir } = await freshVault();
    const created = await createBackupKey(vault, stateDir, { mode: 'vault' });
    const other = generateBackupKey().publicKey;
    await expect(vault.backupDecrypt(other, [session(other, 1)])).rejects.toMatchObject({
      code: VaultCode.BackupKey,
    });
    await expect(createBackupKey(vault, stateDir, { mode: 'vault' })).rejects.toMatchObject({
      code: VaultCode.BackupKey,
      message: expect.stringContaining('--replace') as string,
    });
    const replaced = await createBackupKey(vault, stateDir, { mode: 'vault', replace: true });
    expect(replaced.info.publicKey).not.toBe(created.info.publicKey);
    await vault.close();
  });

  it('a sealed key swapped for another is refused as tampering, not used', async () => {
    const { vault, stateDir } = await freshVault();
    const created = await createBackupKey(vault, stateDir, { mode: 'vault' });
    const path = join(stateDir, BACKUP_KEY_FILE);
    const file = JSON.parse(await readFile(path, 'utf8')) as { sealed: { clear: string } };
    file.sealed.clear = Buffer.from(generateBackupKey().privateKey).toString('base64');
    await writeFile(path, JSON.stringify(file), { mode: 0o600 });
    await expect(
      vault.backupDecrypt(created.info.publicKey, [session(created.info.publicKey, 1)]),
    ).rejects.toMatchObject({ code: VaultCode.ForeignOrTampered });
    await vault.close();
  });

  it('recovery-key mode: the key is given once, the vault keeps only the public half', async () => {
    const { vault, stateDir } = await freshVault();
    const created = await createBackupKey(vault, stateDir, { mode: 'recovery-key' });
    const decoded = decodeRecoveryKey(created.recoveryKey ?? '');
    expect(decoded.ok).toBe(true);
    if (!decoded.ok) return;
    expect(publicKeyOf(decoded.key)).toBe(created.info.publicKey);
    expect(await vault.backupKey()).toMatchObject({ mode: 'recovery-key', canDecrypt: false });
    const text = await readFile(join(stateDir, BACKUP_KEY_FILE), 'utf8');
    expect(text).not.toContain('sealed');
    await expect(
      vault.backupDecrypt(created.info.publicKey, [session(created.info.publicKey, 1)]),
    ).rejects.toMatchObject({
      code: VaultCode.BackupKey,
      message: expect.stringContaining('only the public half') as string,
    });

    // On a new machine: the recovery key, imported, lets that vault decrypt.
    const fresh = await freshVault();
    const imported = await importBackupKey(fresh.vault, fresh.stateDir, decoded.key, {
      mode: 'recovery-key',
    });
    expect(imported).toMatchObject({ publicKey: created.info.publicKey, canDecrypt: true });
    const [result] = await fresh.vault.backupDecrypt(created.info.publicKey, [
      session(created.info.publicKey, 7),
    ]);
    expect(result).toMatchObject({ ok: true, session: roomKey(7) });
    await vault.close();
    await fresh.vault.close();
  });

  it('escrow mode: only the certificate key opens it (openssl cms), and it holds the recovery key', async () => {
    const dir = join(root, `escrow-${n++}`);
    const base = join(root, `institution-${n++}`);
    const made = await openssl([
      'req', '-x509', '-newkey', 'rsa:3072', '-nodes', '-keyout', `${base}.key`, '-out',
      `${base}.pem`, '-subj', '/CN=Institution recovery', '-days', '30',
      '-addext', 'keyUsage=critical,keyEncipherment',
    ]); // prettier-ignore
    expect(made.code, made.stderr).toBe(0);
    const pem = await readFile(`${base}.pem`, 'utf8');
    const { vault, stateDir } = await freshVault();
    const created = await createBackupKey(vault, stateDir, {
      mode: 'escrow',
      escrowCertificatePem: pem,
    });
    expect(created.recoveryKey).toBeUndefined();
    expect(await vault.backupKey()).toMatchObject({ mode: 'escrow', canDecrypt: false });
    const cms = `${dir}.p7m`;
    await writeFile(cms, created.escrow ?? new Uint8Array());
    const opened = await openssl([
      'cms', '-decrypt', '-inform', 'DER', '-in', cms, '-recip', `${base}.pem`, '-inkey', `${base}.key`,
    ]); // prettier-ignore
    expect(opened.code, opened.stderr).toBe(0);
    const decoded = decodeRecoveryKey(opened.stdout);
    expect(decoded.ok && publicKeyOf(decoded.key)).toBe(created.info.publicKey);

    // Another key of the institution's (a wrong HSM) does not open it.
    const wrong = join(root, `wrong-${n++}`);
    await openssl([
      'genpkey',
      '-algorithm',
      'RSA',
      '-pkeyopt',
      'rsa_keygen_bits:3072',
      '-out',
      `${wrong}.key`,
    ]);
    const refused = await openssl([
      'cms', '-decrypt', '-inform', 'DER', '-in', cms, '-recip', `${base}.pem`, '-inkey', `${wrong}.key`,
    ]); // prettier-ignore
    expect(refused.code).not.toBe(0);
    // (openssl answers a wrong RSA key with random bytes, against padding oracles.)
    expect(decodeRecoveryKey(refused.stdout).ok).toBe(false);
    await vault.close();
  });

  it('escrow refuses a certificate that cannot receive keys', async () => {
    const { vault, stateDir } = await freshVault();
    const ec = join(root, `ec-${n++}`);
    await openssl([
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', `${ec}.key`, '-out', `${ec}.pem`, '-subj', '/CN=EC', '-days', '30',
    ]); // prettier-ignore
    const signOnly = join(root, `sign-${n++}`);
    await openssl([
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${signOnly}.key`, '-out',
      `${signOnly}.pem`, '-subj', '/CN=Sign only', '-days', '30',
      '-addext', 'keyUsage=critical,digitalSignature',
    ]); // prettier-ignore
    for (const [file, why] of [
      [`${ec}.pem`, 'RSA'],
      [`${signOnly}.pem`, 'keyEncipherment'],
    ] as const) {
      await expect(
        createBackupKey(vault, stateDir, {
          mode: 'escrow',
          escrowCertificatePem: await readFile(file, 'utf8'),
        }),
      ).rejects.toMatchObject({
        code: VaultCode.Config,
        message: expect.stringContaining(why) as string,
      });
    }
    // Nothing was made by a refused create.
    expect(await vault.backupKey()).toBeNull();
    await vault.close();
  });

  it('over the RPC: decrypts in batches, refuses an oversized batch and a malformed session', async () => {
    const { vault, stateDir } = await freshVault();
    const { info } = await createBackupKey(vault, stateDir, { mode: 'vault' });
    const [clientEnd, serverEnd] = inProcessPair();
    serveVault(serverEnd, vault);
    const remote = await vaultClient(clientEnd);
    expect(await remote.backupKey()).toEqual(info);
    const batch = Array.from({ length: MAX_BACKUP_BATCH }, (_, i) => session(info.publicKey, i));
    const results = await remote.backupDecrypt(info.publicKey, batch);
    expect(results.filter((r) => r.ok)).toHaveLength(MAX_BACKUP_BATCH);
    await expect(
      remote.backupDecrypt(info.publicKey, [...batch, session(info.publicKey, 999)]),
    ).rejects.toMatchObject({ code: RpcCode.InvalidParams });
    await expect(
      remote.backupDecrypt(info.publicKey, [
        {
          roomId: '!r:x',
          sessionId: 's',
          sessionData: { ephemeral: 'x', ciphertext: 'y', mac: 'z', extra: 1 } as never,
        },
      ]),
    ).rejects.toMatchObject({ code: RpcCode.InvalidParams });
    await remote.close();
    await vault.close();
  });
});
