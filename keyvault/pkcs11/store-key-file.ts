import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * The store key, encrypted under the vault's KEK (AES-256-GCM inside the token), as a small
 * JSON file in config.stateDir. Nothing in it is secret without the token. The token's serial
 * and the vault's id are both recorded (for a clear error next to the wrong token or in the
 * wrong vault's state dir) and bound as GCM additional data, taken from the token and from the
 * vault's identity file, not from this file: editing what it records only breaks the tag.
 *
 * Version 1 (before vault ids) is recognised only to be refused with a clear message.
 */
export const STORE_KEY_FILE = 'pkcs11-store-key.json';

const base64 = (bytes: number) =>
  z
    .string()
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'base64')
    .refine((s) => Buffer.from(s, 'base64').length === bytes, `${bytes} bytes`);

const storeKeyFileSchema = z
  .object({
    version: z.literal(2),
    kind: z.literal('mte-pkcs11-store-key'),
    tokenSerial: z.string().min(1).max(16),
    vaultId: z.string().regex(/^[0-9a-f]{32}$/, '32 lower-case hex digits'),
    kekLabel: z.literal('mte-store-kek'),
    iv: base64(12),
    /** ciphertext || 16-byte GCM tag */
    ciphertext: base64(32 + 16),
  })
  .strict();

export interface StoreKeyFile {
  tokenSerial: string;
  /** The vault id it records (hex); the AAD uses the vault's own, from its identity file. */
  vaultId: string;
  iv: Uint8Array;
  ciphertext: Uint8Array;
}

/** The GCM additional data: format, the token's serial and the vault's id (hex). */
export function storeKeyAad(tokenSerial: string, vaultIdHex: string): Buffer {
  return Buffer.from(`mte-pkcs11-store-key/v2\0${tokenSerial}\0${vaultIdHex}`, 'utf8');
}

/** Whether a store-key file is there (valid or not): the vault got past provisioning it. */
export async function storeKeyFileExists(stateDir: string): Promise<boolean> {
  try {
    await access(join(stateDir, STORE_KEY_FILE));
    return true;
  } catch {
    return false;
  }
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
  if ((json as { version?: unknown } | null)?.version === 1) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `${path} is a version 1 store-key file, written before vaults had their own id; it cannot be bound to a vault, so this version does not open it (keyvault/pkcs11/README.md)`,
    );
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
    vaultId: parsed.data.vaultId,
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
      version: 2,
      kind: 'mte-pkcs11-store-key',
      tokenSerial: file.tokenSerial,
      vaultId: file.vaultId,
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
