import { type ChildProcess, spawn } from 'node:child_process';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type RpcClient, createClient, socketChannel } from '../keyvault/rpc/index.ts';
import { type EndpointContract, endpointContract } from './contract.ts';

const MAIN = join(import.meta.dirname, 'main.ts');

export interface SpawnedEndpoint {
  client: RpcClient<EndpointContract>;
  process: ChildProcess;
  exited: Promise<number | string>;
  /** Closes the channel and waits for a clean exit (SIGKILL after graceMs). */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts the endpoint compartment with a socketpair on its fd 3 and waits until it answers
 * (its vault launched, its store opened, its device logged in). For launchers and tests.
 */
export async function spawnEndpoint(
  configPath: string,
  options: {
    env?: NodeJS.ProcessEnv;
    readyTimeoutMs?: number;
    onStderr?: (line: string) => void;
  } = {},
): Promise<SpawnedEndpoint> {
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', configPath], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: options.env ?? process.env,
  });
  let lastLine = '';
  let partial = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    // Whole lines only: a message split across chunks must reach the listener in one piece.
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      lastLine = line;
      options.onStderr?.(line);
    }
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      resolve(code ?? signal ?? 'unknown');
    });
  });
  const fd3 = child.stdio[3];
  if (!(fd3 instanceof Socket)) {
    child.kill('SIGKILL');
    throw new Error('spawnEndpoint: the child has no socket on fd 3');
  }
  const client = createClient(socketChannel(fd3), endpointContract, { timeoutMs: 60_000 });
  const stop = async (graceMs = 10_000): Promise<void> => {
    client.close();
    if (child.exitCode !== null || child.signalCode !== null) return;
    const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  };
  // The first answer comes once startup is complete (requests wait on the socket until then).
  const ready = client.call('ready', {}, { timeoutMs: options.readyTimeoutMs ?? 120_000 });
  let outcome: 'ready' | 'exited';
  try {
    outcome = await Promise.race([
      ready.then(() => 'ready' as const),
      exited.then(() => 'exited' as const),
    ]);
  } catch (e) {
    await stop(0); // never leave a half-started endpoint (and its vault) behind
    throw e;
  }
  if (outcome === 'exited') {
    await stop(0);
    throw new Error(`the endpoint exited before it was ready: ${lastLine || 'no message'}`);
  }
  return { client, process: child, exited, stop };
}
