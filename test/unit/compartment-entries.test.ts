import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bundlePathOf, runnableEntry } from '../../keyvault/common/entries.ts';

// A compartment runs its bundle only while no source it was made from is newer: an edited
// tree must never run an older build of itself.
let root: string;
const ENTRY = 'keyvault/main.ts';
const at = (rel: string) => join(root, rel);
/** Sets a file's modification time, seconds from now. */
const touch = (rel: string, secondsFromNow: number) => {
  const t = Date.now() / 1000 + secondsFromNow;
  utimesSync(at(rel), t, t);
};

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'mte-entries-'));
  mkdirSync(at('keyvault'), { recursive: true });
  mkdirSync(at('dist/compartments'), { recursive: true });
  writeFileSync(at(ENTRY), 'export {};\n');
  writeFileSync(at('keyvault/vault.ts'), 'export {};\n');
  writeFileSync(at(bundlePathOf(ENTRY)), '// bundle\n');
  writeFileSync(
    at(`${bundlePathOf(ENTRY)}.inputs.json`),
    JSON.stringify({ inputs: [ENTRY, 'keyvault/vault.ts'] }),
  );
  touch(ENTRY, -60);
  touch('keyvault/vault.ts', -60);
  touch(bundlePathOf(ENTRY), -30);
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

  it('runs the bundle when every source it was made from is older', () => {
    expect(runnableEntry(ENTRY, root)).toBe(at('dist/compartments/keyvault-main.mjs'));
  });

  it('runs the source once any of its inputs was edited after the build', () => {
    touch('keyvault/vault.ts', 0);
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('runs the source when an input is gone, the list is missing or not what the build writes', () => {
    rmSync(at('keyvault/vault.ts'));
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
    writeFileSync(at('keyvault/vault.ts'), 'export {};\n');
    touch('keyvault/vault.ts', -60);
    expect(runnableEntry(ENTRY, root)).toBe(at('dist/compartments/keyvault-main.mjs'));
    writeFileSync(at(`${bundlePathOf(ENTRY)}.inputs.json`), '{"inputs": []}');
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
    rmSync(at(`${bundlePathOf(ENTRY)}.inputs.json`));
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });

  it('runs the source when there is no bundle, or when MTE_FROM_SOURCE=1 asks for it', () => {
    process.env.MTE_FROM_SOURCE = '1';
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
    delete process.env.MTE_FROM_SOURCE;
    rmSync(at(bundlePathOf(ENTRY)));
    expect(runnableEntry(ENTRY, root)).toBe(at(ENTRY));
  });
});
