/**
 * Gateway benchmark (issue 5): request rate and latency of a cheap route (status) and of the
 * timeline route (20 messages, fetched from Synapse and decrypted), on three paths in one run,
 * against the same endpoint data, policy and audit log:
 *
 *   gateway     HTTP/1.1 over the gateway's Unix socket (the gateway process, which runs the
 *               endpoint and vault processes);
 *   rpc         the endpoint compartment's RPC directly (spawnEndpoint's client over its
 *               socketpair): no gateway, but still cross-process;
 *   in-process  apiHandlers called directly on an in-process EndpointService, with the same
 *               policy and the real audit log (AuditLog, fdatasync per group of appends); and,
 *               for reference, the same with an audit sink that writes nothing.
 *
 * For each: sequential latency (p50/p99, one request at a time) and throughput with
 * --concurrency requests in flight for a fixed time. The ratios are gateway / in-process and
 * gateway / rpc. Progress goes to stderr, the table (or, with --json, the rows) to stdout.
 *
 *   node test/bench/gateway.ts [--quick] [--concurrency N] [--json]
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type Handlers, isRpcError } from '../../keyvault/common/rpc/index.ts';
import { spawnVault } from '../../keyvault/spawn.ts';
import { EventHub, apiHandlers } from '../../endpoint/api/index.ts';
import { loadEndpointConfig } from '../../endpoint/config.ts';
import type { EndpointContract } from '../../endpoint/contract.ts';
import { spawnGateway } from '../../endpoint/untrusted/gateway/index.ts';
import { EndpointService } from '../../endpoint/service.ts';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import { AuditLog, Authorizer, PolicyHolder, roomTrust } from '../../policy/index.ts';
import {
  type Swtpm,
  type Synapse,
  StockPeer,
  makeTempDir,
  prepareCompartments,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    concurrency: { type: 'string' },
    json: { type: 'boolean' },
  },
});
const QUICK = args.quick === true;
const CONCURRENCY = Number(args.concurrency ?? 16);
if (!Number.isInteger(CONCURRENCY) || CONCURRENCY < 1 || CONCURRENCY > 64) {
  process.stderr.write('bench: --concurrency must be an integer from 1 to 64\n');
  process.exit(2);
}
/** Sequential samples per operation and path. */
const SEQUENTIAL = { status: QUICK ? 100 : 1000, timeline: QUICK ? 20 : 100 };
/** How long each throughput run lasts. */
const THROUGHPUT_MS = QUICK ? 2000 : 8000;
const HISTORY = 25;
const PAGE = 20;

// matrix-js-sdk logs debug lines through console.log; stdout is for the table.
for (const method of ['log', 'info', 'debug', 'trace'] as const) {
  console[method] = () => undefined;
}

const started = performance.now();
function progress(message: string): void {
  const s = ((performance.now() - started) / 1000).toFixed(1).padStart(5);
  process.stderr.write(`[${s}s] ${message}\n`);
}

function quantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
}

/** One request; resolves when it answered well, rejects (with a short reason) otherwise. */
type Op = (worker: number) => Promise<void>;
type Path = 'gateway' | 'rpc' | 'in-process' | 'in-process, no audit';
type Operation = 'status' | 'timeline';

interface Row {
  operation: Operation;
  path: Path;
  /** One request at a time. */
  seqP50Ms: number;
  seqP99Ms: number;
  /** CONCURRENCY requests in flight for THROUGHPUT_MS. */
  requestsPerSecond: number;
  loadedP50Ms: number;
  loadedP99Ms: number;
  errors: Record<string, number>;
  /** gateway / in-process (with audit) and gateway / rpc: of seq p50, and of the rate. */
  p50VsInProcess?: number;
  p50VsRpc?: number;
  rateVsInProcess?: number;
  rateVsRpc?: number;
}
const rows: Row[] = [];

function reason(e: unknown): string {
  if (isRpcError(e)) return e.code;
  return e instanceof Error ? e.message.slice(0, 60) : String(e);
}

