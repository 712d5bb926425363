import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  type Host,
  LaunchError,
  launch,
  missingProtections,
  parseManifest,
  sandboxCommand,
} from '../../deploy/compartments/index.ts';

const SHIPPED = join(import.meta.dirname, '..', '..', 'deploy', 'compartments.json');
const manifest = parseManifest(JSON.parse(await readFile(SHIPPED, 'utf8')));
const where = { code: '/opt/mte', config: '/etc/mte', state: '/var/lib/mte', run: '/run/mte' };
const users = new Map([
  ['mte-vault', { uid: 901, gid: 901 }],
  ['mte-endpoint', { uid: 902, gid: 902 }],
  ['mte-gateway', { uid: 903, gid: 903 }],
]);
const full: Host = { root: true, bwrap: true, setpriv: true, prlimit: true, users };
const compartment = (name: string) => {
  const c = manifest.compartments.find((x) => x.name === name);
  if (!c) throw new Error(name);
  return c;
};
const cmd = (name: string, host: Host = full) =>
  sandboxCommand(compartment(name), { where, host, node: '/usr/bin/node' });

describe('the sandbox of each compartment (the command lines the launcher runs)', () => {
  it('with root, bwrap, setpriv and prlimit nothing is missing but the endpoint-to-homeserver filter', () => {
    for (const c of manifest.compartments) {
      expect(missingProtections(cmd(c.name).protections), c.name).toEqual([]);
    }
    expect(
      cmd('endpoint')
        .protections.filter((p) => !p.ok)
        .map((p) => p.name),
    ).toEqual(['network limited to the homeserver']);
  });

  it('the vault and the gateway get a network namespace of their own; the endpoint does not', () => {
    expect(cmd('vault').argv).toContain('--unshare-net');
    expect(cmd('gateway').argv).toContain('--unshare-net');
    expect(cmd('endpoint').argv).not.toContain('--unshare-net');
  });

  it('each switches to its own uid with no groups, capabilities or new privileges, inside bwrap', () => {
    for (const [name, uid] of [
      ['vault', 901],
      ['endpoint', 902],
      ['gateway', 903],
    ] as const) {
      const { command, argv } = cmd(name);
      expect(command).toBe('bwrap');
      const setpriv = argv.indexOf('setpriv');
      expect(setpriv).toBeGreaterThan(argv.indexOf('--'));
      expect(argv.slice(setpriv, setpriv + 8)).toEqual([
        'setpriv',
        `--reuid=${uid}`,
        `--regid=${uid}`,
        '--clear-groups',
        '--inh-caps=-all',
        '--bounding-set=-all',
        '--no-new-privs',
        '--',
      ]);
    }
  });

  it("each sees only its own files: the gateway's binds name none of the vault's or the endpoint's", () => {
    const binds = (name: string) => {
      const a = cmd(name).argv;
      return a.flatMap((x, i) =>
        x === '--bind' || x === '--ro-bind' || x === '--dev-bind' ? [a[i + 1] ?? ''] : [],
      );
    };
    expect(binds('gateway').filter((p) => /vault|endpoint/.test(p))).toEqual([]);
    expect(binds('endpoint').filter((p) => /vault|gateway/.test(p))).toEqual([]);
    expect(binds('vault').filter((p) => /endpoint|gateway/.test(p))).toEqual([]);
    expect(binds('vault')).toContain('/dev/tpmrm0');
  });

  it("Node's permission model gets the same allow-lists; native addons for the vault only", () => {
    const node = (name: string) => {
      const a = cmd(name).argv;
      return a.slice(a.indexOf('/usr/bin/node'));
    };
    expect(node('gateway')).toContain('--permission');
    expect(node('gateway')).toContain('--allow-fs-write=/run/mte/gateway');
    expect(node('gateway').filter((x) => x.startsWith('--allow-fs-write='))).toEqual([
      '--allow-fs-write=/run/mte/gateway',
    ]);
    expect(node('vault')).toContain('--allow-addons');
    expect(node('endpoint')).not.toContain('--allow-addons');
    expect(node('gateway')).not.toContain('--allow-child-process');
  });

  it('not root, no bwrap: each missing protection is named', () => {
    const weak: Host = { root: false, bwrap: false, setpriv: true, prlimit: true, users };
    const missing = missingProtections(cmd('gateway', weak).protections);
    expect(missing.map((p) => p.missing)).toEqual([
      'the launcher is not root, so it cannot switch users',
      'bubblewrap (bwrap) is missing or cannot create namespaces here',
    ]);
  });

  it('the launcher refuses to start with weaker isolation unless allowed, and says what is missing', async () => {
    const weak: Host = {
      root: false,
      bwrap: false,
      setpriv: true,
      prlimit: true,
      users: new Map(),
    };
    await expect(launch({ manifest, where, host: weak })).rejects.toThrow(LaunchError);
    await expect(launch({ manifest, where, host: weak })).rejects.toThrow(
      /refusing to start with weaker isolation \(--allow-weaker to accept\): vault: own user mte-vault .*; vault: namespaces/,
    );
  });
});
