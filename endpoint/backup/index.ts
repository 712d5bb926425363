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
export {
  type BackupDependencies,
  type BackupEvent,
  type BackupState,
  type BackupStatus,
  type RecoverResult,
  BackupService,
} from './service.ts';
