import {
  type BackedUpSession,
  type BackupDecryptResult,
  type BackupKeyInfo,
  type VaultBackend,
  VaultCode,
  VaultError,
} from '../vault.ts';
import { infoOf, readBackupKeyFile } from './key-file.ts';
import { decryptSession, privateKeyObject, publicKeyOf } from './megolm-v1.ts';

/**
 * The vault's two backup operations on the RPC: the key's public facts, and the fixed-purpose
 * decrypt a restore uses. The private scalar is unsealed for one batch, used, and zeroised; it
 * never leaves this process, and what leaves is only what parses as a room key.
 */

export async function backupKeyInfo(stateDir: string): Promise<BackupKeyInfo | null> {
  const file = await readBackupKeyFile(stateDir);
  return file ? infoOf(file) : null;
}

export async function decryptBackedUp(
  vault: Pick<VaultBackend, 'unsealSecret'>,
  stateDir: string,
  publicKey: string,
  sessions: BackedUpSession[],
): Promise<BackupDecryptResult[]> {
  const file = await readBackupKeyFile(stateDir);
  if (!file) {
    throw new VaultError(VaultCode.BackupKey, 'this vault has no backup key ("vault backup-key")');
  }
  if (file.publicKey !== publicKey) {
    throw new VaultError(
      VaultCode.BackupKey,
      "the backup asked for was not made with this vault's backup key",
    );
  }
  if (!file.sealed) {
    throw new VaultError(
      VaultCode.BackupKey,
      `this vault holds only the public half of its backup key (${file.mode} mode): import the key with "vault backup-key import" to restore here`,
    );
  }
  const scalar = await vault.unsealSecret(file.sealed);
  try {
    if (publicKeyOf(scalar) !== file.publicKey) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        'the sealed backup key does not match the public key recorded beside it: the file was altered',
      );
    }
    const key = privateKeyObject(scalar);
    return sessions.map(({ roomId, sessionId, sessionData }) => {
      const result = decryptSession(key, sessionData);
      return result.ok
        ? { roomId, sessionId, ok: true, session: result.key }
        : { roomId, sessionId, ok: false, code: result.error.code };
    });
  } finally {
    scalar.fill(0);
  }
}
