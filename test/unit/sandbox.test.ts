import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  type Host,
  LaunchError,
  launch,
  missingProtections,
  outlivesCallers,
  parseManifest,
  restartableAlone,
  sandboxCommand,
  systemdUnits,
  unitName,
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

  it("a gateway serving the web UI ('loopback') shares the network: reported, not gated; its unit allows localhost only", () => {
    const gateway = { ...compartment('gateway'), network: 'loopback' as const };
    const sandboxed = sandboxCommand(gateway, { where, host: full, node: '/usr/bin/node' });
    expect(sandboxed.argv).not.toContain('--unshare-net');
    expect(sandboxed.protections.filter((p) => !p.ok).map((p) => p.name)).toEqual([
      'network limited to loopback',
    ]);
    expect(missingProtections(sandboxed.protections)).toEqual([]);
    const withUi = {
      ...manifest,
      compartments: manifest.compartments.map((c) => (c.name === 'gateway' ? gateway : c)),
    };
    const units = systemdUnits(withUi, {
      ...where,
      node: '/usr/bin/node',
      homeserver: 'https://192.0.2.7',
    });
    const unit = [...units.entries()].find(([name]) => name.includes('gateway'))?.[1] ?? '';
    expect(unit).toContain('IPAddressDeny=any');
    expect(unit).toContain('IPAddressAllow=localhost');
    expect(unit).not.toContain('PrivateNetwork=yes');
    expect(unit).toMatch(/RestrictAddressFamilies=.*AF_INET/);
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

  it('no inspector: each node starts with --disable-sigusr1, no inspect flag, no NODE_OPTIONS', () => {
    for (const c of manifest.compartments) {
      for (const host of [full, { ...full, root: false, bwrap: false, prlimit: false }]) {
        const { argv, env } = sandboxCommand(c, {
          where,
          host,
          node: '/usr/bin/node',
          // What a careless caller might pass on: it must not reach the compartment.
          env: { NODE_OPTIONS: '--inspect=0.0.0.0:9229', TZ: 'UTC' },
        });
        const node = argv.indexOf('/usr/bin/node');
        const flags = (node >= 0 ? argv.slice(node + 1) : argv).slice(0, 2);
        expect(flags[0], c.name).toBe('--disable-sigusr1');
        expect(
          argv.filter((a) => /^--(inspect|debug)/.test(a)),
          c.name,
        ).toEqual([]);
        expect(env.NODE_OPTIONS, c.name).toBeUndefined();
        expect(env.TZ).toBe('UTC');
      }
      // Even the probe's --os-only run (no permission model) keeps it.
      const probe = sandboxCommand(c, {
        where,
        host: full,
        node: '/usr/bin/node',
        nodePermission: false,
        entryOverride: { entry: 'deploy/compartments/probe.ts', args: ['whoami'] },
      }).argv;
      expect(probe[probe.indexOf('/usr/bin/node') + 1], c.name).toBe('--disable-sigusr1');
    }
  });

  it('the systemd units run each compartment with --disable-sigusr1 and unset NODE_OPTIONS', () => {
    const units = systemdUnits(manifest, { ...where, node: '/usr/bin/node' });
    for (const c of manifest.compartments) {
      const unit = units.get(unitName(c.name)) ?? '';
      expect(unit, c.name).toMatch(/^ExecStart=\/usr\/bin\/node --disable-sigusr1 --permission /m);
      expect(unit, c.name).toMatch(/^UnsetEnvironment=NODE_OPTIONS$/m);
      const settings = unit.split('\n').filter((l) => !l.startsWith('#'));
      expect(
        settings.filter((l) => /--(inspect|debug)/.test(l)),
        c.name,
      ).toEqual([]);
    }
    // The stack unit's launcher too: it is root and holds every compartment's channel.
    const stack = units.get('mte-stack.service') ?? '';
    expect(stack).toMatch(
      /^ExecStart=\/usr\/bin\/node --disable-sigusr1 \S*deploy\/launch\.ts serve/m,
    );
  });

  it('the gateway is restarted alone: the endpoint listens for it, in its own directory', () => {
    expect([...restartableAlone(manifest)]).toEqual(['gateway']);
    expect([...outlivesCallers(manifest)]).toEqual(['endpoint']);
    const channel = manifest.channels.find((ch) => ch.name === 'endpoint-rpc');
    const path = channel?.kind === 'socketpair' ? channel.reconnect : undefined;
    expect(path).toBe('{state}/endpoint/gateway.sock');
    // The endpoint's command line names the same socket, inside its one write directory.
    const args = compartment('endpoint').args;
    expect(args[args.indexOf('--gateway-socket') + 1]).toBe(path);
    expect(compartment('endpoint').write).toEqual(['{state}/endpoint']);
    // The gateway's sandbox does not even see it.
    const a = cmd('gateway').argv;
    expect(a.filter((x) => x.includes('/var/lib/mte/endpoint'))).toEqual([]);
  });

  it("a reconnect socket outside the listening end's own directory is refused", () => {
    const bad = structuredClone(JSON.parse(JSON.stringify(manifest))) as {
      channels: { name: string; reconnect?: string }[];
    };
    const ch = bad.channels.find((x) => x.name === 'endpoint-rpc');
    if (ch) ch.reconnect = '{run}/gateway/endpoint.sock';
    expect(() => parseManifest(bad)).toThrow(/must lie inside a write path of "endpoint"/);
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
