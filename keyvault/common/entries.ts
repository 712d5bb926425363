/**
 * Which file a compartment's process runs: its bundle (dist/compartments/, built by
 * deploy/build-compartments.ts during set-up) when that is up to date, else its TypeScript
 * source. A bundle is plain JavaScript, so Node loads no TypeScript stripper and keeps one
 * module instead of a few hundred: about 30 MiB less per process (measured: the vault 105 ->
 * 74 MiB). Up to date means no source file it was built from is newer than it, so an edited
 * tree runs what was edited, never an older build of it.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

/**
 * The repository: two levels up from here, and from a bundle in dist/compartments/ (bundled,
 * this module's import.meta is the bundle's), which is why bundles live exactly there.
 */
export const REPO_ROOT = join(import.meta.dirname, '..', '..');

export const BUNDLE_DIR = 'dist/compartments';

/** keyvault/main.ts -> dist/compartments/keyvault-main.mjs (relative to the repository). */
export function bundlePathOf(entry: string): string {
  return `${BUNDLE_DIR}/${entry.replace(/\.ts$/, '').replaceAll('/', '-')}.mjs`;
}

/** What the build records beside each bundle: the source files it was made from. */
export const bundleInputsSchema = z.object({ inputs: z.array(z.string().min(1)).min(1) }).strict();

/** Whether the bundle for `entry` exists and no input is newer than it. */
export function bundleIsFresh(entry: string, root: string = REPO_ROOT): boolean {
  const bundle = join(root, bundlePathOf(entry));
  try {
    const built = statSync(bundle).mtimeMs;
    const raw: unknown = JSON.parse(readFileSync(`${bundle}.inputs.json`, 'utf8'));
    const { inputs } = bundleInputsSchema.parse(raw);
    return inputs.every((input) => statSync(join(root, input)).mtimeMs <= built);
  } catch {
    // Missing, unreadable or naming a file that is gone: the source runs instead.
    return false;
  }
}

/**
 * The absolute path to run for a compartment whose source is `entry` (relative to `root`).
 * MTE_FROM_SOURCE=1 runs the source even when a fresh bundle exists (for a debugger's view).
 */
export function runnableEntry(entry: string, root: string = REPO_ROOT): string {
  if (process.env.MTE_FROM_SOURCE !== '1' && bundleIsFresh(entry, root)) {
    return join(root, bundlePathOf(entry));
  }
  return join(root, entry);
}
