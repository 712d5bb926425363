import { type ChildProcess, spawn } from 'node:child_process';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type RemoteVault, vaultClient } from './client.ts';
import { type ClientOptions, RpcCode, RpcError, socketChannel } from './rpc/index.ts';

const MAIN = join(import.meta.dirname, 'main.ts');

export interface SpawnedVault {
  /** The vault in the child process, used like a local one. */
  vault: RemoteVault;
  process: ChildProcess;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
  /** Closes the channel (the vault then exits by itself); SIGKILL if it lingers. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts the vault compartment (`node keyvault/main.ts serve --config F`) with a socketpair on
 * its fd 3, and connects to it. Its stderr is passed through to ours, and its last line kept
 * so a failed start reports why. For launchers and tests; deploy/ adds the sandboxing.
 */
export async function spawnVault(
  configPath: string,
  options: { env?: NodeJS.ProcessEnv; client?: ClientOptions } = {},
): Promise<SpawnedVault> {
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', configPath], {
    stdio: ['ignore', 'inherit', 'pipe', 'pipe'],
    env: options.env ?? process.env,
  });
  let lastLine = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    process.stderr.write(chunk);
    const lines = chunk.toString('utf8').trim().split('\n');
    lastLine = lines[lines.length - 1] ?? lastLine;
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      resolve(code ?? signal ?? 'unknown');
    });
    child.once('error', () => {
      resolve('spawn-error');
    });
  });
  const fd3 = child.stdio[3];
  if (!(fd3 instanceof Socket)) {
    child.kill('SIGKILL');
    throw new Error('spawnVault: the child has no socket on fd 3');
  }
  const stop = async (graceMs = 5000): Promise<void> => {
    fd3.destroy();
    if (child.exitCode !== null || child.signalCode !== null) return;
    const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  };

  try {
    const vault = await vaultClient(socketChannel(fd3), options.client);
    return { vault, process: child, exited, stop };
  } catch (e) {
    await stop(1000);
    if (e instanceof RpcError && e.code === RpcCode.Disconnected) {
      const why = lastLine ? `: ${lastLine}` : '';
      throw new RpcError(
        RpcCode.Disconnected,
        `the vault process exited (${String(await exited)}) before answering${why}`,
      );
    }
    throw e;
  }
}
