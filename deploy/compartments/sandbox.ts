/**
 * How one compartment of the manifest is run with least privilege on Linux: the command line
 * that wraps `node <entry>` in, from outside in,
 *
 *   bwrap     namespaces: its own mount, pid, ipc, uts, cgroup and (unless `homeserver`) net
 *             namespace; a root made of /usr, the code and node read-only, its `read` paths
 *             read-only, its `write` paths and devices bound, nothing else (other compartments'
 *             state is not in its view at all); dies with the launcher
 *   setpriv   then, inside, its own user and group, no supplementary groups, no capabilities
 *             (inheritable and bounding sets cleared), no new privileges
 *   prlimit   open files, processes, no core dumps
 *   node      Node's permission model: fs reads and writes only on the manifest's allow-lists,
 *             no child processes, no workers, native addons only where the manifest says;
 *             --disable-sigusr1 and no NODE_OPTIONS, so no inspector can be opened in it
 *
 * bwrap runs as root and drops to the user through setpriv inside (not bwrap as the user):
 * bind mounts are then made by root, so the code may live in a directory the compartment's
 * user could not traverse, and the process that runs the code is the unprivileged user with
 * an empty capability set. Without root there is no user switch: the launcher refuses unless
 * told --allow-weaker, and says so.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { runnableEntry } from '../../keyvault/common/entries.ts';
import { NODE_HARDENING_FLAGS, compartmentEnv } from '../../keyvault/common/spawn.ts';
import { type Compartment, type Placeholders, expand } from './manifest.ts';

/** One protection and whether this machine gives it. */
export interface Protection {
  name: string;
  ok: boolean;
  /** What is missing, when not ok. */
  missing?: string;
}

export interface Host {
  root: boolean;
  bwrap: boolean;
  setpriv: boolean;
  prlimit: boolean;
  /** uid/gid per compartment user, when the user exists. */
  users: Map<string, { uid: number; gid: number }>;
}

