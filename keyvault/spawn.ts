import type { ChildProcess } from 'node:child_process';
import { type RemoteVault, vaultClient } from './client.ts';
import { type ClientOptions, RpcCode, RpcError, socketChannel } from './common/rpc/index.ts';
import { spawnProcess } from './common/spawn.ts';
import { runnableEntry } from './common/entries.ts';

const MAIN = 'keyvault/main.ts';

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
 * its fd 3, and connects to it. A vault that cannot open answers the first call with its
 * VaultError (VAULT_WRONG_PIN, VAULT_PIN_LOCKED, VAULT_TOKEN_NOT_FOUND, VAULT_CONFIG, ...), and
 * that error is what this rejects with; a vault that dies before answering is reported as
 * DISCONNECTED with its exit code and its last stderr line. Its stderr lines pass through to
 * ours. For the endpoint when it runs unlaunched, and tests; the launcher (deploy/launch.ts)
 * starts it sandboxed instead.
 */
export async function spawnVault(
  configPath: string,
  options: { env?: NodeJS.ProcessEnv; client?: ClientOptions } = {},
): Promise<SpawnedVault> {
  const child = spawnProcess({
    argv: [runnableEntry(MAIN), 'serve', '--config', configPath],
    fds: ['pipe'],
    stdout: 'inherit',
    ...(options.env ? { env: options.env } : {}),
  });
  const [fd3] = child.channels;
  if (!fd3) throw new Error('spawnVault: no channel');
  const stop = (graceMs = 5000): Promise<void> => child.stop({ graceMs, first: 'close' });
  try {
    const vault = await vaultClient(socketChannel(fd3), options.client);
    return { vault, process: child.process, exited: child.exited, stop };
  } catch (e) {
    await stop(1000);
    if (e instanceof RpcError && e.code === RpcCode.Disconnected) {
      const last = child.lastLine();
      throw new RpcError(
        RpcCode.Disconnected,
        `the vault process exited (${String(await child.exited)}) before answering${last ? `: ${last}` : ''}`,
      );
    }
    throw e;
  }
}
