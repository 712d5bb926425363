/**
 * The launcher: starts every compartment of the manifest in its sandbox (sandbox.ts), wires
 * the socketpair channels between them (it makes each pair, hands one end to each side and
 * keeps neither), waits until the UI socket serves, and restarts the stack when a compartment
 * dies. A compartment's death closes its channels, which ends its neighbours too; so a crash
 * restarts the whole stack in order. Nothing accepted is lost by that: the outbox and the
 * store are durable (the crash tests show it under kill -9).
 */
import { readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { type SpawnedProcess, spawnProcess } from '../../keyvault/common/spawn.ts';
import {
  type SpawnedGateway,
  startGatewayProcess,
} from '../../endpoint/untrusted/gateway/spawn.ts';
import { type Compartment, type Manifest, type Placeholders, channelEnds } from './manifest.ts';
import {
  type Host,
  type Protection,
  type SandboxCommand,
  compartmentPaths,
  missingProtections,
  probeHost,
  sandboxCommand,
} from './sandbox.ts';

/** Exit reasons a restart cannot fix (and, for a PIN, that each restart makes worse). */
const NO_RESTART = [
  'VAULT_WRONG_PIN',
  'VAULT_PIN_LOCKED',
  'VAULT_CONFIG',
  'VAULT_UNSAFE_FILES',
  'STORE_UNSAFE_FILES',
  'STORE_WRONG_IDENTITY',
  'STORE_MISSING',
  'STORE_ROLLED_BACK',
  'STORE_TAMPERED',
];

export class LaunchError extends Error {
  override name = 'LaunchError';
  readonly code = 'LAUNCH';
}

export interface LaunchOptions {
  manifest: Manifest;
  where: Placeholders;
  /** Start even when a protection is missing (each is reported). */
  allowWeaker?: boolean;
  /** The Node binary the compartments run (default: ours). */
  node?: string;
  /** Extra environment for every compartment (the rest of ours is not passed). */
  env?: Record<string, string>;
  /** Every line a compartment writes to stderr, and the launcher's own (compartment "launch"). */
  onLine?: (compartment: string, line: string) => void;
  /** Restarts allowed within `windowMs` before the launcher gives up (default 5 in 2 min). */
  maxRestarts?: number;
  windowMs?: number;
  readyTimeoutMs?: number;
  /** What the machine offers; probed when not given (tests pass a weaker one). */
  host?: Host;
}

export interface Stack {
  /** The gateway as a client reaches it (the manifest's unix-socket channel). */
  gateway: SpawnedGateway;
  /** What each compartment got and what it lacks. */
  protections: Map<string, Protection[]>;
  /** The pid of a compartment's process (bwrap's, its sandbox's outermost one). */
  pid(compartment: string): number | undefined;
  /** How often the stack was restarted after a crash. */
  readonly restarts: number;
  /** Resolves after the next restart completed (the gateway serves again). */
  nextStart(): Promise<void>;
  /** Resolves when the launcher gave up or was stopped. */
  readonly done: Promise<void>;
  stop(): Promise<void>;
}

interface Running {
  processes: Map<string, SpawnedProcess>;
  gateway: SpawnedGateway;
}

/** The compartment serving the UI socket: started last, its readiness is the stack's. */
function uiCompartment(m: Manifest): string {
  const ui = m.channels.find((c) => c.kind === 'unix-socket');
  if (ui?.kind !== 'unix-socket')
    throw new LaunchError('the manifest has no unix-socket channel for UIs');
  return ui.compartment;
}

/** Every compartment's write dirs, prepared as at launch (for provisioning before it). */
export async function prepareCompartmentDirs(
  m: Manifest,
  where: Placeholders,
  host: Host,
): Promise<void> {
  for (const c of m.compartments) {
    await checkPaths(c, where);
    await prepareWriteDirs(c, where, host);
  }
}

/** Write dirs: made if missing, owned by the compartment's user, 0700; never a symlink. */
async function prepareWriteDirs(c: Compartment, where: Placeholders, host: Host): Promise<void> {
  const ids = host.users.get(c.user);
  for (const dir of compartmentPaths(c, where).write) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const info = await lstat(dir);
    if (!info.isDirectory())
      throw new LaunchError(`${c.name}: ${dir} is not a directory (a symlink?)`);
    if (host.root && ids) {
      await chown(dir, ids.uid, ids.gid);
      await chmod(dir, 0o700);
    }
  }
}

