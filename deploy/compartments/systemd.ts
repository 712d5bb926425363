/**
 * systemd units from the compartment manifest: one `mte-<name>.service` per compartment (its
 * hardening profile, the unit `systemd-analyze security` scores) and `mte-stack.service`, which
 * runs the launcher that carries the socketpair channels. Why two kinds: a socketpair cannot be
 * handed to two units, so a per-compartment unit started on its own has no channels (see
 * deploy/compartments/README.md, "Why a stack unit").
 *
 * Everything written into a unit is either a fixed word, a path checked against a plain
 * character set (no spaces, quotes, `%` or `$`, so no systemd specifier or variable can sneak
 * in) or a quoted ExecStart argument.
 */
import { isIP } from 'node:net';
import { ConfigError } from '../../keyvault/common/config-error.ts';
import { NODE_HARDENING_FLAGS } from '../../keyvault/common/spawn.ts';
import {
  type Compartment,
  type Manifest,
  type Placeholders,
  channelEnds,
  expand,
} from './manifest.ts';

export interface SystemdWhere extends Placeholders {
  /** The Node.js binary, absolute. */
  node: string;
  /** The homeserver's base URL; the endpoint's IPAddressAllow= comes from it. */
  homeserver?: string;
  /** Where the launcher reads the manifest; default {code}/deploy/compartments.json. */
  manifestPath?: string;
}

export const STACK_UNIT = 'mte-stack.service';

export function unitName(compartment: string): string {
  return `mte-${compartment}.service`;
}

/** A path systemd and a reader take literally: absolute, plain characters, no `..`. */
const SAFE_PATH = /^\/[A-Za-z0-9._/+-]*$/;

function checkPath(label: string, path: string): string {
  if (!SAFE_PATH.test(path) || path.split('/').includes('..') || path.includes('//')) {
    throw new ConfigError(
      `${label}: must be an absolute path of letters, digits and ._/+- without ".."`,
    );
  }
  return path.length > 1 ? path.replace(/\/$/, '') : path;
}

function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

/** One ExecStart= word: `%` and `$` doubled (specifiers, variables), quoted when not plain. */
export function execArg(word: string): string {
  if (hasControl(word)) {
    throw new ConfigError('an argument holds a control character');
  }
  const t = word.replace(/%/g, '%%').replace(/\$/g, '$$$$');
  if (t === ';') return '\\;';
  if (/^[A-Za-z0-9_@%+=:,./{}-]+$/.test(t)) return t;
  return `"${t.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** A long ExecStart= as continuation lines, one group of words a line, for a reviewer. */
function execStart(lines: string[][]): string {
  return `ExecStart=${lines.map((words) => words.map(execArg).join(' ')).join(' \\\n    ')}`;
}

export interface HomeserverAccess {
  /** scheme://host[:port], without credentials, path or query. */
  origin: string;
  /** The IPAddressAllow= value, when the host is an address or localhost. */
  allow?: string;
}

export function homeserverAccess(url: string): HomeserverAccess {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ConfigError('--homeserver: not a URL');
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    throw new ConfigError('--homeserver: must be an http or https URL');
  }
  if (u.username !== '' || u.password !== '') {
    throw new ConfigError('--homeserver: must not carry credentials');
  }
  const origin = `${u.protocol}//${u.host}`;
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost') return { origin, allow: 'localhost' };
  if (isIP(host) !== 0) return { origin, allow: host };
  return { origin };
}

interface Resolved {
  c: Compartment;
  code: string;
  reads: string[];
  writes: string[];
  /** Write paths holding a Unix socket for clients outside the stack. */
  socketDirs: Set<string>;
}

function resolve(m: Manifest, c: Compartment, where: Placeholders): Resolved {
  const path = (p: string, what: string) => checkPath(`${c.name}: ${what}`, expand(p, where));
  const writes = c.write.map((p, i) => path(p, `write[${i}]`));
  const socketDirs = new Set<string>();
  for (const ch of m.channels) {
    if (ch.kind !== 'unix-socket' || ch.compartment !== c.name) continue;
    const socket = path(ch.path, `channel ${ch.name}`);
    const dir = writes.find((w) => socket.startsWith(`${w}/`));
    if (dir === undefined) {
      throw new ConfigError(`${c.name}: the socket of channel ${ch.name} is not in a write path`);
    }
    socketDirs.add(dir);
  }
  return {
    c,
    code: where.code,
    reads: c.read.map((p, i) => path(p, `read[${i}]`)),
    writes,
    socketDirs,
  };
}

