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
