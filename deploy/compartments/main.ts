/**
 * The compartment tool: `node deploy/compartments/main.ts check|systemd|microkit`. Checks the
 * manifest and makes from it the systemd units and the seL4 Microkit system description.
 * Errors are one line on stderr; exit 0 ok, 1 failure (a bad manifest, an invalid
 * description), 2 usage.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  UsageError,
  parseCommandLine,
  pickCommand,
  runMain,
} from '../../keyvault/common/cli-main.ts';
import {
  MICROKIT_ARCHES,
  type Manifest,
  type MicrokitArch,
  type SystemdWhere,
  channelEnds,
  homeserverAccess,
  loadManifest,
  microkitSystem,
  systemdUnits,
  validateMicrokit,
} from './index.ts';

/** The repository root: the default {code}. */
const REPO = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

const DEFAULTS = { code: REPO, config: '/etc/mte', state: '/var/lib/mte', run: '/run/mte' };

const COMMANDS = {
  check: 'validate the manifest; print each compartment, its user, network, devices, channels',
  systemd: 'write the systemd units (one per compartment, and mte-stack.service)',
  microkit: 'write the seL4 Microkit system description (.system XML), validated',
} as const;
type Command = keyof typeof COMMANDS;

const PLACES = `  --code DIR        the installed tree (default: this repository)
  --config DIR      configuration, one folder per compartment (default ${DEFAULTS.config})
  --state DIR       persistent state (default ${DEFAULTS.state})
  --run DIR         runtime sockets (default ${DEFAULTS.run})`;

const HELP = `Usage: node deploy/compartments/main.ts <command> --manifest FILE [options] [--json]

The compartment manifest (deploy/compartments.json) and what is made from it.

Commands:
${Object.entries(COMMANDS)
  .map(([n, w]) => `  ${n.padEnd(10)}${w}`)
  .join('\n')}

"<command> --help" for one command. Exit status: 0 ok, 1 failure, 2 usage error.
`;

const COMMAND_HELP: Record<Command, string> = {
  check: `Usage: node deploy/compartments/main.ts check --manifest FILE [--json]

Validates the manifest, then makes the units and the Microkit description in memory (with the
default places) and validates the description too. Prints one line per compartment.
`,
  systemd: `Usage: node deploy/compartments/main.ts systemd --manifest FILE [--out DIR] [options] [--json]

Writes mte-<compartment>.service (each compartment's hardening profile) and mte-stack.service
(the launcher, which carries the socketpair channels) into DIR, or prints them without --out.
${PLACES}
  --node FILE       the Node.js binary the units run (default: this one, ${process.execPath})
  --homeserver URL  the homeserver; an IP literal or localhost becomes IPAddressAllow=
  --manifest-at FILE  where the launcher reads the manifest (default {code}/deploy/compartments.json)
`,
  microkit: `Usage: node deploy/compartments/main.ts microkit --manifest FILE [--out FILE] [--arch ARCH] [--json]

Writes the .system XML after checking it (deploy/SEL4.md), or prints it without --out.
--arch: ${MICROKIT_ARCHES.join(', ')} (default x86_64); it decides the TPM placeholders.
`,
};

interface Options {
  manifest: string;
  out?: string;
  json: boolean;
  values: Record<string, string | boolean | undefined>;
}

function parse(
  argv: string[],
): { command: 'help'; text: string } | { command: Command; o: Options } {
  const { values, positionals } = parseCommandLine(argv, {
    manifest: { type: 'string' },
    out: { type: 'string' },
    code: { type: 'string' },
    config: { type: 'string' },
    state: { type: 'string' },
    run: { type: 'string' },
    node: { type: 'string' },
    homeserver: { type: 'string' },
    'manifest-at': { type: 'string' },
    arch: { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  });
  const picked = pickCommand(positionals, values.help, { main: HELP, commands: COMMAND_HELP });
  if ('help' in picked) return { command: 'help', text: picked.help };
  const command = picked.command;
  const allowed: Record<Command, string[]> = {
    check: [],
    systemd: ['out', 'code', 'config', 'state', 'run', 'node', 'homeserver', 'manifest-at'],
    microkit: ['out', 'arch'],
  };
  for (const [k, v] of Object.entries(values) as [string, unknown][]) {
    // parseArgs leaves out options that were not given; defaults (json, help) are skipped.
    if (['json', 'help', 'manifest'].includes(k) || typeof v !== 'string') continue;
    if (!allowed[command].includes(k))
      throw new UsageError(`${command}: --${k} is not an option here`);
  }
  const manifest = values.manifest;
  if (manifest === undefined || manifest === '') {
    throw new UsageError(`${command}: --manifest FILE is required`);
  }
  return {
    command,
    o: {
      manifest,
      ...(values.out === undefined ? {} : { out: values.out }),
      json: values.json,
      values,
    },
  };
}

function absolute(o: Options, key: string, fallback: string): string {
  const v = o.values[key];
  if (v === undefined) return fallback;
  if (typeof v !== 'string' || !isAbsolute(v))
    throw new UsageError(`--${key} must be an absolute path`);
  return v;
}

/** A bad --homeserver is a usage error (exit 2), not a failure. */
function checkedHomeserver(url: string): string {
  try {
    homeserverAccess(url);
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : 'bad --homeserver');
  }
  return url;
}

