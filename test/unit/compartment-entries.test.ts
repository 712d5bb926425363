import { spawnSync } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildCompartments } from '../../deploy/build-compartments.ts';
import {
  INPUTS_FILE,
  REPO_ROOT,
  bundlePathOf,
  runnableEntry,
  sha256Of,
} from '../../keyvault/common/entries.ts';

// A compartment runs its bundle only while every source it was built from has the content it
// had: an edited, copied or re-linked tree must never run an older build of itself.
let root: string;
const ENTRY = 'keyvault/main.ts';
const at = (rel: string) => join(root, rel);
const BUNDLE = () => at(bundlePathOf(ENTRY));
/** Sets a file's modification time, seconds from now. */
const touch = (rel: string, secondsFromNow: number) => {
  const t = Date.now() / 1000 + secondsFromNow;
  utimesSync(at(rel), t, t);
};
/** Writes the build's record for the sources as they are now. */
const record = (inputs: string[]) => {
  writeFileSync(
    at(INPUTS_FILE),
    JSON.stringify({
      entries: [ENTRY],
      inputs: inputs.map((path) => ({ path, sha256: sha256Of(at(path)) })),
    }),
  );
};

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'mte-entries-'));
  mkdirSync(at('keyvault'), { recursive: true });
  mkdirSync(at('dist/compartments'), { recursive: true });
  writeFileSync(at(ENTRY), 'import "./vault.ts";\n');
  writeFileSync(at('keyvault/vault.ts'), 'export const version = 1;\n');
  writeFileSync(BUNDLE(), 'const version = 1;\n');
  record([ENTRY, 'keyvault/vault.ts']);
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
  delete process.env.MTE_FROM_SOURCE;
});

describe('which file a compartment runs', () => {
  it('names bundles after their entry, in dist/compartments', () => {
    expect(bundlePathOf('endpoint/untrusted/gateway/main.ts')).toBe(
      'dist/compartments/endpoint-untrusted-gateway-main.mjs',
    );
  });

  it('runs the bundle while every source it was made from is unchanged', () => {
    expect(runnableEntry(ENTRY, root)).toBe(BUNDLE());
  });

  it('runs the source once an input was edited', () => {
    writeFileSync(at('keyvault/vault.ts'), 'export const version = 2;\n');
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('runs the source when content changed but the time is older (rsync -a, tar x, cp -p)', () => {
    touch(bundlePathOf(ENTRY), -1800);
    writeFileSync(at('keyvault/vault.ts'), 'export const version = 2; // the fix\n');
    touch('keyvault/vault.ts', -3600);
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('a bundle stamped in the future (a clock that ran ahead) does not hide an edit', () => {
    touch(bundlePathOf(ENTRY), 3600);
    writeFileSync(at('keyvault/vault.ts'), 'export const version = 2;\n');
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('an input that is a symlink pointed at other content runs the source', () => {
    writeFileSync(at('keyvault/vault-a.ts'), 'export const version = 1;\n');
    writeFileSync(at('keyvault/vault-b.ts'), 'export const version = 2;\n');
    unlinkSync(at('keyvault/vault.ts'));
    symlinkSync('vault-a.ts', at('keyvault/vault.ts'));
    record([ENTRY, 'keyvault/vault.ts']);
    expect(runnableEntry(ENTRY, root)).toBe(BUNDLE());
    unlinkSync(at('keyvault/vault.ts'));
    symlinkSync('vault-b.ts', at('keyvault/vault.ts'));
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('runs the source when an input is gone, or the record is missing or malformed', () => {
    rmSync(at('keyvault/vault.ts'));
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
    writeFileSync(at('keyvault/vault.ts'), 'export const version = 1;\n');
    expect(runnableEntry(ENTRY, root)).toBe(BUNDLE());
    writeFileSync(at(INPUTS_FILE), '{"entries": ["keyvault/main.ts"], "inputs": []}');
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
    rmSync(at(INPUTS_FILE));
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('runs the source for an entry the build did not bundle, or with no bundle file', () => {
    expect(runnableEntry('endpoint/main.ts', root)).toBe(at('endpoint/main.ts'));
    rmSync(BUNDLE());
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('runs the source when MTE_FROM_SOURCE=1 asks for it', () => {
    process.env.MTE_FROM_SOURCE = '1';
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });
});

describe('what the real build makes', () => {
  const ENTRIES = ['keyvault/main.ts', 'endpoint/main.ts', 'endpoint/untrusted/gateway/main.ts'];
  let out: string;
  beforeAll(async () => {
    // Beside the repository's node_modules, as dist/compartments is, so packages resolve alike.
    out = mkdtempSync(join(REPO_ROOT, 'dist', '.test-build-'));
    await buildCompartments(ENTRIES, { outDir: join(out, 'compartments') });
  }, 60_000);
  afterAll(() => {
    rmSync(out, { recursive: true, force: true });
  });

  it('bundles only repository sources, and records each with its hash', () => {
    const raw = JSON.parse(readFileSync(join(out, 'compartments', 'inputs.json'), 'utf8')) as {
      inputs: { path: string; sha256: string }[];
    };
    expect(raw.inputs.length).toBeGreaterThan(100);
    expect(
      raw.inputs.filter((i) => i.path.includes('node_modules') || i.path.startsWith('..')),
    ).toEqual([]);
    for (const i of raw.inputs) expect(sha256Of(join(REPO_ROOT, i.path))).toBe(i.sha256);
  });

  it('uses import.meta only for the repository root, two levels up from the bundles too', () => {
    for (const file of readdirSync(join(out, 'compartments')).filter((f) => f.endsWith('.mjs'))) {
      const code = readFileSync(join(out, 'compartments', file), 'utf8');
      for (const line of code.split('\n').filter((l) => l.includes('import.meta'))) {
        expect(line).toMatch(/^var REPO_ROOT = join\(import\.meta\.dirname, "\.\.", "\.\."\);$/);
      }
    }
  });

  it('the vault bundle, like its source, loads no native addon until PKCS#11 is chosen', () => {
    // Node's permission model without --allow-addons refuses the PKCS#11 addon: the vault's
    // --help (which opens no backend) runs from the bundle as it does from the source.
    const run = (file: string) =>
      spawnSync(
        process.execPath,
        ['--permission', `--allow-fs-read=${REPO_ROOT}`, file, '--help'],
        {
          encoding: 'utf8',
          timeout: 30_000,
        },
      );
    expect(run(join(REPO_ROOT, ENTRY)).stdout).toMatch(/^Usage: /);
    const bundle = run(join(out, 'compartments', 'keyvault-main.mjs'));
    expect(bundle.stderr).not.toMatch(/addons/);
    expect(bundle.stdout).toMatch(/^Usage: /);
  }, 60_000);
});
