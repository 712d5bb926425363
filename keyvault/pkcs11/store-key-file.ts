import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * The store key, encrypted under the token's KEK (AES-256-GCM inside the token), as a small
 * JSON file in config.stateDir. Nothing in it is secret without the token. The token's serial
 * is both recorded (for a clear error next to the wrong token) and bound as GCM additional
 * data (so editing the recorded serial only breaks the tag).
 */
export const STORE_KEY_FILE = 'pkcs11-store-key.json';

const base64 = (bytes: number) =>
  z
    .string()
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'base64')
    .refine((s) => Buffer.from(s, 'base64').length === bytes, `${bytes} bytes`);

const storeKeyFileSchema = z
  .object({
    version: z.literal(1),
    kind: z.literal('mte-pkcs11-store-key'),
    tokenSerial: z.string().min(1).max(16),
    kekLabel: z.literal('mte-store-kek'),
    iv: base64(12),
    /** ciphertext || 16-byte GCM tag */
    ciphertext: base64(32 + 16),
  })
  .strict();

export interface StoreKeyFile {
  tokenSerial: string;
  iv: Uint8Array;
  ciphertext: Uint8Array;
}

export function storeKeyAad(tokenSerial: string): Buffer {
  return Buffer.from(`mte-pkcs11-store-key/v1\0${tokenSerial}`, 'utf8');
}

export async function readStoreKeyFile(stateDir: string): Promise<StoreKeyFile | undefined> {
  const path = join(stateDir, STORE_KEY_FILE);
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
  const parsed = storeKeyFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? `${issue.path.join('.') || 'file'}: ${issue.message}` : 'invalid';
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `${path} is not a valid store-key file (${where})`,
    );
  }
  return {
    tokenSerial: parsed.data.tokenSerial,
    iv: Buffer.from(parsed.data.iv, 'base64'),
    ciphertext: Buffer.from(parsed.data.ciphertext, 'base64'),
  };
}

/**
 * Writes the file atomically and never over an existing one: write a temp file, fsync it,
 * hard-link it into place (fails if the name exists, unlike rename), fsync the directory.
 * Returns false when a store-key file was already there.
 */
export async function writeStoreKeyFile(stateDir: string, file: StoreKeyFile): Promise<boolean> {
  const path = join(stateDir, STORE_KEY_FILE);
  const body = JSON.stringify(
    {
      version: 1,
      kind: 'mte-pkcs11-store-key',
      tokenSerial: file.tokenSerial,
      kekLabel: 'mte-store-kek',
      iv: Buffer.from(file.iv).toString('base64'),
      ciphertext: Buffer.from(file.ciphertext).toString('base64'),
    },
    null,
    2,
  );
  try {
    return await writeFileAtomic(path, `${body}\n`, { replace: false });
  } catch {
    throw new VaultError(VaultCode.Config, `cannot write ${path}`);
  }
}
