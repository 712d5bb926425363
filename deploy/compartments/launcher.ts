/**
 * The launcher: starts every compartment of the manifest in its sandbox (sandbox.ts), wires
 * the socketpair channels between them (it makes each pair, hands one end to each side and
 * keeps neither), waits until the UI socket serves, and restarts what died. A compartment's
 * death closes its channels, which ends its neighbours too; so a crash restarts the whole stack
 * in order, with one exception: a compartment whose every channel's other end listens for a
 * reconnection (the manifest's `reconnect`: the gateway, whose endpoint outlives it) is
 * restarted alone and connected there, so a crashed or misbehaving gateway cannot stop the
 * trusted side. Nothing accepted is lost either way: the outbox and the store are durable (the
 * crash tests show it under kill -9).
 */
import { readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { connectUnix } from '../../keyvault/common/rpc/index.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { type SpawnedProcess, spawnProcess } from '../../keyvault/common/spawn.ts';
import {
  type SpawnedGateway,
  startGatewayProcess,
} from '../../endpoint/untrusted/gateway/spawn.ts';
import {
  type Compartment,
  type Manifest,
  type Placeholders,
  channelEnds,
  expand,
  outlivesCallers,
  restartableAlone,
} from './manifest.ts';
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
  /** How often the stack (or a compartment alone, the gateway) was restarted after a crash. */
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

  const alone = restartableAlone(m);
  const outliving = outlivesCallers(m);
  const readyTimeoutMs = options.readyTimeoutMs ?? 180_000;

  /** Starts one compartment with `fds` on 3, 4, ...; the UI one is awaited until it serves. */
  const startCompartment = async (
    c: Compartment,
    fds: ('pipe' | 'ignore' | Socket)[],
    handed: Socket[],
  ): Promise<{
    spawned: SpawnedProcess;
    gateway?: SpawnedGateway & { spawned: SpawnedProcess };
  }> => {
    const cmd = plan.get(c.name);
    if (!cmd) throw new LaunchError(`no plan for ${c.name}`);
    const spawnOptions = {
      command: cmd.command,
      argv: cmd.argv,
      env: cmd.env,
      fds,
      onStderr: (line: string) => {
        (options.onLine ?? ((_c, l) => process.stderr.write(`[${c.name}] ${l}\n`)))(c.name, line);
      },
    };
    if (c.name === uiName) {
      const started = startGatewayProcess(spawnOptions, { readyTimeoutMs });
      // The launcher keeps no channel end: each belongs to the two compartments only.
      for (const s of handed) s.destroy();
      const gateway = await started;
      return { spawned: gateway.spawned, gateway };
    }
    const spawned = spawnProcess(spawnOptions);
    for (const s of handed) s.destroy();
    return { spawned };
  };

  const startOnce = async (): Promise<Running> => {
    const processes = new Map<string, SpawnedProcess>();
    /** Parent ends of pairs whose first side started, waiting for the second side. */
    const waiting = new Map<string, Socket>();
    let gateway: (SpawnedGateway & { spawned: SpawnedProcess }) | undefined;
    try {
      for (const c of m.compartments) {
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
        const started = await startCompartment(c, fds, handed);
        const spawned = started.spawned;
        if (started.gateway) gateway = started.gateway;
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
      await stopAll(processes, outliving);
      throw e;
    }
  };

  /**
   * Restarts one compartment of `alone` while the others run: each of its channels is a new
   * connection to the other end's `reconnect` socket (made by us, as root: the directory is
   * its owner's alone), handed over like a socketpair end and not kept.
   */
  const restartAloneIn = async (current: Running, name: string): Promise<Running> => {
    const c = m.compartments.find((x) => x.name === name);
    if (!c) throw new LaunchError(`no compartment ${name}`);
    const ends = channelEnds(m, name);
    const fds: ('pipe' | 'ignore' | Socket)[] = Array.from(
      { length: Math.max(2, ...ends.map((e) => e.fd)) - 2 },
      () => 'ignore' as const,
    );
    const handed: Socket[] = [];
    try {
      for (const end of ends) {
        const ch = m.channels.find((x) => x.name === end.channel);
        if (ch?.kind !== 'socketpair' || ch.reconnect === undefined) {
          throw new LaunchError(`${end.channel} cannot be reconnected`);
        }
        const peer = current.processes.get(end.peer);
        const socket = await connectWhileRunning(
          expand(ch.reconnect, where),
          () => peer?.running() === true,
          readyTimeoutMs,
        );
        fds[end.fd - 3] = socket;
        handed.push(socket);
      }
      const started = await startCompartment(c, fds, handed);
      const processes = new Map(current.processes);
      processes.set(name, started.spawned);
      return { processes, gateway: started.gateway ?? current.gateway };
    } catch (e) {
      for (const s of handed) s.destroy();
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
      const exited = (
        await Promise.all(
          [...current.processes].map(async ([n, p]) =>
            p.running() ? undefined : ([n, await p.exited] as const),
          ),
        )
      ).filter((e): e is readonly [string, number | string] => e !== undefined);
      const [name, code] = exited.find((e) => e[1] !== 0) ?? first;
      const last = current.processes.get(name)?.lastLine() ?? '';
      const refusal = NO_RESTART.find((c) => last.includes(c));
      if (refusal) {
        // Restarting cannot fix these, and with a PIN each start would spend one of the
        // token's tries until it locks: stop and let the operator fix it.
        say(`${name} exited (${String(code)}) with ${refusal}; not restarting: ${last}`);
        await stopAll(current.processes, outliving);
        return;
      }
      // Only it died, and its peers wait for it to reconnect: they keep running.
      const only = exited.length === 1 && exited[0]?.[0] === name && alone.has(name);
      if (only) {
        say(`${name} exited (${String(code)}); restarting it alone, the others keep running`);
      } else {
        say(`${name} exited (${String(code)}); restarting the stack`);
        await stopAll(current.processes, outliving);
      }
      const now = Date.now();
      recent.push(now);
      while (recent.length > 0 && (recent[0] ?? now) < now - (options.windowMs ?? 120_000))
        recent.shift();
      if (recent.length > (options.maxRestarts ?? 5)) {
        say(
          `giving up: ${recent.length} restarts within ${Math.round((options.windowMs ?? 120_000) / 1000)} s`,
        );
        if (only) await stopAll(current.processes, outliving);
        return;
      }
      await sleep(Math.min(30_000, 500 * 2 ** (recent.length - 1)));
      if (stopping()) return;
      try {
        if (only) {
          try {
            running = await restartAloneIn(current, name);
          } catch (e) {
            say(
              `restarting ${name} alone failed (${e instanceof Error ? e.message : 'error'}); restarting the stack`,
            );
            await stopAll(current.processes, outliving);
            running = await startOnce();
          }
        } else {
          running = await startOnce();
        }
        restarts++;
        say(only ? `${name} restarted (${restarts})` : `stack restarted (${restarts})`);
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
      await stopAll(running.processes, outliving);
      resolveDone();
    },
  };
}

/**
 * The last started (the UI side) first, by signal; the others then see their channel close and
 * stop by themselves (the endpoint closes its store and its vault channel), SIGKILL after a
 * grace period. bwrap does not pass signals on, so a signal would kill a compartment at once.
 * A compartment in `outliving` does not stop when its caller's channel closes (it waits for
 * the caller to reconnect): it gets SIGTERM itself, at its innermost process (the node inside
 * the sandbox), so it still stops cleanly.
 */
async function stopAll(
  processes: Map<string, SpawnedProcess>,
  outliving: ReadonlySet<string> = new Set(),
): Promise<void> {
  const order = [...processes].reverse();
  const [first, ...rest] = order;
  if (first) await first[1].stop({ graceMs: 5_000 });
  for (const [name, p] of rest) {
    const pid = p.process.pid;
    if (outliving.has(name) && pid !== undefined && p.running()) {
      try {
        process.kill(innermostPid(pid), 'SIGTERM');
      } catch {
        // Gone already: the stop below only waits.
      }
    }
    await p.stop({ graceMs: 15_000, first: 'close' });
  }
}

/**
 * Connects to a compartment's reconnect socket, retrying while it is not there yet (it listens
 * once its start-up is done) and its process still runs.
 */
async function connectWhileRunning(
  path: string,
  running: () => boolean,
  timeoutMs: number,
): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await connectUnix(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const retry = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (!retry || !running() || Date.now() > deadline) {
        throw new LaunchError(
          `cannot connect to ${path} (${code ?? 'error'}${running() ? '' : ', its compartment is not running'})`,
        );
      }
    }
    await sleep(200);
  }
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