function where(o: Options): SystemdWhere {
  const code = absolute(o, 'code', DEFAULTS.code);
  const homeserver = o.values.homeserver;
  const manifestAt = o.values['manifest-at'];
  return {
    code,
    config: absolute(o, 'config', DEFAULTS.config),
    state: absolute(o, 'state', DEFAULTS.state),
    run: absolute(o, 'run', DEFAULTS.run),
    node: absolute(o, 'node', process.execPath),
    ...(typeof homeserver === 'string' ? { homeserver: checkedHomeserver(homeserver) } : {}),
    ...(typeof manifestAt === 'string' ? { manifestPath: absolute(o, 'manifest-at', '') } : {}),
  };
}

function arch(o: Options): MicrokitArch {
  const v = o.values.arch ?? 'x86_64';
  const known = MICROKIT_ARCHES.find((a) => a === v);
  if (known === undefined)
    throw new UsageError(`microkit: --arch must be one of ${MICROKIT_ARCHES.join(', ')}`);
  return known;
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

function summary(m: Manifest) {
  return m.compartments.map((c) => ({
    compartment: c.name,
    user: c.user,
    network: c.network,
    devices: c.devices,
    channels: [
      ...channelEnds(m, c.name).map((e) => `${e.channel} fd ${e.fd} (${e.peer})`),
      ...m.channels
        .filter((ch) => ch.kind === 'unix-socket' && ch.compartment === c.name)
        .map((ch) => `${ch.name} socket${ch.kind === 'unix-socket' ? ` ${ch.path}` : ''}`),
    ],
  }));
}

function table(rows: string[][]): string[] {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) =>
    r
      .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}

async function check(o: Options): Promise<number> {
  const m = await loadManifest(o.manifest);
  const units = systemdUnits(m, { ...DEFAULTS, node: process.execPath });
  const report = validateMicrokit(microkitSystem(m));
  const rows = summary(m);
  if (o.json) {
    print(
      JSON.stringify({
        ok: report.ok,
        manifest: o.manifest,
        compartments: rows,
        systemdUnits: [...units.keys()],
        microkit: report,
      }),
    );
  } else {
    const lines = table([
      ['compartment', 'user', 'network', 'devices', 'channels'],
      ...rows.map((r) => [
        r.compartment,
        r.user,
        r.network,
        r.devices.join(' ') || '-',
        r.channels.join(', ') || '-',
      ]),
    ]);
    for (const l of lines) print(l);
    print(`systemd: ${units.size} units; microkit: ${report.ok ? 'valid' : 'INVALID'}`);
    for (const p of report.problems) print(`problem  ${p}`);
  }
  return report.ok ? 0 : 1;
}

async function systemd(o: Options): Promise<number> {
  const m = await loadManifest(o.manifest);
  const units = systemdUnits(m, where(o));
  if (o.out === undefined) {
    if (o.json) print(JSON.stringify({ ok: true, units: Object.fromEntries(units) }));
    else for (const [name, text] of units) process.stdout.write(`# ==> ${name} <==\n${text}\n`);
    return 0;
  }
  await mkdir(o.out, { recursive: true });
  const files: string[] = [];
  for (const [name, text] of units) {
    const file = join(o.out, name);
    await writeFile(file, text, { mode: 0o644 });
    files.push(file);
  }
  if (o.json) print(JSON.stringify({ ok: true, files }));
  else for (const f of files) print(`wrote ${f}`);
  return 0;
}

async function microkit(o: Options): Promise<number> {
  const m = await loadManifest(o.manifest);
  const xml = microkitSystem(m, { arch: arch(o) });
  const report = validateMicrokit(xml);
  if (!report.ok) {
    // Our own generator made it: a problem here is a bug in microkit.ts, not in the manifest.
    throw new Error(`the generated description is invalid: ${report.problems.join('; ')}`);
  }
  if (o.out === undefined) {
    if (o.json) print(JSON.stringify({ ok: true, xml }));
    else process.stdout.write(xml);
    return 0;
  }
  await writeFile(o.out, xml, { mode: 0o644 });
  if (o.json) print(JSON.stringify({ ok: true, file: o.out }));
  else print(`wrote ${o.out}`);
  return 0;
}

async function run(argv: string[]): Promise<number> {
  const p = parse(argv);
  if (p.command === 'help') {
    process.stdout.write(p.text);
    return 0;
  }
  switch (p.command) {
    case 'check':
      return check(p.o);
    case 'systemd':
      return systemd(p.o);
    case 'microkit':
      return microkit(p.o);
  }
}

runMain('compartments', run);
