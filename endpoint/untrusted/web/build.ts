/**
 * Builds the web UI: `node endpoint/untrusted/web/build.ts [--out DIR]` bundles src/main.ts to
 * app.js (ESM, minified, no source map, no comments) and copies index.html and app.css beside
 * it. Default DIR: endpoint/untrusted/web/dist. Prints one line; exits 1 on failure.
 */
import { copyFileSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';

const here = import.meta.dirname;

function outDir(argv: readonly string[]): string {
  let out = `${here}/dist`;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (arg === '--out') {
      const value = argv[i + 1];
      if (value === undefined || value === '') throw new Error('--out needs a directory');
      out = value;
      i++;
    } else if (arg.startsWith('--out=')) {
      out = arg.slice('--out='.length);
      if (out === '') throw new Error('--out needs a directory');
    } else {
      throw new Error(`unknown argument ${JSON.stringify(arg)} (usage: build.ts [--out DIR])`);
    }
  }
  return out;
}

async function main(): Promise<void> {
  const out = outDir(process.argv.slice(2));
  const result = await build({
    entryPoints: [`${here}/src/main.ts`],
    tsconfig: `${here}/tsconfig.json`,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    minify: true,
    sourcemap: false,
    legalComments: 'none',
    charset: 'ascii',
    write: false,
    logLevel: 'silent',
  });
  const app = result.outputFiles[0];
  if (result.outputFiles.length !== 1 || !app) throw new Error('expected one output file');
  mkdirSync(out, { recursive: true });
  writeFileSync(`${out}/app.js`, app.contents);
  copyFileSync(`${here}/static/index.html`, `${out}/index.html`);
  copyFileSync(`${here}/static/app.css`, `${out}/app.css`);
  const files = ['index.html', 'app.js', 'app.css'];
  const bytes = files.reduce((sum, f) => sum + statSync(`${out}/${f}`).size, 0);
  process.stdout.write(
    `web: built ${out} (${files.length} files, ${Math.ceil(bytes / 1024)} KiB)\n`,
  );
}

main().catch((e: unknown) => {
  const errors = (
    e as { errors?: { text?: string; location?: { file?: string; line?: number } | null }[] }
  ).errors;
  const first = errors?.[0];
  const message = first?.text
    ? `${first.text}${first.location?.file ? ` (${first.location.file}:${first.location.line ?? 0})` : ''}`
    : e instanceof Error
      ? e.message
      : String(e);
  process.stderr.write(`web: build failed: ${message.replace(/\s+/g, ' ')}\n`);
  process.exit(1);
});
