export { type RecoveryKeyError, decodeRecoveryKey, encodeRecoveryKey } from './recovery-key.ts';
export {
  BACKUP_ALGORITHM,
  type BackupRefusal,
  type BackupVerdict,
  type BackupVersionInfo,
  type OurBackup,
  backupVersionInfo,
  checkBackupVersion,
  signedAuthData,
} from './version-check.ts';
