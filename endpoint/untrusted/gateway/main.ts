/**
 * The gateway command: `node endpoint/untrusted/gateway/main.ts serve --config FILE`. Starts the
 * endpoint compartment (which starts the vault), then serves the local API for UIs on a Unix
 * socket (or loopback TCP). Stops both on SIGTERM/SIGINT; exits 1 if the endpoint dies.
 *
 * Output: one line `gateway: listening on <address>` on stderr when ready; errors are one line
 * `gateway: <message>`. The endpoint's own stderr lines pass through. Requests are never logged.
 */
import { UsageError, parseCommandLine, runMain } from '../../../keyvault/common/cli-main.ts';
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { type RpcClient, createClient, socketChannel } from '../../../keyvault/common/rpc/index.ts';
import { refuseInspector } from '../../../keyvault/common/spawn.ts';
import { type EndpointContract, endpointContract } from '../../contract.ts';
import { spawnEndpoint, waitReady } from '../../spawn.ts';
import { buildGateway } from './app.ts';
import { allowedHosts, loadStaticFiles, refusalReporter } from './browser/index.ts';
import { type UiConfig, loadGatewayConfig } from './config.ts';
import { type EndpointCalls, endpointCalls } from './forward.ts';
import { type Limits, resolveLimits } from './limits.ts';
import type { StaticFile } from './browser/index.ts';
import type { FastifyInstance } from 'fastify';
import { checkListenConfig, listenGateway } from './listen.ts';

const HELP = `Usage: node endpoint/untrusted/gateway/main.ts serve --config FILE [--endpoint-fd N]

The gateway: the only process untrusted UIs talk to. It starts the endpoint compartment
(from the config's "endpointConfig"), then serves the local HTTP API (see
endpoint/untrusted/gateway/README.md and GET /v1/openapi.json) on a Unix socket (mode 0600, or 0660
for "socketGroup") or, when configured, on loopback TCP. With a "ui" section it also serves
the web UI (endpoint/untrusted/web) on loopback HTTP, behind browser defences (Host, Origin,
Fetch Metadata, a strict Content-Security-Policy). It holds no secret: every request's
bearer token goes to the endpoint, which decides.

Options:
  --config FILE     the gateway config (JSON; see endpoint/untrusted/gateway/config.ts)
  --endpoint-fd N   use the endpoint channel the launcher (deploy/launch.ts) passed on fd N
                    instead of starting the endpoint ("endpointConfig" is then not used)
  -h, --help        this help

Exit status: 0 stopped by SIGTERM/SIGINT, 1 failure (or the endpoint exited), 2 usage error.
`;

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, {
    config: { type: 'string' },
    'endpoint-fd': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  });
  const [command, ...extra] = positionals;
  if (values.help || command === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  if (command === undefined) throw new UsageError('no command given (try --help)');
  if (command !== 'serve') {
    const shown = /^[a-z][a-z-]{0,19}$/.test(command) ? ` "${command}"` : '';
    throw new UsageError(`unknown command${shown} (commands: serve)`);
  }
  if (extra.length > 0) throw new UsageError('serve: unexpected extra arguments');
  if (values.config === undefined) throw new UsageError('serve: --config FILE is required');
  const fdText = values['endpoint-fd'];
  const fd = fdText === undefined ? undefined : Number(fdText);
  if (fd !== undefined && !(Number.isInteger(fd) && fd >= 3 && isSocketFd(fd))) {
    throw new UsageError(
      `serve: --endpoint-fd ${fdText ?? ''} is not a socket passed by the launcher`,
    );
  }
  return serve(values.config, fd);
}

function isSocketFd(fd: number): boolean {
  try {
    return fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

/** The endpoint's channel as the launcher passed it: no child of ours, it ends when the channel does. */
async function launchedEndpoint(fd: number): Promise<Endpoint> {
  const socket = new Socket({ fd, readable: true, writable: true });
  const exited = new Promise<string>((resolve) =>
    socket.once('close', () => {
      resolve('channel closed');
    }),
  );
  const client = createClient(socketChannel(socket), endpointContract, { timeoutMs: 60_000 });
  const stop = (): Promise<void> => {
    client.close();
    socket.destroy();
    return Promise.resolve();
  };
  await waitReady(client, exited, stop, () => '');
  return { client, exited, stop };
}

interface Endpoint {
  client: RpcClient<EndpointContract>;
  exited: Promise<number | string>;
  stop(): Promise<void>;
}

async function serve(configPath: string, endpointFd?: number): Promise<number> {
  refuseInspector();
  const config = await loadGatewayConfig(configPath);
  // Fail before starting the endpoint (and its vault) when we could never listen.
  await checkListenConfig(config.listen);
  const uiFiles = config.ui && (await loadStaticFiles(config.ui.dir));
  let stopSignal: (() => void) | undefined;
  const signalled = new Promise<void>((resolve) => (stopSignal = resolve));
  const onSignal = () => {
    stopSignal?.();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);

  const endpoint: Endpoint =
    endpointFd === undefined
      ? await spawnEndpoint(config.endpointConfig, {
          onStderr: (line) => process.stderr.write(`${line}\n`),
        })
      : await launchedEndpoint(endpointFd);
  const calls = endpointCalls(endpoint.client, resolveLimits(config.limits));
  const app = buildGateway({ endpoint: endpoint.client, limits: config.limits, calls });
  let ui: FastifyInstance | undefined;
  try {
    const listening = await listenGateway(app, config.listen);
    // The UI's line first: "listening on" is the ready line, and then everything serves.
    if (config.ui && uiFiles) {
      ui = await listenUi(config.ui, uiFiles, endpoint.client, calls, config.limits);
    }
    process.stderr.write(`gateway: listening on ${listening.address}\n`);
    const outcome = await Promise.race([
      signalled.then(() => 'signal' as const),
      endpoint.exited.then((code) => code),
    ]);
    if (outcome !== 'signal') {
      throw new Error(`the endpoint exited (${String(outcome)}); stopping`);
    }
    return 0;
  } finally {
    await ui?.close().catch(() => undefined);
    await app.close().catch(() => undefined);
    await endpoint.stop();
  }
}

/**
 * The web UI's listener: the same routes and calls (one set of per-token slots), behind the
 * browser defences, plus the UI's files. The allowed Host values need the port, which is
 * known only once listening (port 0 picks one); nothing is answered before that.
 */
async function listenUi(
  config: UiConfig,
  files: Map<string, StaticFile>,
  endpoint: RpcClient<EndpointContract>,
  calls: EndpointCalls,
  limits: Partial<Limits>,
): Promise<FastifyInstance> {
  const hosts = new Set<string>();
  const report = refusalReporter((reason, count) =>
    endpoint.call('gatewayRefusal', { reason, count }),
  );
  const app = buildGateway({
    endpoint,
    limits,
    calls,
    browser: { origins: { hosts }, files, report },
  });
  const listening = await listenGateway(app, { tcp: { host: config.host, port: config.port } });
  for (const h of allowedHosts(config.host, listening.tcp?.port ?? config.port, config.names)) {
    hosts.add(h);
  }
  process.stderr.write(`gateway: web UI on ${listening.address}/\n`);
  return app;
}

runMain('gateway', run);
