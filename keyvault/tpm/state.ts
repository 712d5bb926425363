import { formatZodIssues } from '../common/zod-issues.ts';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * What the TPM backend keeps on disk: sealed/wrapped blobs (useless without this TPM and, for
 * sealed ones, its PCR state) and the Names it pinned at provisioning. Nothing secret in clear.
 */
const b64 = z.base64();
const blobs = z.object({ private: b64, public: b64 }).strict();
export const tpmStateSchema = z
  .object({
    version: z.literal(1),
    kind: z.literal('mte-tpm-vault'),
    /** The storage primary's Name: a different TPM (or a cleared one) has a different one. */
    srkName: z.string().regex(/^[0-9a-f]{68}$/),
    akName: z.string().regex(/^[0-9a-f]{68}$/),
    pcrs: z.array(z.number().int().min(0).max(23)).min(1),
    storeKey: blobs.optional(),
    crossSigningSeed: blobs.optional(),
    x509Identity: blobs.optional(),
    counterIndex: z.number().int().optional(),
  })
  .strict();
export type TpmState = z.infer<typeof tpmStateSchema>;
export type StoredBlobs = z.infer<typeof blobs>;

export function statePath(stateDir: string): string {
  return join(stateDir, 'tpm-vault.json');
}

export async function readTpmState(stateDir: string): Promise<TpmState | undefined> {
  let text: string;
  try {
    text = await readFile(statePath(stateDir), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new VaultError(VaultCode.Config, `cannot read ${statePath(stateDir)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new VaultError(VaultCode.ForeignOrTampered, `${statePath(stateDir)} is not valid JSON`);
  }
  const parsed = tpmStateSchema.safeParse(json);
  if (!parsed.success) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `${statePath(stateDir)} is not a TPM vault state file (${formatZodIssues(parsed.error)})`,
    );
  }
  return parsed.data;
}

export async function writeTpmState(stateDir: string, state: TpmState): Promise<void> {
  await writeFileAtomic(statePath(stateDir), `${JSON.stringify(state, null, 2)}\n`, {
    replace: true,
  });
}

export function toBlobs(b: StoredBlobs): { private: Buffer; public: Buffer } {
  return { private: Buffer.from(b.private, 'base64'), public: Buffer.from(b.public, 'base64') };
}

export function fromBlobs(b: { private: Uint8Array; public: Uint8Array }): StoredBlobs {
  return {
    private: Buffer.from(b.private).toString('base64'),
    public: Buffer.from(b.public).toString('base64'),
  };
}
