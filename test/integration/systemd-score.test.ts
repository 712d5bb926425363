import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import {
  STACK_UNIT,
  parseManifest,
  systemdUnits,
  unitName,
} from '../../deploy/compartments/index.ts';
import { repoRoot } from '../fixtures/process.ts';

const run = promisify(execFile);

// The generated units scored by systemd itself, offline (no running systemd needed): the
// issue's goal is 2.0 or lower ("SAFE"/"OK" in systemd's words) for every compartment.
async function score(unitFile: string): Promise<number> {
  let out: string;
  try {
    ({ stdout: out } = await run('systemd-analyze', ['security', '--offline=true', unitFile]));
  } catch (e) {
    // It exits non-zero above its own threshold, still printing the score.
    out = (e as { stdout?: string }).stdout ?? '';
  }
  const m = /Overall exposure level for \S+: ([0-9.]+)/.exec(out);
  if (!m?.[1]) throw new Error(`no score for ${unitFile}:\n${out.slice(-500)}`);
  return Number(m[1]);
}

describe('systemd units made from the manifest', async () => {
  const manifest = parseManifest(
    JSON.parse(await readFile(join(repoRoot, 'deploy', 'compartments.json'), 'utf8')),
  );
  const dir = await mkdtemp(join(tmpdir(), 'mte-units-'));
  const units = systemdUnits(manifest, {
    code: '/opt/mte',
    config: '/etc/mte',
    state: '/var/lib/mte',
    run: '/run/mte',
    node: '/usr/bin/node',
    homeserver: 'http://127.0.0.1:8008',
  });
  for (const [name, text] of units) await writeFile(join(dir, name), text);
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('every compartment unit scores 2.0 or lower in systemd-analyze security; the table is printed', async () => {
    const rows: [string, number][] = [];
    for (const name of units.keys()) rows.push([name, await score(join(dir, name))]);
    console.log(
      `systemd-analyze security --offline=true\n${rows.map(([n, s]) => `  ${n.padEnd(24)} ${s.toFixed(1)}`).join('\n')}`,
    );
    for (const c of manifest.compartments) {
      const row = rows.find(([n]) => n === unitName(c.name));
      expect(row, c.name).toBeDefined();
      expect(row?.[1], c.name).toBeLessThanOrEqual(2.0);
    }
    // The launcher's unit must be root (it switches users and makes namespaces): reported, higher.
    expect(rows.some(([n]) => n === STACK_UNIT)).toBe(true);
  });

  it('systemd-analyze verify accepts every unit (offline: no user or running systemd needed)', async () => {
    // verify loads each file and its dependencies from disk and checks that ExecStart's binary
    // exists, so these units point at this checkout and this Node. It warns (exit 0) on unknown
    // or malformed lines: any stderr fails the test.
    const here = await mkdtemp(join(tmpdir(), 'mte-units-verify-'));
    const local = systemdUnits(manifest, {
      code: repoRoot,
      config: '/etc/mte',
      state: '/var/lib/mte',
      run: '/run/mte',
      node: process.execPath,
      homeserver: 'http://127.0.0.1:8008',
    });
    try {
      for (const [name, text] of local) await writeFile(join(here, name), text);
      for (const name of local.keys()) {
        const { stderr } = await run('systemd-analyze', ['verify', join(here, name)]);
        expect(stderr, name).toBe('');
      }
    } finally {
      await rm(here, { recursive: true, force: true });
    }
  });

  it("the stack unit runs the launcher with options the launcher's CLI has", async () => {
    const stack = units.get(STACK_UNIT) ?? '';
    expect(stack).toMatch(
      /^ExecStart=\/usr\/bin\/node --disable-sigusr1 \/opt\/mte\/deploy\/launch\.ts serve \\$/m,
    );
    const { stdout: help } = await run(process.execPath, [
      join(repoRoot, 'deploy', 'launch.ts'),
      'serve',
      '--help',
    ]);
    const options = [...stack.matchAll(/^ {4}(--[a-z-]+) /gm)].map((m) => m[1] ?? '');
    expect(options.length).toBeGreaterThan(0);
    for (const o of options) expect(help, o).toContain(o);
  });

  it('a homeserver named by DNS gets no IPAddressAllow=, only the note that it needs addresses', () => {
    const endpoint =
      systemdUnits(manifest, {
        code: '/opt/mte',
        config: '/etc/mte',
        state: '/var/lib/mte',
        run: '/run/mte',
        node: '/usr/bin/node',
        homeserver: 'https://matrix.example.org',
      }).get(unitName('endpoint')) ?? '';
    expect(endpoint).toMatch(/^IPAddressDeny=any$/m);
    expect(endpoint).not.toMatch(/^IPAddressAllow=/m);
    expect(endpoint).toMatch(/is a DNS name, and IPAddressAllow= needs addresses/);
  });

  it('the vault and the gateway have no network; the endpoint may reach only the homeserver', () => {
    const vault = units.get(unitName('vault')) ?? '';
    const gateway = units.get(unitName('gateway')) ?? '';
    const endpoint = units.get(unitName('endpoint')) ?? '';
    for (const u of [vault, gateway]) {
      expect(u).toMatch(/^PrivateNetwork=yes$/m);
      expect(u).toMatch(/^IPAddressDeny=any$/m);
      expect(u).toMatch(/^RestrictAddressFamilies=AF_UNIX$/m);
    }
    expect(endpoint).toMatch(/^IPAddressDeny=any$/m);
    expect(endpoint).toMatch(/^IPAddressAllow=127\.0\.0\.1$/m);
    expect(endpoint).not.toMatch(/^PrivateNetwork=yes$/m);
  });

  it('only the vault may open the TPM, and only its own user runs each unit', () => {
    for (const c of manifest.compartments) {
      const u = units.get(unitName(c.name)) ?? '';
      expect(u).toMatch(new RegExp(`^User=${c.user}$`, 'm'));
      // No device but the vault's TPM: a device cgroup that is closed, or no /dev at all.
      expect(/^DevicePolicy=closed$/m.test(u) || /^PrivateDevices=yes$/m.test(u), c.name).toBe(
        true,
      );
      expect(/^DeviceAllow=\/dev\/tpmrm0/m.test(u), c.name).toBe(c.name === 'vault');
      expect(u).toMatch(/^NoNewPrivileges=yes$/m);
      expect(u).toMatch(/^CapabilityBoundingSet=$/m);
    }
  });
});