async function checkPaths(c: Compartment, where: Placeholders): Promise<void> {
  const paths = compartmentPaths(c, where);
  for (const p of [...paths.read, ...paths.devices]) {
    try {
      await lstat(p);
    } catch {
      throw new LaunchError(`${c.name}: ${p} does not exist (the manifest lists it)`);
    }
  }
}

export async function launch(options: LaunchOptions): Promise<Stack> {
  const { manifest: m, where } = options;
  const node = options.node ?? process.execPath;
  const say = (line: string): void => {
    if (options.onLine) options.onLine('launch', `launch: ${line}`);
    else process.stderr.write(`launch: ${line}\n`);
  };
  const host = options.host ?? probeHost(m.compartments.map((c) => c.user));
  const plan = new Map<string, SandboxCommand>();
  const protections = new Map<string, Protection[]>();
  const missing: string[] = [];
  for (const c of m.compartments) {
    const cmd = sandboxCommand(c, {
      where,
      host,
      node,
      ...(options.env ? { env: options.env } : {}),
    });
    plan.set(c.name, cmd);
    protections.set(c.name, cmd.protections);
    for (const p of missingProtections(cmd.protections))
      missing.push(`${c.name}: ${p.name} (${p.missing ?? 'missing'})`);
  }
  if (missing.length > 0 && !options.allowWeaker) {
    throw new LaunchError(
      `refusing to start with weaker isolation (--allow-weaker to accept): ${missing.join('; ')}`,
    );
  }
  for (const line of missing) say(`WEAKER: ${line}`);
  await prepareCompartmentDirs(m, where, host);
  const uiName = uiCompartment(m);

  const startOnce = async (): Promise<Running> => {
    const processes = new Map<string, SpawnedProcess>();
    /** Parent ends of pairs whose first side started, waiting for the second side. */
    const waiting = new Map<string, Socket>();
    let gateway: (SpawnedGateway & { spawned: SpawnedProcess }) | undefined;
    try {
      for (const c of m.compartments) {
        const cmd = plan.get(c.name);
        if (!cmd) throw new LaunchError(`no plan for ${c.name}`);
        const ends = channelEnds(m, c.name);
        const maxFd = Math.max(2, ...ends.map((e) => e.fd));
        const fds: ('pipe' | 'ignore' | Socket)[] = Array.from(
          { length: maxFd - 2 },
          () => 'ignore' as const,
        );
        const handed: Socket[] = [];
        for (const end of ends) {
          const other = waiting.get(end.channel);
          if (other) {
            fds[end.fd - 3] = other;
            handed.push(other);
            waiting.delete(end.channel);
          } else {
            fds[end.fd - 3] = 'pipe';
          }
        }
        const spawnOptions = {
          command: cmd.command,
          argv: cmd.argv,
          env: cmd.env,
          fds,
          onStderr: (line: string) => {
            (options.onLine ?? ((_c, l) => process.stderr.write(`[${c.name}] ${l}\n`)))(
              c.name,
              line,
            );
          },
        };
        let spawned: SpawnedProcess;
        if (c.name === uiName) {
          const started = startGatewayProcess(spawnOptions, {
            readyTimeoutMs: options.readyTimeoutMs ?? 180_000,
          });
          // The launcher keeps no channel end: each belongs to the two compartments only.
          for (const s of handed) s.destroy();
          gateway = await started;
          spawned = gateway.spawned;
        } else {
          spawned = spawnProcess(spawnOptions);
          for (const s of handed) s.destroy();
        }
        processes.set(c.name, spawned);
        for (const end of ends) {
          const mine = spawned.channels[end.fd - 3];
          if (mine && fds[end.fd - 3] === 'pipe') waiting.set(end.channel, mine);
        }
      }
      if (!gateway) throw new LaunchError(`${uiName} did not start`);
      return { processes, gateway };
    } catch (e) {
      for (const s of waiting.values()) s.destroy();
      await stopAll(processes);
      throw e;
    }
  };

  let running = await startOnce();
  const state = { stopping: false };
  // A function, not the field: the flag changes while we await.
  const stopping = (): boolean => state.stopping;
  let restarts = 0;
  const recent: number[] = [];
  let startedWaiters: (() => void)[] = [];
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));

  const supervise = async (): Promise<void> => {
    for (;;) {
      const current = running;
      const first = await Promise.race(
        [...current.processes].map(([n, p]) => p.exited.then((c) => [n, c] as const)),
      );
      if (stopping()) return;
      // One death takes its channel partners with it (a vault exits 0 when its endpoint's
      // channel closes): after a moment, blame the one that failed, not the first to notice.
      await sleep(200);
      const exited = await Promise.all(
        [...current.processes].map(async ([n, p]) =>
          p.running() ? undefined : ([n, await p.exited] as const),
        ),
      );
      const [name, code] =
        exited.find(
          (e): e is readonly [string, number | string] => e !== undefined && e[1] !== 0,
        ) ?? first;
      const last = current.processes.get(name)?.lastLine() ?? '';
      const refusal = NO_RESTART.find((c) => last.includes(c));
      if (refusal) {
        // Restarting cannot fix these, and with a PIN each start would spend one of the
        // token's tries until it locks: stop and let the operator fix it.
        say(`${name} exited (${String(code)}) with ${refusal}; not restarting: ${last}`);
        await stopAll(current.processes);
        return;
      }
      say(`${name} exited (${String(code)}); restarting the stack`);
      await stopAll(current.processes);
      const now = Date.now();
      recent.push(now);
      while (recent.length > 0 && (recent[0] ?? now) < now - (options.windowMs ?? 120_000))
        recent.shift();
      if (recent.length > (options.maxRestarts ?? 5)) {
        say(
          `giving up: ${recent.length} restarts within ${Math.round((options.windowMs ?? 120_000) / 1000)} s`,
        );
        return;
      }
      await sleep(Math.min(30_000, 500 * 2 ** (recent.length - 1)));
      if (stopping()) return;
      try {
        running = await startOnce();
        restarts++;
        say(`stack restarted (${restarts})`);
        const waiters = startedWaiters;
        startedWaiters = [];
        for (const w of waiters) w();
      } catch (e) {
        say(`restart failed: ${e instanceof Error ? e.message : 'error'}`);
        return;
      }
    }
  };
  void supervise().finally(resolveDone);

  return {
    get gateway() {
      return running.gateway;
    },
    protections,
    pid: (name) => running.processes.get(name)?.process.pid,
    get restarts() {
      return restarts;
    },
    nextStart: () => new Promise<void>((resolve) => startedWaiters.push(resolve)),
    done,
    stop: async () => {
      state.stopping = true;
      await stopAll(running.processes);
      resolveDone();
    },
  };
}

/**
 * The last started (the UI side) first, by signal; the others then see their channel close and
 * stop by themselves (the endpoint closes its store and its vault channel), SIGKILL after a
 * grace period. bwrap does not pass signals on, so a signal would kill a compartment at once.
 */
async function stopAll(processes: Map<string, SpawnedProcess>): Promise<void> {
  const order = [...processes.values()].reverse();
  const [first, ...rest] = order;
  if (first) await first.stop({ graceMs: 5_000 });
  for (const p of rest) await p.stop({ graceMs: 15_000, first: 'close' });
}

/** The innermost descendant of `pid` (the compartment's node under bwrap and its wrappers). */
export function innermostPid(pid: number): number {
  let current = pid;
  for (let depth = 0; depth < 8; depth++) {
    let children: number[];
    try {
      children = readFileSync(`/proc/${current}/task/${current}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter(Boolean)
        .map(Number);
    } catch {
      break;
    }
    const [next] = children;
    if (next === undefined) break;
    current = next;
  }
  return current;
}
