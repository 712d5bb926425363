import { formatZodIssues } from '../common/zod-issues.ts';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../common/atomic-file.ts';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * What the TPM backend keeps on disk: sealed/wrapped blobs (useless without this TPM and, for
 * sealed ones, its PCR state), the Names it pinned at provisioning, and what makes this vault
 * its own on a TPM others use too: the `unique` of its storage primary (the parent of all its
 * blobs) and its counter's NV index, public area and sealed authValue. Nothing secret in clear.
 *
 * Version 2. Version 1 shared one storage primary and one fixed NV index with every
 * other vault on the TPM; such a state is refused, not upgraded (see readTpmState).
 */
const b64 = z.base64();
const hex = (bytes: number) => z.string().regex(new RegExp(`^[0-9a-f]{${bytes * 2}}$`));
const blobs = z.object({ private: b64, public: b64 }).strict();
const counter = z
  .object({
    /** Chosen at provisioning (random in the owner range, or the configured one if free). */
    index: z.number().int().min(0x01000000).max(0x01bfffff),
    /** The index's authValue (32 random bytes), sealed under this vault's primary to its PCRs. */
    auth: blobs,
    /**
     * The TPMS_NV_PUBLIC and Name after the first increment (TPMA_NV_WRITTEN set), as they
     * must stay. Absent only between defining the index and recording it (a provisioning
     * that stopped there resumes).
     */
    public: z
      .string()
      .regex(/^([0-9a-f]{2}){14,128}$/)
      .optional(),
    name: hex(34).optional(),
    /**
     * The counter's value right after provisioning (decimal). A new TPM counter starts at the
     * highest value any counter on that TPM has had, not at 0: the store needs this to tell
     * "no store yet" from "the store was deleted" (STORE_MISSING).
     */
    start: z
      .string()
      .regex(/^(0|[1-9][0-9]{0,19})$/)
      .optional(),
  })
  .strict();
export const tpmStateSchema = z
  .object({
    version: z.literal(2),
    kind: z.literal('mte-tpm-vault'),
    /** The random unique.x of this vault's own storage primary (structures.ts, srkTemplate). */
    parentUnique: hex(32),
    /**
     * This vault's storage primary's Name, the parent of all its blobs: a different TPM (or a
     * cleared one) derives a different key from the same template, so a different Name.
     */
    srkName: hex(34),
    akName: hex(34),
    pcrs: z.array(z.number().int().min(0).max(23)).min(1),
    storeKey: blobs.optional(),
    crossSigningSeed: blobs.optional(),
    x509Identity: blobs.optional(),
    counter: counter.optional(),
  })
  .strict();
export type TpmState = z.infer<typeof tpmStateSchema>;
export type StoredBlobs = z.infer<typeof blobs>;
export type CounterState = z.infer<typeof counter>;

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
  const { version, kind } = (json ?? {}) as { version?: unknown; kind?: unknown };
  if (kind === 'mte-tpm-vault' && version === 1) {
    throw new VaultError(
      VaultCode.Config,
      `${statePath(stateDir)} is a version 1 TPM vault state (one storage key and one NV counter shared with every vault on this TPM); it cannot be made safe in place: move it away and run "vault init" to provision afresh`,
    );
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
