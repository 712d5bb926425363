import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * How every compartment is started, by its parent or by the launcher: one child process with
 * the channels on fds 3 and up, stderr read as whole lines (a line split across chunks reaches
 * the listener in one piece, so a prefix or a match never sees half a message), the last line
 * kept so a failed start can say why, and a stop that escalates to SIGKILL.
 *
 * No inspector, ever: any process of the same user can send SIGUSR1, and Node answers it by
 * opening the inspector, through which anything can be run next to the keys. So Node runs with
 * --disable-sigusr1, and NODE_OPTIONS (which may carry --inspect or --require) is never
 * passed on, whatever environment the caller gives.
 */
export interface SpawnOptions {
  /** The program and its arguments; by default `node <entry> ...args`. */
  command?: string;
  argv: readonly string[];
  env?: NodeJS.ProcessEnv;
  /**
   * What the child gets on fds 3, 4, ...: `'pipe'` makes a socketpair whose other end is
   * returned in `channels`; a Socket or fd number is passed through as it is (the launcher
   * hands one end of a socketpair made for two other compartments this way).
   */
  fds?: readonly ('pipe' | 'ignore' | Socket | number)[];
  /** Whole stderr lines. Without it, lines pass through to our stderr. */
  onStderr?: (line: string) => void;
  /** Where the child's stdout goes (default: nowhere). */
  stdout?: 'ignore' | 'inherit';
  uid?: number;
  gid?: number;
  cwd?: string;
}

export interface SpawnedProcess {
  process: ChildProcess;
  /** The parent's ends of the `'pipe'` fds, in order (undefined where a Socket was passed). */
  channels: (Socket | undefined)[];
  /** Resolves with the exit code, or the signal's name. */
  exited: Promise<number | string>;
  /** The last stderr line, for "exited before it was ready: ..." messages. */
  lastLine(): string;
  running(): boolean;
  /**
   * Stops it: `first` (default SIGTERM; 'close' only closes our channel ends, for children
   * that exit when their channel closes), then SIGKILL after graceMs. Resolves once it exited.
   */
  stop(options?: { graceMs?: number; first?: NodeJS.Signals | 'close' }): Promise<void>;
}

/** Node's flags for every compartment (the launcher's sandbox adds its own after these). */
export const NODE_HARDENING_FLAGS: readonly string[] = ['--disable-sigusr1'];

/** Environment variables no compartment inherits: each could turn the inspector back on. */
const NEVER_INHERITED: ReadonlySet<string> = new Set(['NODE_OPTIONS']);

/** `env` without what could re-enable an inspector or preload code in a compartment. */
export function compartmentEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([name]) => !NEVER_INHERITED.has(name)));
}

export function spawnProcess(options: SpawnOptions): SpawnedProcess {
  const fds = options.fds ?? [];
  const stdio: StdioOptions = ['ignore', options.stdout ?? 'ignore', 'pipe', ...fds];
  // With another command (the launcher's sandbox wrapper), the Node flags are in its argv.
  const argv =
    options.command === undefined ? [...NODE_HARDENING_FLAGS, ...options.argv] : [...options.argv];
  const child = spawn(options.command ?? process.execPath, argv, {
    stdio,
    env: compartmentEnv(options.env ?? process.env),
    ...(options.uid !== undefined ? { uid: options.uid } : {}),
    ...(options.gid !== undefined ? { gid: options.gid } : {}),
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      resolve(code ?? signal ?? 'unknown');
    });
    child.once('error', () => {
      resolve('spawn-error');
    });
  });
  let last = '';
  let partial = '';
  const emit = (line: string): void => {
    if (line === '') return;
    last = line;
    if (options.onStderr) options.onStderr(line);
    else process.stderr.write(`${line}\n`);
  };
  child.stderr?.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) emit(line);
  });
  child.stderr?.on('end', () => {
    emit(partial);
    partial = '';
  });
  const channels = fds.map((fd, i) => {
    if (fd !== 'pipe') return undefined;
    const end = child.stdio[3 + i];
    if (!(end instanceof Socket)) {
      child.kill('SIGKILL');
      throw new Error(`spawn: the child has no socket on fd ${3 + i}`);
    }
    return end;
  });
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const stop: SpawnedProcess['stop'] = async ({ graceMs = 10_000, first = 'SIGTERM' } = {}) => {
    if (first === 'close') for (const end of channels) end?.destroy();
    if (!running()) {
      await exited;
      return;
    }
    if (first !== 'close') child.kill(first);
    const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  };
  return { process: child, channels, exited, lastLine: () => last, running, stop };
}

export class InspectorError extends Error {
  override name = 'InspectorError';
  readonly code = 'INSPECTOR_REFUSED';
}

/**
 * For a compartment's own start (its serve command): refuses to run with an inspector flag in
 * its argv or its NODE_OPTIONS (it would be open already), and ignores SIGUSR1 even when
 * started by hand without --disable-sigusr1 (a listener of our own keeps Node from opening the
 * inspector on it). The compartments it starts get the flag and no NODE_OPTIONS (spawnProcess).
 */
export function refuseInspector(): void {
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].filter(
    (a) => /^--(inspect|debug)/.test(a),
  );
  if (flags.length > 0) {
    throw new InspectorError(
      `refusing to run with the inspector enabled (${flags.map((f) => f.split('=')[0]).join(', ')}): it would let any process of this user run code here`,
    );
  }
  delete process.env.NODE_OPTIONS;
  process.on('SIGUSR1', () => undefined);
}

/**
 * Calls `onGone` once when the process that started us exits (we are reparented). A child
 * whose channel is a listening socket does not notice its parent's death through the channel,
 * and must not outlive it holding its store. Polled, so up to `intervalMs` late. Returns a
 * function that stops watching.
 */
export function onParentExit(onGone: () => void, intervalMs = 1000): () => void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) {
      clearInterval(timer);
      onGone();
    }
  }, intervalMs);
  timer.unref();
  return () => {
    clearInterval(timer);
  };
}
