import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { formatZodIssues } from '../common/zod-issues.ts';
import {
  BACKUP_KEY_MODES,
  type BackupKeyInfo,
  type SealedSecret,
  VaultCode,
  VaultError,
} from '../vault.ts';

/**
 * The key backup's key as this vault keeps it, in its state directory: the mode, the public key,
 * and (vault mode, or a key imported to restore) the private scalar sealed by the backend. Nothing
 * in it is secret without the TPM or token. The sealed scalar's public half is checked against
 * the recorded public key on every unseal, so a blob swapped in from elsewhere (another sealed
 * secret of this vault, say) is refused rather than used.
 */
export const BACKUP_KEY_FILE = 'backup-key.json';

const b64 = z.base64().max(4096);
const sealedSecret = z.discriminatedUnion('backend', [
  z.object({ backend: z.literal('tpm'), private: b64, public: b64 }).strict(),
  z.object({ backend: z.literal('pkcs11'), iv: b64, ciphertext: b64 }).strict(),
  z.object({ backend: z.literal('dev'), clear: b64 }).strict(),
]) satisfies z.ZodType<SealedSecret>;

export const backupPublicKey = z
  .string()
  .regex(/^[A-Za-z0-9+/]{43}$/, 'expected an unpadded base64 Curve25519 public key');

const backupKeyFileSchema = z
  .object({
    version: z.literal(1),
    kind: z.literal('mte-backup-key'),
    mode: z.enum(BACKUP_KEY_MODES),
    publicKey: backupPublicKey,
    createdAt: z.iso.datetime(),
    origin: z.enum(['created', 'imported']),
    sealed: sealedSecret.optional(),
  })
  .strict();
export type BackupKeyFile = z.infer<typeof backupKeyFileSchema>;

export function backupKeyPath(stateDir: string): string {
  return join(stateDir, BACKUP_KEY_FILE);
}

export async function readBackupKeyFile(stateDir: string): Promise<BackupKeyFile | undefined> {
  const path = backupKeyPath(stateDir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new VaultError(VaultCode.Config, `cannot read ${path}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new VaultError(VaultCode.ForeignOrTampered, `${path} is not valid JSON`);
  }
  const parsed = backupKeyFileSchema.safeParse(json);
  if (!parsed.success) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `${path} is not a backup key file (${formatZodIssues(parsed.error)})`,
    );
  }
  return parsed.data;
}

export async function writeBackupKeyFile(stateDir: string, file: BackupKeyFile): Promise<void> {
  await writeFileAtomic(backupKeyPath(stateDir), `${JSON.stringify(file, null, 2)}\n`, {
    replace: true,
  });
}

export function infoOf(file: BackupKeyFile): BackupKeyInfo {
  return {
    mode: file.mode,
    publicKey: file.publicKey,
    createdAt: file.createdAt,
    canDecrypt: file.sealed !== undefined,
  };
}