function under(path: string, base: string): string | undefined {
  return path.startsWith(`${base}/`) ? path.slice(base.length + 1) : undefined;
}

/** StateDirectory=/RuntimeDirectory= for what lies under /var/lib and /run; the rest by hand. */
function directories(r: Resolved): { lines: string[]; manual: string[] } {
  const state: string[] = [];
  const runtime: string[] = [];
  const manual: string[] = [];
  for (const w of r.writes) {
    const s = under(w, '/var/lib');
    const rt = under(w, '/run');
    if (s !== undefined) state.push(s);
    else if (rt !== undefined) runtime.push(rt);
    else manual.push(w);
  }
  const mode = (dirs: string[], base: string) =>
    dirs.some((d) => r.socketDirs.has(`${base}/${d}`)) ? '0750' : '0700';
  const lines: string[] = [];
  if (state.length > 0) {
    lines.push(`StateDirectory=${state.join(' ')}`);
    lines.push(`StateDirectoryMode=${mode(state, '/var/lib')}`);
  }
  if (runtime.length > 0) {
    if (runtime.some((d) => r.socketDirs.has(`/run/${d}`))) {
      lines.push(
        `# 0750: the UIs allowed to connect are members of group ${r.c.user}; the socket's own mode is the gateway's.`,
      );
    }
    lines.push(`RuntimeDirectory=${runtime.join(' ')}`);
    lines.push(`RuntimeDirectoryMode=${mode(runtime, '/run')}`);
  }
  return { lines, manual };
}

function nodeCommand(r: Resolved, where: SystemdWhere): string[][] {
  const devices = r.c.devices;
  return [
    [where.node, ...NODE_HARDENING_FLAGS, '--permission'],
    ...[r.code, ...r.reads, ...r.writes, ...devices].map((p) => [`--allow-fs-read=${p}`]),
    ...[...r.writes, ...devices].map((p) => [`--allow-fs-write=${p}`]),
    ...(r.c.nativeAddons ? [['--allow-addons']] : []),
    [`${r.code}/${r.c.entry}`, ...r.c.args.map((a) => expand(a, where))],
  ];
}

/** The lines every unit here shares: what no compartment needs. */
const COMMON_HARDENING = [
  'NoNewPrivileges=yes',
  'ProtectHome=yes',
  'PrivateTmp=yes',
  'PrivateMounts=yes',
  'PrivateIPC=yes',
  'ProtectHostname=yes',
  'ProtectClock=yes',
  'ProtectKernelModules=yes',
  'ProtectControlGroups=yes',
  'RestrictRealtime=yes',
  'RestrictSUIDSGID=yes',
  'LockPersonality=yes',
  'SystemCallArchitectures=native',
  // A filtered call fails with EPERM instead of killing the process, so Node reports it.
  'SystemCallErrorNumber=EPERM',
  'UMask=0077',
  'KeyringMode=private',
  "# Node's JIT (V8) writes and then executes code pages: W^X would stop it at start.",
  'MemoryDenyWriteExecute=no',
];

function network(
  kind: Compartment['network'],
  where: SystemdWhere,
): { families: string[]; lines: string[] } {
  if (kind === 'none') {
    return {
      families: ['AF_UNIX'],
      lines: [
        '# network "none": only a loopback of its own, and no IP traffic at all.',
        'PrivateNetwork=yes',
        'IPAddressDeny=any',
      ],
    };
  }
  if (kind === 'loopback') {
    return {
      families: ['AF_UNIX', 'AF_INET', 'AF_INET6'],
      lines: [
        '# network "loopback": the web UI listener on 127.0.0.1/::1, and nothing beyond.',
        'IPAddressDeny=any',
        'IPAddressAllow=localhost',
      ],
    };
  }
  const lines = [
    '# network "homeserver": IP to the homeserver only (cgroup BPF filter; ports are not filtered).',
    'IPAddressDeny=any',
  ];
  if (where.homeserver === undefined) {
    lines.push(
      '# No homeserver was given: no address is allowed. Add IPAddressAllow=<its address>.',
    );
  } else {
    const hs = homeserverAccess(where.homeserver);
    if (hs.allow !== undefined) {
      lines.push(`# homeserver ${hs.origin}`, `IPAddressAllow=${hs.allow}`);
    } else {
      lines.push(
        `# homeserver ${hs.origin} is a DNS name, and IPAddressAllow= needs addresses: add`,
        "# IPAddressAllow=<its addresses> (and the DNS resolver's, unless lookups go through",
        "# nss-resolve's Unix socket), or give the endpoint an IP literal URL.",
      );
    }
  }
  return { families: ['AF_UNIX', 'AF_INET', 'AF_INET6'], lines };
}