async function measure(operation: Operation, path: Path, op: Op): Promise<void> {
  const errors: Record<string, number> = {};
  const fail = (e: unknown) => {
    const r = reason(e);
    errors[r] = (errors[r] ?? 0) + 1;
  };
  for (let i = 0; i < 5; i++) await op(0).catch(fail); // warm-up
  const seq: number[] = [];
  for (let i = 0; i < SEQUENTIAL[operation]; i++) {
    const t = performance.now();
    try {
      await op(0);
      seq.push(performance.now() - t);
    } catch (e) {
      fail(e);
    }
  }
  const loaded: number[] = [];
  const t0 = performance.now();
  const end = t0 + THROUGHPUT_MS;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, worker) => {
      while (performance.now() < end) {
        const t = performance.now();
        try {
          await op(worker);
          loaded.push(performance.now() - t);
        } catch (e) {
          fail(e);
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const row: Row = {
    operation,
    path,
    seqP50Ms: quantile(seq, 0.5),
    seqP99Ms: quantile(seq, 0.99),
    requestsPerSecond: loaded.length / seconds,
    loadedP50Ms: quantile(loaded, 0.5),
    loadedP99Ms: quantile(loaded, 0.99),
    errors,
  };
  rows.push(row);
  const errs = Object.keys(errors).length ? ` errors ${JSON.stringify(errors)}` : '';
  progress(
    `  ${operation} via ${path}: p50 ${row.seqP50Ms.toFixed(2)} ms, ${row.requestsPerSecond.toFixed(0)}/s at ${CONCURRENCY} in flight${errs}`,
  );
}

/** The same two operations for each path. */
async function measureBoth(path: Path, status: Op, timeline: Op): Promise<void> {
  await measure('status', path, status);
  await measure('timeline', path, timeline);
}

const workerNames = Array.from({ length: CONCURRENCY }, (_, i) => `w${i}`);

async function main(): Promise<void> {
  const stops: (() => Promise<unknown>)[] = [];
  try {
    progress('starting Synapse and swtpm');
    const [hs, tpm]: [Synapse, Swtpm] = await Promise.all([startSynapse(), startSwtpm()]);
    stops.push(
      () => hs.stop(),
      () => tpm.stop(),
    );
    const dir = await makeTempDir('bench-gateway');
    const alice = await hs.registerUser('alice');
    const bobUser = await hs.registerUser('bob');
    // One client per worker: each has its own rate bucket (60,000 a minute), so no run
    // reaches a limit and the numbers are the paths', not the rate limiter's.
    const prepared = await prepareCompartments(dir, {
      homeserver: hs.baseUrl,
      tpm,
      user: alice,
      clients: workerNames.map((name) => ({
        name,
        capabilities: ['rooms.read', 'messages.read', 'rooms.create'],
        requestsPerMinute: 60_000,
      })),
    });
    const token = (worker: number): string => prepared.tokens[`w${worker}`] ?? '';
    const auth = (worker: number) => ({ auth: { token: token(worker) } });

    // --- in-process: the endpoint compartment's own wiring (endpoint/main.ts), no RPC ------
    progress('in-process: starting the endpoint service, its vault, policy and audit log');
    const config = await loadEndpointConfig(prepared.endpointConfig);
    const policy = await PolicyHolder.open(config.policy);
    const audit = await AuditLog.open(config.auditLog);
    const vault = await spawnVault(config.vaultConfig);
    const service = await EndpointService.start({
      vault: vault.vault,
      dataDir: config.dataDir,
      homeserver: config.homeserver,
      user: config.user,
      password: alice.password,
      trustFor: (roomId) => roomTrust(policy.current, roomId).trust,
      logger: { warn: (m) => process.stderr.write(`endpoint: ${m}\n`), info: () => undefined },
    });
    const hub = new EventHub();
    const offChanges = service.endpoint.onChange(() => undefined);
    const handlersWith = (sink: { append(r: unknown): Promise<unknown> }) =>
      apiHandlers({
        endpoint: service.endpoint,
        outbox: service.outbox,
        authorizer: new Authorizer(policy),
        audit: sink,
        policy: () => policy.current,
        hub,
      });
    const handlers: Handlers<EndpointContract> = handlersWith(audit);
    const ctx = { method: 'bench', signal: new AbortController().signal };

    progress(`a room with ${HISTORY} messages from a stock peer`);
    const { roomId } = await handlers.createRoom({ ...auth(0), invite: [bobUser.userId] }, ctx);
    const bob = await StockPeer.start(hs.baseUrl, bobUser);
    // The default room rule hides messages from devices their owner did not cross-sign.
    await bob.bootstrapCrossSigning(bobUser.password);
    await bob.acceptInvite(roomId);
    await bob.waitForMember(roomId, alice.userId);
    for (let i = 0; i < HISTORY; i++) await bob.sendText(roomId, `history ${i}`);
    let seen = '';
    await waitUntil(
      () => `the history to become readable (last seen: ${seen})`,
      async () => {
        const page = await handlers.timeline({ ...auth(0), roomId, limit: PAGE }, ctx);
        seen = JSON.stringify(page.items.slice(0, 2));
        return page.items.filter((i) => i.decrypted).length >= PAGE;
      },
      { timeoutMs: 60_000, intervalMs: 250, failOnError: true },
    );
    await bob.stop(); // it would only sync idly in this process from now on

    const inProcess = (h: Handlers<EndpointContract>): [Op, Op] => [
      async (w) => {
        await h.status(auth(w), ctx);
      },
      async (w) => {
        const page = await h.timeline({ ...auth(w), roomId, limit: PAGE }, ctx);
        if (page.items.length !== PAGE) throw new Error(`${page.items.length} items`);
      },
    ];
    progress('in-process (real audit log)');
    await measureBoth('in-process', ...inProcess(handlers));
    progress('in-process (audit sink that writes nothing, for reference)');
    await measureBoth(
      'in-process, no audit',
      ...inProcess(handlersWith({ append: () => Promise.resolve() })),
    );
    offChanges();
    await service.stop();
    await vault.stop();
    await audit.close();

    // --- rpc: the endpoint compartment, called over its socketpair -----------------------
    progress('rpc: starting the endpoint compartment');
    const endpoint = await spawnEndpoint(prepared.endpointConfig, {
      onStderr: (l) => process.stderr.write(`${l}\n`),
    });
    try {
      const c = endpoint.client;
      await measureBoth(
        'rpc',
        async (w) => {
          await c.call('status', auth(w));
        },
        async (w) => {
          const page = await c.call('timeline', { ...auth(w), roomId, limit: PAGE });
          if (page.items.length !== PAGE) throw new Error(`${page.items.length} items`);
        },
      );
    } finally {
      await endpoint.stop();
    }

    // --- gateway: HTTP over its Unix socket ----------------------------------------------
    progress('gateway: starting the gateway (and its endpoint and vault)');
    const gwConfig = join(dir, 'gateway.json');
    await writeFile(
      gwConfig,
      JSON.stringify({ socket: 'gw.sock', endpointConfig: 'endpoint.json' }),
    );
    const gateway = await spawnGateway(gwConfig, {
      onStderr: (l) => {
        if (!/listening on/.test(l)) process.stderr.write(`${l}\n`);
      },
    });
    try {
      const timelinePath = `/v1/rooms/${encodeURIComponent(roomId)}/timeline?limit=${PAGE}`;
      await measureBoth(
        'gateway',
        async (w) => {
          const res = await gateway.request('/v1/status', { token: token(w) });
          if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
        },
        async (w) => {
          const res = await gateway.request(timelinePath, { token: token(w) });
          if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
          const page = res.json() as { items: unknown[] };
          if (page.items.length !== PAGE) throw new Error(`${page.items.length} items`);
        },
      );
    } finally {
      await gateway.stop();
    }
  } finally {
    progress('stopping everything');
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  }

  for (const operation of ['status', 'timeline'] as const) {
    const of = (path: Path) => rows.find((r) => r.operation === operation && r.path === path);
    const gw = of('gateway');
    const inproc = of('in-process');
    const rpc = of('rpc');
    if (!gw || !inproc || !rpc) continue;
    gw.p50VsInProcess = gw.seqP50Ms / inproc.seqP50Ms;
    gw.p50VsRpc = gw.seqP50Ms / rpc.seqP50Ms;
    gw.rateVsInProcess = gw.requestsPerSecond / inproc.requestsPerSecond;
    gw.rateVsRpc = gw.requestsPerSecond / rpc.requestsPerSecond;
  }

  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({ quick: QUICK, concurrency: CONCURRENCY, throughputMs: THROUGHPUT_MS, sequential: SEQUENTIAL, page: PAGE, rows }, null, 2)}\n`,
    );
    return;
  }
  const x = (v: number | undefined) => (v === undefined ? '' : `${v.toFixed(2)}x`);
  const header = [
    'operation',
    'path',
    'seq p50 ms',
    'seq p99 ms',
    `req/s @${CONCURRENCY}`,
    'loaded p50 ms',
    'loaded p99 ms',
    'errors',
    'p50 gw/in-proc',
    'p50 gw/rpc',
    'rate gw/in-proc',
    'rate gw/rpc',
  ];
  const table = rows.map((r) => [
    r.operation,
    r.path,
    r.seqP50Ms.toFixed(2),
    r.seqP99Ms.toFixed(2),
    r.requestsPerSecond.toFixed(0),
    r.loadedP50Ms.toFixed(2),
    r.loadedP99Ms.toFixed(2),
    String(Object.values(r.errors).reduce((a, b) => a + b, 0)),
    x(r.p50VsInProcess),
    x(r.p50VsRpc),
    x(r.rateVsInProcess),
    x(r.rateVsRpc),
  ]);
  const widths = header.map((h, i) =>
    Math.max(h.length, ...table.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: string[]): string =>
    cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ');
  process.stdout.write(
    `${line(header)}\n${line(widths.map((w) => '-'.repeat(w)))}\n${table.map(line).join('\n')}\n`,
  );
  process.stdout.write(
    [
      '',
      `Sequential: ${SEQUENTIAL.status} status / ${SEQUENTIAL.timeline} timeline requests one at a time; loaded: ${CONCURRENCY} in flight for ${THROUGHPUT_MS / 1000} s, latency of each request under that load.`,
      'Every path authorises each call against the policy (one client per worker, 60,000/min each, so no limit is reached) and, except "no audit", appends the decision to the audit log and waits for its fdatasync (group commit: concurrent calls share one).',
      `timeline = ${PAGE} messages from a stock peer: Synapse /messages, then each decrypted by the Rust OlmMachine, on every path.`,
      'in-process: apiHandlers called as functions, no validation or serialisation. rpc: + zod validation of params and result at both ends, JSON framing, one socketpair hop to the endpoint process.',
      "gateway: + HTTP/1.1 over the Unix socket (keep-alive), fastify routing, zod validation of the request and response, and the gateway's in-flight bound (16 calls to the endpoint; more wait in its queue).",
      'Ratios: gw/in-proc and gw/rpc of the sequential p50 (above 1 is slower) and of the loaded rate (below 1 is fewer requests per second).',
    ].join('\n') + '\n',
  );
}

await main();
process.exit(0);
