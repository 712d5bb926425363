export {
  type BackedUpRoomKey,
  type BackupDecryptError,
  type EncryptedSessionData,
  backedUpRoomKey,
  decryptSession,
  encryptSession,
  encryptedSessionData,
  generateBackupKey,
  publicKeyOf,
} from './megolm-v1.ts';
export { type RecoveryKeyError, decodeRecoveryKey, encodeRecoveryKey } from './recovery-key.ts';
export { backupKeyInfo, decryptBackedUp } from './decrypt.ts';
export { type CreateOptions, type Created, createBackupKey, importBackupKey } from './keys.ts';
export { checkEscrowCertificate, encryptForEscrow } from './escrow.ts';
export { BACKUP_KEY_FILE, backupPublicKey } from './key-file.ts';