function works(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

export function userIds(name: string): { uid: number; gid: number } | undefined {
  try {
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

/** What this machine offers, probed by running each primitive once. */
export function probeHost(users: readonly string[]): Host {
  const map = new Map<string, { uid: number; gid: number }>();
  for (const u of users) {
    const ids = userIds(u);
    if (ids) map.set(u, ids);
  }
  return {
    root: process.getuid?.() === 0,
    bwrap: works('bwrap', ['--unshare-all', '--ro-bind', '/', '/', '--', 'true']),
    setpriv: works('setpriv', ['--no-new-privs', '--', 'true']),
    prlimit: works('prlimit', ['--nofile=64', '--', 'true']),
    users: map,
  };
}

export interface SandboxContext {
  where: Placeholders;
  host: Host;
  /** The Node binary (the launcher's own). */
  node: string;
  /** The program to run instead of the compartment's entry (the probe), same sandbox. */
  entryOverride?: { entry: string; args: string[] };
  /** false leaves out Node's permission model (the probe's --os-only, to test the OS layers alone). */
  nodePermission?: boolean;
  /** Environment variables to pass (the rest of the launcher's environment is not). */
  env?: Record<string, string>;
}

export interface SandboxCommand {
  command: string;
  argv: string[];
  env: NodeJS.ProcessEnv;
  protections: Protection[];
}

/** The paths of a compartment, expanded and absolute. */
export function compartmentPaths(c: Compartment, where: Placeholders) {
  const abs = (p: string) => resolve(expand(p, where));
  return {
    read: c.read.map(abs),
    write: c.write.map(abs),
    devices: c.devices.map(abs),
    // The bundle when it is up to date, else the source (keyvault/common/entries.ts).
    entry: runnableEntry(c.entry, where.code),
    args: c.args.map((a) => expand(a, where)),
  };
}

export function sandboxCommand(c: Compartment, ctx: SandboxContext): SandboxCommand {
  const { host, where } = ctx;
  const paths = compartmentPaths(c, ctx.where);
  const entry = ctx.entryOverride ? join(where.code, ctx.entryOverride.entry) : paths.entry;
  const args = ctx.entryOverride ? ctx.entryOverride.args : paths.args;
  const ids = host.users.get(c.user);
  const protections: Protection[] = [];
  const code = resolve(where.code);
  const nodePrefix = dirname(dirname(ctx.node));

  // Node's permission model: always available on Node 24.
  const permission = ctx.nodePermission !== false;
  const nodeArgs = [
    // First, and never left out (the probe's --os-only drops the permission model only).
    ...NODE_HARDENING_FLAGS,
    ...(permission
      ? [
          '--permission',
          `--allow-fs-read=${code}`,
          ...[...paths.read, ...paths.write, ...paths.devices].map((p) => `--allow-fs-read=${p}`),
          ...[...paths.write, ...paths.devices].map((p) => `--allow-fs-write=${p}`),
          ...(c.nativeAddons ? ['--allow-addons'] : []),
        ]
      : []),
    `--max-old-space-size=${Math.max(64, Math.floor(c.limits.memoryMiB * 0.75))}`,
    entry,
    ...args,
  ];
  protections.push({
    name: 'node permission model (fs allow-lists, no child processes)',
    ok: true,
  });

  let argv: string[] = [ctx.node, ...nodeArgs];
  if (host.prlimit) {
    argv = [
      'prlimit',
      `--nofile=${c.limits.openFiles}`,
      `--nproc=${c.limits.tasks}`,
      '--core=0',
      '--',
      ...argv,
    ];
    protections.push({ name: 'resource limits (open files, tasks, no core dumps)', ok: true });
  } else {
    protections.push({ name: 'resource limits', ok: false, missing: 'prlimit is not installed' });
  }

  const switchUser = host.root && host.setpriv && ids !== undefined;
  if (switchUser) {
    argv = [
      'setpriv',
      `--reuid=${ids.uid}`,
      `--regid=${ids.gid}`,
      '--clear-groups',
      '--inh-caps=-all',
      '--bounding-set=-all',
      '--no-new-privs',
      '--',
      ...argv,
    ];
    protections.push({ name: `own user ${c.user}, no capabilities, no new privileges`, ok: true });
  } else {
    const why = !host.root
      ? 'the launcher is not root, so it cannot switch users'
      : !host.setpriv
        ? 'setpriv is not installed'
        : `user ${c.user} does not exist (bash deploy/setup.sh creates it as root)`;
    protections.push({ name: `own user ${c.user}`, ok: false, missing: why });
  }

  if (host.bwrap) {
    const ro = (p: string) => (existsSync(p) ? ['--ro-bind', p, p] : []);
    // Name resolution and CAs, for the one compartment with a network.
    const etc =
      c.network === 'homeserver'
        ? [
            '/etc/resolv.conf',
            '/etc/hosts',
            '/etc/nsswitch.conf',
            '/etc/ssl',
            '/etc/ca-certificates',
          ]
        : [];
    // As root: no user namespace, so that setpriv inside can switch to the compartment's real
    // uid (a user namespace would map only root). As a user: bwrap needs one.
    const unshare = host.root
      ? ['--unshare-ipc', '--unshare-pid', '--unshare-uts', '--unshare-cgroup-try']
      : ['--unshare-all', '--share-net'];
    const bw = [
      ...unshare,
      ...(c.network === 'none' ? ['--unshare-net'] : []),
      '--die-with-parent',
      '--new-session',
      '--ro-bind',
      '/usr',
      '/usr',
      '--symlink',
      'usr/lib',
      '/lib',
      '--symlink',
      'usr/lib64',
      '/lib64',
      '--symlink',
      'usr/bin',
      '/bin',
      '--symlink',
      'usr/sbin',
      '/sbin',
      '--proc',
      '/proc',
      '--dev',
      '/dev',
      '--tmpfs',
      '/tmp',
      // bwrap makes missing mount points 0700, which the compartment's user could not
      // traverse: create each parent first, world-traversable (they hold nothing but mounts).
      ...parentDirs([code, nodePrefix, ...etc, ...paths.read, ...paths.write]).flatMap((d) => [
        '--perms',
        '0755',
        '--dir',
        d,
      ]),
      ...etc.flatMap(ro),
      ...ro(code),
      ...(nodePrefix.startsWith(`${code}/`) ? [] : ro(nodePrefix)),
      ...paths.read.flatMap((p) => ['--ro-bind', p, p]),
      ...paths.write.flatMap((p) => ['--bind', p, p]),
      ...paths.devices.flatMap((p) => ['--dev-bind', p, p]),
      '--chdir',
      paths.write[0] ?? '/tmp',
    ];
    argv = ['bwrap', ...bw, '--', ...argv];
    protections.push({
      name:
        c.network === 'none'
          ? 'namespaces: no network, private filesystem view'
          : 'namespaces: private filesystem view (network shared)',
      ok: true,
    });
  } else {
    protections.push({
      name: 'namespaces (no network, private filesystem view)',
      ok: false,
      missing: 'bubblewrap (bwrap) is missing or cannot create namespaces here',
    });
  }
  if (c.network === 'loopback') {
    protections.push({
      name: 'network limited to loopback',
      ok: false,
      missing:
        'the launcher shares the host network with the gateway (for the web UI); the systemd unit restricts it with IPAddressAllow=localhost',
    });
  }
  if (c.network === 'homeserver') {
    // bwrap gives all network or none; homeserver-only filtering needs systemd's
    // IPAddressAllow= (the generated unit) or a firewall rule on the user. Reported, not gated:
    // no launcher on this machine class can do better without nftables.
    protections.push({
      name: 'network limited to the homeserver',
      ok: false,
      missing:
        'the launcher shares the host network with the endpoint; the systemd unit restricts it with IPAddressAllow=',
    });
  }

  const [command, ...rest] = argv;
  const env = compartmentEnv({
    PATH: '/usr/bin:/bin',
    LANG: 'C.UTF-8',
    HOME: paths.write[0] ?? '/tmp',
    ...ctx.env,
  });
  return { command: command ?? ctx.node, argv: rest, env, protections };
}

/** Every ancestor of the paths (not / and not the paths themselves), parents first. */
function parentDirs(paths: readonly string[]): string[] {
  const out = new Set<string>();
  for (const p of paths) {
    const parts = resolve(p).split('/').filter(Boolean);
    for (let i = 1; i < parts.length; i++) out.add(`/${parts.slice(0, i).join('/')}`);
  }
  const skip = new Set(['/usr', '/proc', '/dev']);
  return [...out]
    .filter(
      (d) =>
        !skip.has(d) && !d.startsWith('/usr/') && !d.startsWith('/proc/') && !d.startsWith('/dev/'),
    )
    .sort((a, b) => a.split('/').length - b.split('/').length);
}

/** Protections that matter for the gate: all but the network notes (reported, not gated). */
export function missingProtections(protections: readonly Protection[]): Protection[] {
  return protections.filter(
    (p) =>
      !p.ok &&
      p.name !== 'network limited to the homeserver' &&
      p.name !== 'network limited to loopback',
  );
}