function devicesLines(devices: readonly string[]): string[] {
  if (devices.length === 0) return ['PrivateDevices=yes'];
  return [
    '# PrivateDevices=yes would hide the device below; the device cgroup allows it alone instead.',
    'DevicePolicy=closed',
    ...devices.map((d) => `DeviceAllow=${d} rw`),
    ...(devices.some((d) => /^\/dev\/tpm/.test(d))
      ? [
          '# Debian gives /dev/tpmrm0 to root:tss 0660. Rather than SupplementaryGroups=tss (every',
          '# tss member), give it to this compartment alone with a udev rule, for example',
          '# KERNEL=="tpmrm[0-9]*", GROUP="<this unit\'s Group>", MODE="0660" (see README).',
        ]
      : []),
  ];
}

function compartmentUnit(m: Manifest, r: Resolved, all: Resolved[], where: SystemdWhere): string {
  const { c } = r;
  const ends = channelEnds(m, c.name);
  const sockets = m.channels.filter((ch) => ch.kind === 'unix-socket' && ch.compartment === c.name);
  const dirs = directories(r);
  const net = network(c.network, where);
  const own = [r.code, ...r.reads, ...r.writes];
  const related = (a: string, b: string) =>
    a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
  const others = [
    ...new Set(
      all
        .filter((o) => o.c.name !== c.name)
        .flatMap((o) => [...o.reads, ...o.writes])
        .filter((p) => !own.some((q) => related(p, q))),
    ),
  ];
  const header = [
    `# ${unitName(c.name)}: the "${c.name}" compartment's hardening profile.`,
    '# Generated by `node deploy/compartments/main.ts systemd` from the compartment manifest:',
    '# change the manifest, not this file.',
    '#',
    ...(ends.length > 0
      ? [
          '# Channels: ' +
            ends.map((e) => `${e.channel} on fd ${e.fd} (peer ${e.peer})`).join(', ') +
            '.',
          '# systemd cannot hand one socketpair to two units, so under systemd the socketpair',
          `# channels are carried by ${STACK_UNIT}: its launcher makes them and starts each`,
          '# compartment with its user, namespaces and Node permissions. Started on its own,',
          '# this unit runs the program without its channels: it is the profile that is scored',
          '# (systemd-analyze security --offline=true) and the one to copy restrictions from. It',
          '# has no [Install] section, so it cannot be enabled by mistake.',
        ]
      : []),
    ...sockets.map((s) =>
      s.kind === 'unix-socket' ? `# Listens on ${expand(s.path, where)} (channel ${s.name}).` : '',
    ),
  ];
  const body = [
    '[Unit]',
    `Description=mte ${c.name}: ${c.description.replace(/\s+/g, ' ').replace(/%/g, '%%')}`,
    `Documentation=file:${r.code}/deploy/compartments/README.md`,
    '',
    '[Service]',
    'Type=exec',
    `User=${c.user}`,
    `Group=${c.user}`,
    execStart(nodeCommand(r, where)),
    '# No inspector: --disable-sigusr1 above, and no NODE_OPTIONS (--inspect, --require) from a drop-in.',
    'UnsetEnvironment=NODE_OPTIONS',
    'Restart=on-failure',
    'RestartSec=2s',
    '',
    '# Files: the OS read-only; its code and configuration read; its own directory written.',
    'ProtectSystem=strict',
    `ReadOnlyPaths=${[r.code, ...r.reads].join(' ')}`,
    ...(r.writes.length > 0 ? [`ReadWritePaths=${r.writes.join(' ')}`] : []),
    ...(others.length > 0
      ? [
          "# The other compartments' files are not even visible (their modes already keep them out).",
          `InaccessiblePaths=${others.map((p) => `-${p}`).join(' ')}`,
        ]
      : []),
    ...dirs.lines,
    ...(dirs.manual.length > 0
      ? [
          `# Not under /var/lib or /run: create ${dirs.manual.join(', ')} yourself, owned by ${c.user}, mode 0700.`,
        ]
      : []),
    '',
    ...COMMON_HARDENING,
    'PrivateUsers=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelLogs=yes',
    'ProtectProc=invisible',
    'ProcSubset=pid',
    'RemoveIPC=yes',
    'RestrictNamespaces=yes',
    'CapabilityBoundingSet=',
    'AmbientCapabilities=',
    'SystemCallFilter=@system-service',
    'SystemCallFilter=~@privileged @resources',
    ...devicesLines(c.devices),
    ...net.lines,
    `RestrictAddressFamilies=${net.families.join(' ')}`,
    '',
    '# Limits from the manifest. One LimitNOFILE value sets soft and hard alike, so Node does',
    '# not try to raise it at start.',
    `MemoryMax=${c.limits.memoryMiB}M`,
    "# Secrets in this process's memory must not reach swap.",
    'MemorySwapMax=0',
    `TasksMax=${c.limits.tasks}`,
    `LimitNOFILE=${c.limits.openFiles}`,
    'LimitCORE=0',
  ];
  return [...header, '', ...body, ''].join('\n');
}

