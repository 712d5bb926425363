import type { OlmMachine } from '@matrix-org/matrix-sdk-crypto-wasm';
import { stringify } from 'another-json';
import { z } from 'zod';

export const BACKUP_ALGORITHM = 'm.megolm_backup.v1.curve25519-aes-sha2';

/** `GET /room_keys/version` as the homeserver answers it (only what is checked here). */
export const backupVersionInfo = z
  .object({
    algorithm: z.string().max(255),
    auth_data: z
      .object({
        public_key: z.string().max(64),
        signatures: z.record(z.string(), z.record(z.string(), z.string().max(128))).optional(),
      })
      .loose(),
    version: z.string().min(1).max(255),
    count: z.number().int().nonnegative().optional(),
    etag: z.string().max(255).optional(),
  })
  .loose();
export type BackupVersionInfo = z.infer<typeof backupVersionInfo>;

/** The backup we made: its version and public key, as we keep them (never the server's word). */
export interface OurBackup {
  version: string;
  publicKey: string;
}

export type BackupRefusal =
  | 'BACKUP_MALFORMED'
  | 'BACKUP_WRONG_ALGORITHM'
  | 'BACKUP_VERSION_CHANGED'
  | 'BACKUP_NOT_OUR_KEY'
  | 'BACKUP_NOT_SIGNED_BY_US';

export type BackupVerdict = { ok: true } | { ok: false; code: BackupRefusal; message: string };

/**
 * Whether room keys may be uploaded to the backup the homeserver now names as current. Only
 * to the one we made: same version, same public key, and `auth_data` signed by this device or
 * by our cross-signing identity (the crypto core's `verifyBackup`). A homeserver that swaps in
 * a version or a key of its own (to read every room key uploaded after) gets a refusal here;
 * the caller uploads nothing, and tells the UI and the audit log.
 */
export async function checkBackupVersion(
  machine: OlmMachine,
  ours: OurBackup,
  serverAnswer: unknown,
): Promise<BackupVerdict> {
  const parsed = backupVersionInfo.safeParse(serverAnswer);
  if (!parsed.success)
    return refuse('BACKUP_MALFORMED', 'the homeserver answered with no backup version we can read');
  const info = parsed.data;
  if (info.algorithm !== BACKUP_ALGORITHM) {
    return refuse(
      'BACKUP_WRONG_ALGORITHM',
      `the current backup uses ${info.algorithm.slice(0, 64)}, not ${BACKUP_ALGORITHM}`,
    );
  }
  if (info.version !== ours.version) {
    return refuse(
      'BACKUP_VERSION_CHANGED',
      `the current backup is version ${info.version.slice(0, 64)}, not ours (${ours.version})`,
    );
  }
  if (info.auth_data.public_key !== ours.publicKey) {
    return refuse(
      'BACKUP_NOT_OUR_KEY',
      'the current backup version carries a public key that is not ours',
    );
  }
  const verification = await machine.verifyBackup({
    algorithm: info.algorithm,
    auth_data: info.auth_data,
  });
  try {
    if (!verification.trusted()) {
      return refuse(
        'BACKUP_NOT_SIGNED_BY_US',
        'the current backup is not signed by this device or our identity',
      );
    }
  } finally {
    verification.free();
  }
  return { ok: true };
}

/**
 * The `auth_data` for a new backup version: the public key, signed by this device (canonical
 * JSON without `signatures`, as the spec's signing algorithm and verifyBackup expect).
 */
export async function signedAuthData(
  machine: OlmMachine,
  publicKey: string,
): Promise<{ public_key: string; signatures: Record<string, Record<string, string>> }> {
  const unsigned = { public_key: publicKey };
  const signatures = await machine.sign(stringify(unsigned));
  try {
    const json = z
      .record(z.string(), z.record(z.string(), z.string()))
      .parse(JSON.parse(signatures.asJSON()));
    return { ...unsigned, signatures: json };
  } finally {
    signatures.free();
  }
}

function refuse(code: BackupRefusal, message: string): BackupVerdict {
  return { ok: false, code, message };
}
