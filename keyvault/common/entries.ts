/**
 * Which file a compartment's process runs: its bundle (dist/compartments/, built by
 * deploy/build-compartments.ts during set-up) when that is what its sources would build now,
 * else its TypeScript source. A bundle is plain JavaScript, so Node loads no TypeScript
 * stripper and keeps a few modules instead of a few hundred: about 30 MiB less per process
 * (measured: the vault 105 -> 74 MiB).
 *
 * "What its sources would build now" is checked by content: the build records the SHA-256 of
 * every source file it read, and a bundle runs only while each still hashes the same. Times
 * are not enough: `rsync -a`, `tar x` or `cp -p` bring other sources with older times, a
 * clock that ran ahead at build time makes a bundle look newer than later edits, and a
 * symlink's own time says nothing of its target.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

/**
 * The repository: two levels up from here, and from any file of a bundle in dist/compartments/
 * (bundled, this module's import.meta is that file's), which is why bundles live exactly there.
 */
export const REPO_ROOT = join(import.meta.dirname, '..', '..');

export const BUNDLE_DIR = 'dist/compartments';
export const INPUTS_FILE = `${BUNDLE_DIR}/inputs.json`;

/** keyvault/main.ts -> keyvault-main: the bundle's name, without its .mjs. */
export function bundleNameOf(entry: string): string {
  return entry.replace(/\.ts$/, '').replaceAll('/', '-');
}

/** keyvault/main.ts -> dist/compartments/keyvault-main.mjs (relative to the repository). */
export function bundlePathOf(entry: string): string {
  return `${BUNDLE_DIR}/${bundleNameOf(entry)}.mjs`;
}

/** What the build records: the entries it bundled, and each source file it read, hashed. */
export const bundleInputsSchema = z
  .object({
    entries: z.array(z.string().min(1)).min(1),
    inputs: z
      .array(
        z.object({ path: z.string().min(1), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).strict(),
      )
      .min(1),
  })
  .strict();
export type BundleInputs = z.infer<typeof bundleInputsSchema>;

export function sha256Of(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/**
 * Whether the bundle for `entry` exists and every source the build read still has the content
 * it had. One record covers all bundles (they share chunks), so any edit turns all stale.
 */
export function bundleIsFresh(entry: string, root: string = REPO_ROOT): boolean {
  try {
    const raw: unknown = JSON.parse(readFileSync(join(root, INPUTS_FILE), 'utf8'));
    const record = bundleInputsSchema.parse(raw);
    if (!record.entries.includes(entry)) return false;
    if (!statSync(join(root, bundlePathOf(entry))).isFile()) return false;
    return record.inputs.every((input) => sha256Of(join(root, input.path)) === input.sha256);
  } catch {
    // Missing, unreadable, not what the build writes, or naming a file that is gone.
    return false;
  }
}

/**
 * The absolute path to run for a compartment whose source is `entry` (relative to `root`).
 * MTE_FROM_SOURCE=1 runs the source even when the bundle is fresh (for a debugger's view).
 */
export function runnableEntry(entry: string, root: string = REPO_ROOT): string {
  if (process.env.MTE_FROM_SOURCE !== '1' && bundleIsFresh(entry, root)) {
    return join(root, bundlePathOf(entry));
  }
  return join(root, entry);
}
