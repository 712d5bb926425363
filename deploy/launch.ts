/**
 * `node deploy/launch.ts`: starts the compartments of deploy/compartments.json with least
 * privilege (deploy/compartments/launcher.ts), checks what this machine can enforce, and runs
 * the probe inside a compartment's sandbox.
 */
import { resolve } from 'node:path';
import { UsageError, parseCommandLine, pickCommand, runMain } from '../keyvault/common/cli-main.ts';
import { spawnProcess } from '../keyvault/common/spawn.ts';
import { launch } from './compartments/launcher.ts';
import { type Placeholders, loadManifest } from './compartments/manifest.ts';
import { missingProtections, probeHost, sandboxCommand } from './compartments/sandbox.ts';

const COMMON = `  --manifest FILE   the compartment manifest (default deploy/compartments.json)
  --config DIR      operator configuration, one folder per compartment (default /etc/mte)
  --state DIR       persistent state, one folder per compartment (default /var/lib/mte)
  --run DIR         runtime sockets (default /run/mte)
  --json            machine-readable output`;

const TEXTS = {
  main: `Usage: node deploy/launch.ts COMMAND [OPTIONS]

Starts the compartments (vault, endpoint, gateway) as the manifest says: each as its own user,
in bubblewrap namespaces, under Node's permission model, with the socketpair channels between
them made here; restarts the stack when a compartment dies.

Commands:
  serve   start the stack and supervise it until SIGTERM/SIGINT
  check   print what each compartment gets and what this machine cannot enforce
  probe   run one probe inside a compartment's sandbox (for the sandbox tests)

Options:
${COMMON}
  --allow-weaker    start even if a protection is missing (each is printed)
  -h, --help        this help
`,
  commands: {
    serve: `Usage: node deploy/launch.ts serve [OPTIONS] [--allow-weaker]\n\nOptions:\n${COMMON}\n`,
    check: `Usage: node deploy/launch.ts check [OPTIONS]\n\nExit status 1 when a protection is missing.\n\nOptions:\n${COMMON}\n`,
    probe: `Usage: node deploy/launch.ts probe --compartment NAME [--os-only] [OPTIONS] -- ACTION [TARGET]

Runs deploy/compartments/probe.ts in NAME's sandbox and prints its JSON line. ACTION is one of
read PATH, write DIR, connect HOST:PORT, spawn, whoami. --os-only leaves out Node's permission
model, to show what the namespaces and the user switch alone refuse.

Options:
${COMMON}
`,
  },
} as const;

const OPTIONS = {
  manifest: { type: 'string' },
  config: { type: 'string' },
  state: { type: 'string' },
  run: { type: 'string' },
  compartment: { type: 'string' },
  'os-only': { type: 'boolean', default: false },
  'allow-weaker': { type: 'boolean', default: false },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function main(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const own = dash < 0 ? argv : argv.slice(0, dash);
  const probeArgs = dash < 0 ? [] : argv.slice(dash + 1);
  const { values, positionals } = parseCommandLine(own, OPTIONS);
  const picked = pickCommand(positionals, values.help, TEXTS);
  if ('help' in picked) {
    process.stdout.write(picked.help);
    return 0;
  }
  const manifest = await loadManifest(
    resolve(values.manifest ?? resolve(import.meta.dirname, 'compartments.json')),
  );
  const where: Placeholders = {
    code: resolve(import.meta.dirname, '..'),
    config: resolve(values.config ?? '/etc/mte'),
    state: resolve(values.state ?? '/var/lib/mte'),
    run: resolve(values.run ?? '/run/mte'),
  };

  if (picked.command === 'check') {
    const host = probeHost(manifest.compartments.map((c) => c.user));
    const rows = manifest.compartments.map((c) => ({
      compartment: c.name,
      user: c.user,
      protections: sandboxCommand(c, { where, host, node: process.execPath }).protections,
    }));
    if (values.json) process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    else {
      for (const r of rows) {
        process.stdout.write(`${r.compartment} (${r.user})\n`);
        for (const p of r.protections) {
          process.stdout.write(
            `  ${p.ok ? 'yes' : 'NO '}  ${p.name}${p.ok ? '' : `: ${p.missing ?? ''}`}\n`,
          );
        }
      }
    }
    return rows.some((r) => missingProtections(r.protections).length > 0) ? 1 : 0;
  }

  if (picked.command === 'probe') {
    const name = values.compartment;
    if (name === undefined) throw new UsageError('probe: --compartment NAME is required');
    const c = manifest.compartments.find((x) => x.name === name);
    if (!c) throw new UsageError('probe: no such compartment in the manifest');
    if (probeArgs.length === 0) throw new UsageError('probe: give the action after --');
    const host = probeHost([c.user]);
    const cmd = sandboxCommand(c, {
      where,
      host,
      node: process.execPath,
      entryOverride: { entry: 'deploy/compartments/probe.ts', args: probeArgs },
      nodePermission: !values['os-only'],
    });
    const child = spawnProcess({
      command: cmd.command,
      argv: cmd.argv,
      env: cmd.env,
      stdout: 'inherit',
    });
    const code = await child.exited;
    return typeof code === 'number' ? code : 1;
  }

  const stack = await launch({ manifest, where, allowWeaker: values['allow-weaker'] });
  const address = stack.gateway.socketPath ?? 'tcp';
  if (values.json)
    process.stdout.write(`${JSON.stringify({ listening: address, pid: process.pid })}\n`);
  else process.stderr.write(`launch: the stack is up; UIs connect to ${address}\n`);
  const stop = (): void => void stack.stop();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await stack.done;
  return 0;
}

runMain('launch', main);
