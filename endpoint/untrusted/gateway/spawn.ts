import type { ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { runnableEntry } from '../../../keyvault/common/entries.ts';
import {
  type SpawnOptions,
  type SpawnedProcess,
  spawnProcess,
} from '../../../keyvault/common/spawn.ts';
import {
  type GatewayResponse,
  type GatewayTarget,
  type RequestOptions,
  gatewayRequest,
} from './client.ts';

const GATEWAY_MAIN = 'endpoint/untrusted/gateway/main.ts';

export interface SpawnedGateway {
  /** Where it listens (one of the two). */
  socketPath?: string;
  tcp?: { host: string; port: number };
  /** The web UI's address (`http://127.0.0.1:port`), when the config has a "ui" section. */
  uiUrl?: string;
  target: GatewayTarget;
  process: ChildProcess;
  exited: Promise<number | string>;
  /** One HTTP request to the gateway. */
  request(path: string, options?: RequestOptions): Promise<GatewayResponse>;
  /** SIGTERM, then SIGKILL after graceMs; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts the gateway process (which starts the endpoint and the vault), waits for its
 * "listening on" line and for GET /v1/openapi.json to answer there. For tests and the demo.
 */
export async function spawnGateway(
  configPath: string,
  options: {
    env?: NodeJS.ProcessEnv;
    readyTimeoutMs?: number;
    onStderr?: (line: string) => void;
  } = {},
): Promise<SpawnedGateway> {
  return startGatewayProcess(
    {
      argv: [runnableEntry(GATEWAY_MAIN), 'serve', '--config', configPath],
      ...(options.env ? { env: options.env } : {}),
    },
    options,
  );
}

/**
 * Starts a gateway process as `spawn` says (the launcher passes its sandbox wrapper and the
 * endpoint's channel), and waits until it serves.
 */
export async function startGatewayProcess(
  spawn: SpawnOptions,
  options: { readyTimeoutMs?: number; onStderr?: (line: string) => void } = {},
): Promise<SpawnedGateway & { spawned: SpawnedProcess }> {
  let resolveAddress: (address: string) => void = () => undefined;
  const address = new Promise<string>((resolve) => (resolveAddress = resolve));
  let uiUrl: string | undefined;
  const spawned = spawnProcess({
    ...spawn,
    onStderr: (line) => {
      (options.onStderr ?? spawn.onStderr)?.(line);
      const ui = /^gateway: web UI on (http:\/\/\S+?)\/?$/.exec(line);
      if (ui?.[1] !== undefined) uiUrl = ui[1];
      const m = /^gateway: listening on (.+)$/.exec(line);
      if (m?.[1] !== undefined) resolveAddress(m[1]);
    },
  });
  const stop = (graceMs = 15_000): Promise<void> => spawned.stop({ graceMs });
  const deadline = sleep(options.readyTimeoutMs ?? 180_000).then(() => 'timeout' as const);
  const first = await Promise.race([
    address,
    spawned.exited.then(() => 'exited' as const),
    deadline,
  ]);
  if (first === 'exited') {
    throw new Error(
      `the gateway exited before it was ready: ${spawned.lastLine() || 'no message'}`,
    );
  }
  if (first === 'timeout') {
    await stop(0);
    throw new Error('the gateway did not start in time');
  }
  const tcpMatch = /^http:\/\/\[?([^\]]+?)\]?:([0-9]+)$/.exec(first);
  const target: GatewayTarget = tcpMatch
    ? { host: tcpMatch[1] ?? '127.0.0.1', port: Number(tcpMatch[2]) }
    : { socketPath: first };
  const request = (path: string, opts?: RequestOptions) => gatewayRequest(target, path, opts);
  try {
    const res = await request('/v1/openapi.json');
    if (res.status !== 200) throw new Error(`GET /v1/openapi.json answered ${res.status}`);
  } catch (e) {
    await stop(0);
    throw e;
  }
  return {
    ...('socketPath' in target ? { socketPath: target.socketPath } : { tcp: target }),
    ...(uiUrl === undefined ? {} : { uiUrl }),
    target,
    process: spawned.process,
    exited: spawned.exited,
    request,
    stop,
    spawned,
  };
}