/** The stack's own directories: {state} and {run} made by systemd, writable by the launcher. */
function stackDirectories(where: SystemdWhere, writes: string[]): string[] {
  const lines: string[] = [];
  const state = under(where.state, '/var/lib');
  const run = under(where.run, '/run');
  if (state !== undefined) lines.push(`StateDirectory=${state}`, 'StateDirectoryMode=0755');
  if (run !== undefined) lines.push(`RuntimeDirectory=${run}`, 'RuntimeDirectoryMode=0755');
  // "-": a compartment's directory may not exist yet; the launcher makes it.
  const rw = [
    ...(state === undefined ? [where.state] : []),
    ...(run === undefined ? [where.run] : []),
    ...writes.map((w) => `-${w}`),
  ];
  if (rw.length > 0) lines.push(`ReadWritePaths=${rw.join(' ')}`);
  return lines;
}

function stackUnit(m: Manifest, all: Resolved[], where: SystemdWhere): string {
  const manifestPath = checkPath(
    'manifest path',
    where.manifestPath ?? `${where.code}/deploy/compartments.json`,
  );
  const devices = [...new Set(m.compartments.flatMap((c) => c.devices))];
  const writes = all.flatMap((r) => r.writes);
  const networked = m.compartments.some((c) => c.network !== 'none');
  const net = network(networked ? 'homeserver' : 'none', where);
  if (m.compartments.some((c) => c.network === 'loopback')) {
    net.lines.push('# a compartment serves the web UI on loopback', 'IPAddressAllow=localhost');
  }
  const sum = (f: (c: Compartment) => number) => m.compartments.reduce((s, c) => s + f(c), 0);
  // No --permission for the launcher: it must start bwrap, setpriv and prlimit, and Node's
  // permission model does not follow child processes, so it would limit little.
  // --disable-sigusr1 all the same: the launcher is root and holds every compartment's channel,
  // so no process may open an inspector in it either.
  const launcher = [
    [where.node, ...NODE_HARDENING_FLAGS, `${where.code}/deploy/launch.ts`, 'serve'],
    ['--manifest', manifestPath],
    ['--config', where.config],
    ['--state', where.state],
    ['--run', where.run],
  ];
  return [
    `# ${STACK_UNIT}: the whole stack, started by the launcher (deploy/launch.ts) as root.`,
    '# Generated by `node deploy/compartments/main.ts systemd`; change the manifest, not this file.',
    '#',
    '# The launcher makes the socketpair channels, then starts each compartment: bubblewrap',
    '# (as root, no user namespace: its own mount, pid, ipc, uts, cgroup and, unless the',
    "# manifest gives it the network, net namespace), then setpriv to the compartment's user",
    "# with no capabilities, prlimit, and Node's permission model (deploy/compartments/sandbox.ts).",
    '#',
    '# What this unit restricts: the OS read-only but for {state} and {run}; no home, a private',
    "# /tmp; devices limited to the manifest's; IP limited to the homeserver for every process",
    '# of the stack; no kernel modules, tunables, logs, clock or hostname changes; root with',
    "# only the capabilities below; memory and tasks capped at the sum of the compartments'.",
    '# What it cannot restrict, and why:',
    "# - PrivateUsers=: the launcher switches to the compartments' real users.",
    '# - RestrictNamespaces=: bubblewrap makes mount, pid, net, ipc, uts and cgroup namespaces,',
    "#   and the launcher's check that bwrap works (`bwrap --unshare-all`) a user namespace too.",
    '# - ProcSubset=pid: that check then fails (checked here, emulated with unshare -m;',
    '#   ProtectKernelTunables, ProtectKernelLogs and ProtectProc=invisible did not stop it).',
    '# - ~@privileged, ~@mount in the syscall filter: setuid/setgroups, chown, mount and',
    "#   pivot_root are the launcher's and bubblewrap's work. The compartments inherit this",
    '#   wider filter: the narrow one is in each mte-<name>.service.',
    '# - Per-compartment limits: the IP filter, the device list, MemoryMax= and TasksMax= here',
    "#   are the union or sum of all compartments'. The narrow ones are in the per-compartment",
    '#   units, which is why those are the ones scored.',
    '',
    '[Unit]',
    'Description=mte: the hardened Matrix endpoint (all compartments, with their channels)',
    `Documentation=file:${where.code}/deploy/compartments/README.md`,
    ...(networked ? ['Wants=network-online.target', 'After=network-online.target'] : []),
    '',
    '[Service]',
    'Type=exec',
    "# User= unset: the launcher runs as root, to switch to each compartment's user.",
    execStart(launcher),
    '# The compartments get none of its environment; nor does it take NODE_OPTIONS from a drop-in.',
    'UnsetEnvironment=NODE_OPTIONS',
    'Restart=on-failure',
    'RestartSec=2s',
    '',
    'ProtectSystem=strict',
    ...stackDirectories(where, writes),
    ...COMMON_HARDENING,
    'ProtectKernelTunables=yes',
    'ProtectKernelLogs=yes',
    'ProtectProc=invisible',
    'RestrictNamespaces=user mnt pid net ipc uts cgroup',
    '# Each capability, and what needs it (found by running `launch.ts check` and `probe`',
    '# under a reduced bounding set):',
    '#   CAP_SYS_ADMIN    bubblewrap: namespaces and mounts, as root',
    '#   CAP_NET_ADMIN    bubblewrap: the loopback of a new network namespace',
    "#   CAP_SETUID/GID   setpriv: the switch to the compartment's user and group",
    '#   CAP_SETPCAP      setpriv --bounding-set=-all (without it the set silently stays)',
    "#   CAP_SETFCAP      the bwrap check's user namespace maps root (Linux >= 5.12)",
    '#   CAP_CHOWN/FOWNER the launcher gives each write directory to its compartment, 0700',
    '#   CAP_DAC_OVERRIDE bwrap --chdir into those 0700 directories; the readiness check',
    "#                    connects to the gateway's socket (0600/0660, not root's)",
    'CapabilityBoundingSet=CAP_SYS_ADMIN CAP_NET_ADMIN CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_SETFCAP CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE',
    'AmbientCapabilities=',
    'SystemCallFilter=@system-service @mount',
    'SystemCallFilter=~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @resources @swap',
    ...devicesLines(devices),
    ...net.lines,
    '# AF_NETLINK: bubblewrap brings up the loopback of each new network namespace.',
    `RestrictAddressFamilies=${[...net.families, 'AF_NETLINK'].join(' ')}`,
    '',
    "# The sum of the compartments' limits, plus room for the launcher and bubblewrap.",
    `MemoryMax=${sum((c) => c.limits.memoryMiB) + 256}M`,
    'MemorySwapMax=0',
    `TasksMax=${sum((c) => c.limits.tasks) + 32}`,
    `LimitNOFILE=${Math.max(...m.compartments.map((c) => c.limits.openFiles))}`,
    'LimitCORE=0',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/**
 * The units, by file name: `mte-<name>.service` for each compartment, then `mte-stack.service`.
 * Throws a ConfigError for a path or URL that cannot be written into a unit safely.
 */
export function systemdUnits(manifest: Manifest, where: SystemdWhere): Map<string, string> {
  const w: SystemdWhere = {
    ...where,
    code: checkPath('code', where.code),
    config: checkPath('config', where.config),
    state: checkPath('state', where.state),
    run: checkPath('run', where.run),
    node: checkPath('node', where.node),
  };
  const all = manifest.compartments.map((c) => resolve(manifest, c, w));
  const units = new Map<string, string>();
  for (const r of all) units.set(unitName(r.c.name), compartmentUnit(manifest, r, all, w));
  units.set(STACK_UNIT, stackUnit(manifest, all, w));
  return units;
}
