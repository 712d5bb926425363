/**
 * Gateway benchmark (issue 5): request rate and latency of a cheap route (status) and of the
 * timeline route (20 messages, fetched from Synapse and decrypted), on three paths in one run,
 * against the same endpoint data, policy and audit log:
 *
 *   gateway     HTTP/1.1 over the gateway's Unix socket (the gateway process, which runs the
 *               endpoint and vault processes), requests made by this process's own client;
 *   gateway, wrk
 *               the same gateway listening on loopback TCP, loaded by wrk in its own process:
 *               this process's Node client costs more CPU per request than the gateway does,
 *               and on 2 cores it, not the gateway, set the rate (wrk cannot use a Unix socket);
 *   rpc         the endpoint compartment's RPC directly (spawnEndpoint's client over its
 *               socketpair): no gateway, but still cross-process;
 *   in-process  apiHandlers called directly on an in-process EndpointService, with the same
 *               policy and the real audit log (AuditLog, fdatasync per group of appends); and,
 *               for reference, the same with an audit sink that writes nothing.
 *
 * For each: sequential latency (p50/p99, one request at a time) and throughput with
 * --concurrency requests in flight for a fixed time. The ratios are gateway / in-process and
 * gateway / rpc. Then a send's latency through the gateway, alone and while 50 slow readers
 * (timelines, each its own token) keep every read slot busy: sends have slots of their own.
 * Progress goes to stderr, the tables (or, with --json, the rows) to stdout.
 *
 *   node test/bench/gateway.ts [--quick] [--concurrency N] [--json]
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, promisify } from 'node:util';
import { type Handlers, isRpcError } from '../../keyvault/common/rpc/index.ts';
import { spawnVault } from '../../keyvault/spawn.ts';
import { EventHub, apiHandlers } from '../../endpoint/api/index.ts';
import { loadEndpointConfig } from '../../endpoint/config.ts';
import type { EndpointContract } from '../../endpoint/contract.ts';
import { spawnGateway } from '../../endpoint/untrusted/gateway/index.ts';
import { EndpointService } from '../../endpoint/service.ts';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import { AuditLog, Authorizer, PolicyHolder, roomTrust } from '../../policy/index.ts';
import { quantile } from './endpoint-lib.ts';
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
/** The slow readers, and the sends timed alone and among them. */
const READERS = 50;
const SENDS = QUICK ? 20 : 60;
/** Goals: status at CONCURRENCY in flight through the gateway (loaded by wrk). */
const GOAL = { rate: 5000, p50VsInProcess: 1.5, sendAmongReaders: 1.5 };

const run = promisify(execFile);
try {
  await run('wrk', ['--version']).catch((e: unknown) => {
    // wrk prints its version and exits 1; only a missing binary is an error.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw e;
  });
} catch {
  process.stderr.write('bench: wrk is missing (bash deploy/setup.sh installs it)\n');
  process.exit(2);
}

// matrix-js-sdk logs debug lines through console.log; stdout is for the table.
for (const method of ['log', 'info', 'debug', 'trace'] as const) {
  console[method] = () => undefined;
}

const started = performance.now();
function progress(message: string): void {
  const s = ((performance.now() - started) / 1000).toFixed(1).padStart(5);
  process.stderr.write(`[${s}s] ${message}\n`);
}

/** One request; resolves when it answered well, rejects (with a short reason) otherwise. */
type Op = (worker: number) => Promise<void>;
type Path = 'gateway' | 'gateway, wrk' | 'rpc' | 'in-process' | 'in-process, no audit';
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
  loadedP50VsInProcess?: number;
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

interface WrkRun {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: Record<string, number>;
}

/** Reads wrk's --latency report (its percentiles come from its own histogram). */
function parseWrk(out: string): WrkRun {
  const ms = (pct: string): number => {
    const m = new RegExp(`^\\s*${pct}%\\s+([0-9.]+)(us|ms|s)$`, 'm').exec(out);
    if (!m) throw new Error(`wrk printed no ${pct}% latency:\n${out}`);
    const v = Number(m[1]);
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v;
  };
  const rate = /^Requests\/sec:\s+([0-9.]+)/m.exec(out);
  if (!rate) throw new Error(`wrk printed no rate:\n${out}`);
  const errors: Record<string, number> = {};
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (non2xx) errors['non-2xx'] = Number(non2xx[1]);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  if (socket) {
    const n = socket.slice(1).reduce((a, b) => a + Number(b), 0);
    if (n > 0) errors.socket = n;
  }
  return { requestsPerSecond: Number(rate[1]), p50Ms: ms('50'), p99Ms: ms('99'), errors };
}

