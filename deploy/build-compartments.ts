/**
 * Bundles each compartment's program (deploy/compartments.json's entries) into
 * dist/compartments/, one plain-JavaScript file each, with the list of source files it was
 * made from beside it; keyvault/common/entries.ts runs a bundle only while none of those is
 * newer. Why: Node then loads no TypeScript stripper and one module instead of hundreds,
 * about 30 MiB less per process. Dependencies stay in node_modules (not bundled): the same
 * locked, reviewed files, and the crypto engine's wasm and the PKCS#11 addon load as usual.
 * Names are kept and nothing is minified, so stack traces read as the source.
 *
 *   node deploy/build-compartments.ts [--json]
 *
 * Prints one line (or the JSON); exits 1 on failure, with esbuild's message.
 */
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { BUNDLE_DIR, REPO_ROOT, bundlePathOf } from '../keyvault/common/entries.ts';
import { loadManifest } from './compartments/manifest.ts';

const { values: args } = parseArgs({ options: { json: { type: 'boolean' } } });

async function main(): Promise<void> {
  const manifest = await loadManifest(join(REPO_ROOT, 'deploy/compartments.json'));
  const entries = [...new Set(manifest.compartments.map((c) => c.entry))];
  const out = join(REPO_ROOT, BUNDLE_DIR);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const built: { entry: string; bundle: string; bytes: number; inputs: number }[] = [];
  for (const entry of entries) {
    const bundle = join(REPO_ROOT, bundlePathOf(entry));
    const result = await build({
      entryPoints: [join(REPO_ROOT, entry)],
      absWorkingDir: REPO_ROOT,
      outfile: bundle,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node24',
      packages: 'external',
      metafile: true,
      legalComments: 'none',
      logLevel: 'silent',
    });
    // Inputs are relative to the repository (absWorkingDir); written after the bundle, so a
    // source saved during the build is newer than the bundle and turns it stale.
    const inputs = Object.keys(result.metafile.inputs).map((i) =>
      relative(REPO_ROOT, join(REPO_ROOT, i)),
    );
    writeFileSync(`${bundle}.inputs.json`, `${JSON.stringify({ inputs }, null, 1)}\n`);
    built.push({
      entry,
      bundle: bundlePathOf(entry),
      bytes: statSync(bundle).size,
      inputs: inputs.length,
    });
  }
  if (args.json) {
    process.stdout.write(`${JSON.stringify({ bundles: built }, null, 2)}\n`);
    return;
  }
  const kib = built.reduce((a, b) => a + b.bytes, 0) / 1024;
  process.stdout.write(
    `build-compartments: ${built.length} bundles in ${BUNDLE_DIR}/ (${kib.toFixed(0)} KiB, ${built.map((b) => `${b.entry}: ${b.inputs} files`).join(', ')})\n`,
  );
}

main().catch((e: unknown) => {
  process.stderr.write(
    `build-compartments: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}\n`,
  );
  process.exit(1);
});
