/**
 * Bundles each compartment's program (deploy/compartments.json's entries) into
 * dist/compartments/: plain JavaScript, one file per entry plus the chunks they share, and
 * inputs.json with the SHA-256 of every source file read; keyvault/common/entries.ts runs a
 * bundle only while each still hashes the same. Why: Node then loads no TypeScript stripper
 * and a few modules instead of hundreds, about 30 MiB less per process.
 *
 * Dependencies stay in node_modules (not bundled): the same locked files, and the crypto
 * engine's wasm and the PKCS#11 addon load as they do from source. Code split at dynamic
 * imports, so what the source loads only when chosen (a vault backend, and with it the
 * PKCS#11 addon) is still loaded only when chosen. Nothing is minified: stack traces read as
 * the source.
 *
 *   node deploy/build-compartments.ts [--out DIR] [--json]
 *
 * Prints one line (or the JSON); exits 1 on failure with one line saying why.
 */
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import {
  BUNDLE_DIR,
  type BundleInputs,
  REPO_ROOT,
  bundleNameOf,
  sha256Of,
} from '../keyvault/common/entries.ts';
import { loadManifest } from './compartments/manifest.ts';

export interface Built {
  entries: string[];
  inputs: number;
  bytes: number;
}

/**
 * Builds every entry into `outDir` (dist/compartments by default), replacing what was there.
 * The sources are read from `root`.
 */
export async function buildCompartments(
  entries: readonly string[],
  options: { root?: string; outDir?: string } = {},
): Promise<Built> {
  const root = options.root ?? REPO_ROOT;
  const outDir = options.outDir ?? join(root, BUNDLE_DIR);
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  const started = Date.now();
  const result = await build({
    entryPoints: entries.map((entry) => ({ in: join(root, entry), out: bundleNameOf(entry) })),
    absWorkingDir: root,
    outdir: outDir,
    outExtension: { '.js': '.mjs' },
    // Beside the entries, not in a folder of their own: REPO_ROOT is two levels up from each.
    chunkNames: 'chunk-[hash]',
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node24',
    packages: 'external',
    metafile: true,
    legalComments: 'none',
    logLevel: 'silent',
  });
  const paths = Object.keys(result.metafile.inputs).map((i) => relative(root, resolve(root, i)));
  // A source saved while esbuild ran may be in the bundle as it was, yet hash as it is now.
  const changed = paths.filter((p) => statSync(join(root, p)).mtimeMs >= started);
  if (changed.length > 0) {
    throw new Error(`${changed[0] ?? ''} changed during the build; run it again`);
  }
  const record: BundleInputs = {
    entries: [...entries],
    inputs: paths.map((path) => ({ path, sha256: sha256Of(join(root, path)) })),
  };
  writeFileSync(join(outDir, 'inputs.json'), `${JSON.stringify(record, null, 1)}\n`);
  const bytes = Object.values(result.metafile.outputs).reduce((a, o) => a + o.bytes, 0);
  return { entries: [...entries], inputs: paths.length, bytes };
}

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: { json: { type: 'boolean' }, out: { type: 'string' } },
  });
  const manifest = await loadManifest(join(REPO_ROOT, 'deploy/compartments.json'));
  const entries = [...new Set(manifest.compartments.map((c) => c.entry))];
  const built = await buildCompartments(
    entries,
    args.out === undefined ? {} : { outDir: resolve(args.out) },
  );
  if (args.json) {
    process.stdout.write(`${JSON.stringify(built, null, 2)}\n`);
    return;
  }
  process.stdout.write(
    `build-compartments: ${built.entries.join(', ')} in ${args.out ?? BUNDLE_DIR}/ (${(built.bytes / 1024).toFixed(0)} KiB from ${built.inputs} source files)\n`,
  );
}

if (process.argv[1] === import.meta.filename) {
  main().catch((e: unknown) => {
    process.stderr.write(
      `build-compartments: ${e instanceof Error ? (e.message.split('\n')[0] ?? '') : String(e)}\n`,
    );
    process.exit(1);
  });
}
