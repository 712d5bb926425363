import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * Which vault this state directory is: a random 16-byte id chosen by `vault init` (from the
 * token's RNG) and the serial of the token it lives on, as a small JSON file in
 * config.stateDir. Several vaults can share one token; every object a vault creates carries its
 * id (keys in CKA_ID, the counter in its label and its authenticated value), and every wrapped
 * secret in the state directory binds it as additional data. Nothing here is secret.
 *
 * Written once, never replaced: a new id would orphan every object made under the old one.
 */
export const VAULT_ID_FILE = 'pkcs11-vault.json';

export const VAULT_ID_BYTES = 16;

const fileSchema = z
  .object({
    version: z.literal(1),
    kind: z.literal('mte-pkcs11-vault'),
    vaultId: z.string().regex(/^[0-9a-f]{32}$/, '32 lower-case hex digits'),
    tokenSerial: z.string().min(1).max(16),
  })
  .strict();

/** A vault's identity, as the objects and files it owns are tagged with it. */
export interface VaultScope {
  /** The 16 bytes. */
  readonly id: Buffer;
  /** The same, as 32 lower-case hex digits (labels, files, messages). */
  readonly hex: string;
}

export interface VaultIdentity extends VaultScope {
  readonly tokenSerial: string;
}

export function scopeOf(id: Uint8Array): VaultScope {
  if (id.length !== VAULT_ID_BYTES) throw new TypeError('a vault id is 16 bytes');
  const bytes = Buffer.from(id);
  return { id: bytes, hex: bytes.toString('hex') };
}

export async function readVaultIdentity(stateDir: string): Promise<VaultIdentity | undefined> {
  const path = join(stateDir, VAULT_ID_FILE);
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
  const parsed = fileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? `${issue.path.join('.') || 'file'}: ${issue.message}` : 'invalid';
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `${path} is not a valid vault identity file (${where})`,
    );
  }
  return {
    ...scopeOf(Buffer.from(parsed.data.vaultId, 'hex')),
    tokenSerial: parsed.data.tokenSerial,
  };
}

/**
 * Writes the identity atomically and never over an existing one (hard link, like the store-key
 * file). Returns false when an identity file was already there.
 */
export async function writeVaultIdentity(
  stateDir: string,
  identity: VaultIdentity,
): Promise<boolean> {
  const path = join(stateDir, VAULT_ID_FILE);
  const body = JSON.stringify(
    {
      version: 1,
      kind: 'mte-pkcs11-vault',
      vaultId: identity.hex,
      tokenSerial: identity.tokenSerial,
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

/** The identity must have been made on this token (same URI, other token: refused). */
export function checkIdentityToken(
  identity: VaultIdentity,
  stateDir: string,
  serial: string,
): void {
  if (identity.tokenSerial !== serial) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the vault in ${stateDir} was made on the token with serial ${identity.tokenSerial}, but this token's serial is ${serial}: it belongs to another token`,
    );
  }
}

/** No identity yet: the vault was never provisioned (or only its identity is missing). */
export function noIdentity(stateDir: string): VaultError {
  return new VaultError(
    VaultCode.NotProvisioned,
    `this vault has no identity yet (no ${VAULT_ID_FILE} in ${stateDir}); run "vault init"`,
  );
}
