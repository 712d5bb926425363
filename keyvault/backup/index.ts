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