/**
 * wrk against `url`, one token per request in turn (each client's rate bucket allows 1,000/s,
 * so one token alone would meet its limit, not the gateway's): one connection for the
 * sequential figures, CONCURRENCY for the loaded ones.
 */
async function measureWrk(
  operation: Operation,
  url: string,
  tokens: readonly string[],
  dir: string,
): Promise<void> {
  const script = join(dir, `wrk-${operation}.lua`);
  const path = new URL(url).pathname + new URL(url).search;
  await writeFile(
    script,
    [
      `local tokens = { ${tokens.map((t) => JSON.stringify(t)).join(', ')} }`,
      'local i = 0',
      'request = function()',
      '  i = i % #tokens + 1',
      `  return wrk.format("GET", ${JSON.stringify(path)}, { ["Authorization"] = "Bearer " .. tokens[i] })`,
      'end',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const wrk = async (connections: number, ms: number): Promise<WrkRun> => {
    const { stdout } = await run('wrk', [
      '-t1',
      `-c${connections}`,
      `-d${Math.max(1, Math.round(ms / 1000))}s`,
      '--latency',
      '-s',
      script,
      url,
    ]);
    return parseWrk(stdout);
  };
  await wrk(1, 1000); // warm-up
  // The sequential run gets as long as the loaded one: wrk counts by time, not requests.
  const seq = await wrk(1, THROUGHPUT_MS);
  const loaded = await wrk(CONCURRENCY, THROUGHPUT_MS);
  const errors: Record<string, number> = {};
  for (const r of [seq, loaded]) {
    for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
  }
  const row: Row = {
    operation,
    path: 'gateway, wrk',
    seqP50Ms: seq.p50Ms,
    seqP99Ms: seq.p99Ms,
    requestsPerSecond: loaded.requestsPerSecond,
    loadedP50Ms: loaded.p50Ms,
    loadedP99Ms: loaded.p99Ms,
    errors,
  };
  rows.push(row);
  const errs = Object.keys(errors).length ? ` errors ${JSON.stringify(errors)}` : '';
  progress(
    `  ${operation} via gateway, wrk: p50 ${row.seqP50Ms.toFixed(2)} ms, ${row.requestsPerSecond.toFixed(0)}/s at ${CONCURRENCY} in flight${errs}`,
  );
}

interface SendRow {
  load: string;
  sends: number;
  p50Ms: number;
  p99Ms: number;
  /** Reads answered while the sends were timed (none when alone). */
  reads: number;
  readErrors: number;
  p50VsAlone?: number;
}
const sendRows: SendRow[] = [];

/** The same two operations for each path. */
async function measureBoth(path: Path, status: Op, timeline: Op): Promise<void> {
  await measure('status', path, status);
  await measure('timeline', path, timeline);
}

const workerNames = Array.from({ length: CONCURRENCY }, (_, i) => `w${i}`);
const readerNames = Array.from({ length: READERS }, (_, i) => `reader${i}`);

function quantiles(samples: number[]): { p50Ms: number; p99Ms: number } {
  return { p50Ms: quantile(samples, 0.5), p99Ms: quantile(samples, 0.99) };
}

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
      clients: [
        ...workerNames.map((name) => ({
          name,
          capabilities: ['rooms.read', 'messages.read', 'rooms.create'],
          requestsPerMinute: 60_000,
        })),
        { name: 'sender', capabilities: ['messages.send'], requestsPerMinute: 60_000 },
        ...readerNames.map((name) => ({
          name,
          capabilities: ['messages.read'],
          requestsPerMinute: 60_000,
        })),
      ],
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

      // --- a send, alone and among READERS slow readers ----------------------------------
      const messagesPath = `/v1/rooms/${encodeURIComponent(roomId)}/messages`;
      let sent = 0;
      const timeSends = async (): Promise<number[]> => {
        const ms: number[] = [];
        for (let i = 0; i < SENDS; i++) {
          const t = performance.now();
          const res = await gateway.request(messagesPath, {
            method: 'POST',
            token: prepared.tokens.sender ?? '',
            body: { body: `bench send ${sent++}` },
          });
          if (res.status !== 202) throw new Error(`a send answered HTTP ${res.status}`);
          ms.push(performance.now() - t);
          await sleep(20); // a person's pace, and the outbox's delivery in between
        }
        return ms;
      };
      progress(`send latency: ${SENDS} sends alone`);
      await timeSends(); // warm-up (and the room's first Megolm session)
      const alone = await timeSends();
      sendRows.push({ load: 'alone', sends: SENDS, ...quantiles(alone), reads: 0, readErrors: 0 });
      progress(`send latency: ${SENDS} sends while ${READERS} readers read timelines`);
      const reading = { on: true, reads: 0, errors: 0 };
      const readers = readerNames.map(async (name) => {
        while (reading.on) {
          const res = await gateway.request(timelinePath, {
            token: prepared.tokens[name] ?? '',
          });
          if (res.status === 200) reading.reads++;
          else reading.errors++;
        }
      });
      await sleep(500); // every read slot taken, the rest queued
      const before = reading.reads;
      const among = await timeSends();
      const reads = reading.reads - before;
      reading.on = false;
      await Promise.all(readers);
      sendRows.push({
        load: `${READERS} slow readers`,
        sends: SENDS,
        ...quantiles(among),
        reads,
        readErrors: reading.errors,
        p50VsAlone: quantile(among, 0.5) / quantile(alone, 0.5),
      });
    } finally {
      await gateway.stop();
    }

    // --- gateway, wrk: the same gateway on loopback TCP, loaded from another process -----
    progress('gateway, wrk: starting the gateway on loopback TCP (and its endpoint and vault)');
    const tcpConfig = join(dir, 'gateway-tcp.json');
    await writeFile(
      tcpConfig,
      JSON.stringify({ tcp: { host: '127.0.0.1', port: 0 }, endpointConfig: 'endpoint.json' }),
    );
    const tcpGateway = await spawnGateway(tcpConfig, {
      onStderr: (l) => {
        if (!/listening on/.test(l)) process.stderr.write(`${l}\n`);
      },
    });
    try {
      const { tcp } = tcpGateway;
      if (!tcp) throw new Error('the gateway did not say which TCP port it listens on');
      const base = `http://${tcp.host}:${tcp.port}`;
      const tokens = workerNames.map((_, w) => token(w));
      await measureWrk('status', `${base}/v1/status`, tokens, dir);
      await measureWrk(
        'timeline',
        `${base}/v1/rooms/${encodeURIComponent(roomId)}/timeline?limit=${PAGE}`,
        tokens,
        dir,
      );
    } finally {
      await tcpGateway.stop();
    }
  } finally {
    progress('stopping everything');
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  }

  for (const operation of ['status', 'timeline'] as const) {
    const of = (path: Path) => rows.find((r) => r.operation === operation && r.path === path);
    const inproc = of('in-process');
    const rpc = of('rpc');
    for (const gw of [of('gateway'), of('gateway, wrk')]) {
      if (!gw || !inproc || !rpc) continue;
      gw.p50VsInProcess = gw.seqP50Ms / inproc.seqP50Ms;
      gw.loadedP50VsInProcess = gw.loadedP50Ms / inproc.loadedP50Ms;
      gw.p50VsRpc = gw.seqP50Ms / rpc.seqP50Ms;
      gw.rateVsInProcess = gw.requestsPerSecond / inproc.requestsPerSecond;
      gw.rateVsRpc = gw.requestsPerSecond / rpc.requestsPerSecond;
    }
  }

  const wrkStatus = rows.find((r) => r.operation === 'status' && r.path === 'gateway, wrk');
  const amongReaders = sendRows.find((r) => r.p50VsAlone !== undefined);
  const goals = [
    {
      goal: `status through the gateway >= ${GOAL.rate} req/s at ${CONCURRENCY} in flight`,
      met: (wrkStatus?.requestsPerSecond ?? 0) >= GOAL.rate,
      shown: `${wrkStatus?.requestsPerSecond.toFixed(0) ?? '-'} req/s`,
    },
    {
      goal: `status p50 through the gateway <= ${GOAL.p50VsInProcess}x in-process, one at a time`,
      met: (wrkStatus?.p50VsInProcess ?? Infinity) <= GOAL.p50VsInProcess,
      shown: `${wrkStatus?.p50VsInProcess?.toFixed(2) ?? '-'}x`,
    },
    {
      goal: `status p50 through the gateway <= ${GOAL.p50VsInProcess}x in-process, ${CONCURRENCY} in flight`,
      met: (wrkStatus?.loadedP50VsInProcess ?? Infinity) <= GOAL.p50VsInProcess,
      shown: `${wrkStatus?.loadedP50VsInProcess?.toFixed(2) ?? '-'}x`,
    },
    {
      goal: `send p50 among ${READERS} slow readers <= ${GOAL.sendAmongReaders}x alone`,
      met: (amongReaders?.p50VsAlone ?? Infinity) <= GOAL.sendAmongReaders,
      shown: `${amongReaders?.p50VsAlone?.toFixed(2) ?? '-'}x`,
    },
  ];

  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({ quick: QUICK, concurrency: CONCURRENCY, throughputMs: THROUGHPUT_MS, sequential: SEQUENTIAL, page: PAGE, rows, sends: sendRows, goals }, null, 2)}\n`,
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
    'loaded p50 gw/in-proc',
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
    x(r.loadedP50VsInProcess),
    x(r.p50VsRpc),
    x(r.rateVsInProcess),
    x(r.rateVsRpc),
  ]);
  const print = (head: string[], body: string[][]): void => {
    const widths = head.map((h, i) =>
      Math.max(h.length, ...body.map((row) => (row[i] ?? '').length)),
    );
    const line = (cells: string[]): string =>
      cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ');
    process.stdout.write(
      `${line(head)}\n${line(widths.map((w) => '-'.repeat(w)))}\n${body.map(line).join('\n')}\n\n`,
    );
  };
  print(header, table);
  print(
    [
      'send through the gateway',
      'sends',
      'p50 ms',
      'p99 ms',
      'reads meanwhile',
      'read errors',
      'p50 / alone',
    ],
    sendRows.map((r) => [
      r.load,
      String(r.sends),
      r.p50Ms.toFixed(2),
      r.p99Ms.toFixed(2),
      String(r.reads),
      String(r.readErrors),
      x(r.p50VsAlone),
    ]),
  );
  print(
    ['goal', 'measured', 'met'],
    goals.map((g) => [g.goal, g.shown, g.met ? 'yes' : 'NO']),
  );
  process.stdout.write(
    [
      '',
      `Sequential: ${SEQUENTIAL.status} status / ${SEQUENTIAL.timeline} timeline requests one at a time; loaded: ${CONCURRENCY} in flight for ${THROUGHPUT_MS / 1000} s, latency of each request under that load.`,
      'Every path authorises each call against the policy (one client per worker, 60,000/min each, so no limit is reached) and, except "no audit", appends the decision to the audit log and waits for its fdatasync (group commit: concurrent calls share one).',
      `timeline = ${PAGE} messages from a stock peer: Synapse /messages, then each decrypted by the Rust OlmMachine, on every path.`,
      'in-process: apiHandlers called as functions, no validation or serialisation. rpc: + zod validation of params and result at both ends, JSON framing, one socketpair hop to the endpoint process.',
      "gateway: + HTTP/1.1 over the Unix socket (keep-alive), fastify routing, zod validation of the request and response, and the gateway's in-flight bound (16 calls to the endpoint; more wait in its queue); requests from this process's Node client, which shares the 2 cores.",
      `gateway, wrk: the same, on loopback TCP, loaded by wrk (one thread, its own process; one connection for the sequential figures, ${CONCURRENCY} for the loaded ones; a token per request in turn); latency as wrk measures it.`,
      `Sends: POST /messages (202 once the send is durable in the outbox) one at a time, ${SENDS} alone, then ${SENDS} while ${READERS} readers, each its own token, read ${PAGE}-message timelines without pause: every read slot busy, the rest of the readers queued.`,
      'Ratios: gw/in-proc and gw/rpc of the sequential p50 (above 1 is slower) and of the loaded rate (below 1 is fewer requests per second).',
    ].join('\n') + '\n',
  );
}

await main();
process.exit(0);
