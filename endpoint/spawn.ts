import type { ChildProcess } from 'node:child_process';
import {
  type ClientOptions,
  type RpcClient,
  connectUnix,
  createClient,
  socketChannel,
} from '../keyvault/common/rpc/index.ts';
import { spawnProcess } from '../keyvault/common/spawn.ts';
import { runnableEntry } from '../keyvault/common/entries.ts';
import { type EndpointContract, endpointContract } from './contract.ts';

const MAIN = 'endpoint/main.ts';

export interface SpawnedEndpoint {
  client: RpcClient<EndpointContract>;
  process: ChildProcess;
  exited: Promise<number | string>;
  /**
   * Stops it cleanly and waits (SIGKILL after graceMs): closes the channel, which ends it; with
   * `gatewaySocket`, which it outlives, by SIGTERM.
   */
  stop(graceMs?: number): Promise<void>;
  /**
   * With `gatewaySocket`: a new channel to the same endpoint, as a restarted gateway gets. It
   * takes the place of the current one (that one closes).
   */
  connect(options?: ClientOptions): Promise<RpcClient<EndpointContract>>;
}

/**
 * Starts the endpoint compartment with a socketpair on its fd 3 and waits until it answers
 * (its vault launched, its store opened, its device logged in). For the gateway when it runs
 * unlaunched, and tests; the launcher (deploy/launch.ts) starts it sandboxed instead.
 */
export async function spawnEndpoint(
  configPath: string,
  options: {
    env?: NodeJS.ProcessEnv;
    readyTimeoutMs?: number;
    onStderr?: (line: string) => void;
    /**
     * Where the endpoint accepts a restarted gateway (`--gateway-socket`): absolute, in a
     * directory of mode 0700. Without it, the endpoint stops when its channel closes.
     */
    gatewaySocket?: string;
    /** `--replace-identity` (recovery onto new hardware; see endpoint/main.ts). */
    replaceIdentity?: boolean;
  } = {},
): Promise<SpawnedEndpoint> {
  const { gatewaySocket } = options;
  const child = spawnProcess({
    argv: [
      runnableEntry(MAIN),
      'serve',
      '--config',
      configPath,
      ...(gatewaySocket === undefined ? [] : ['--gateway-socket', gatewaySocket]),
      ...(options.replaceIdentity === true ? ['--replace-identity'] : []),
    ],
    fds: ['pipe'],
    onStderr: options.onStderr ?? (() => undefined),
    ...(options.env ? { env: options.env } : {}),
  });
  const [fd3] = child.channels;
  if (!fd3) throw new Error('spawnEndpoint: no channel');
  const client = createClient(socketChannel(fd3), endpointContract, { timeoutMs: 60_000 });
  const stop = (graceMs = 10_000): Promise<void> => {
    client.close();
    return child.stop({ graceMs, first: gatewaySocket === undefined ? 'close' : 'SIGTERM' });
  };
  const connect = async (
    clientOptions: ClientOptions = {},
  ): Promise<RpcClient<EndpointContract>> => {
    if (gatewaySocket === undefined) {
      throw new Error('spawnEndpoint: connect() needs the gatewaySocket option');
    }
    const socket = await connectUnix(gatewaySocket);
    return createClient(socketChannel(socket), endpointContract, {
      timeoutMs: 60_000,
      ...clientOptions,
    });
  };
  await waitReady(client, child.exited, stop, () => child.lastLine(), options.readyTimeoutMs);
  return { client, process: child.process, exited: child.exited, stop, connect };
}

/**
 * The endpoint's first answer comes once its start-up is complete (requests wait on the
 * socket until then). Never leaves a half-started endpoint (and its vault) behind.
 */
export async function waitReady(
  client: RpcClient<EndpointContract>,
  exited: Promise<number | string>,
  stop: (graceMs?: number) => Promise<void>,
  lastLine: () => string,
  timeoutMs = 120_000,
): Promise<void> {
  const ready = client.call('ready', {}, { timeoutMs });
  let outcome: 'ready' | 'exited';
  try {
    outcome = await Promise.race([
      ready.then(() => 'ready' as const),
      exited.then(() => 'exited' as const),
    ]);
  } catch (e) {
    await stop(0);
    throw e;
  }
  if (outcome === 'exited') {
    await stop(0);
    throw new Error(`the endpoint exited before it was ready: ${lastLine() || 'no message'}`);
  }
}
