/**
 * Endpoint benchmark: our endpoint against a stock matrix-js-sdk client (its Rust crypto), in
 * one run on the same local Synapse, with the ratio ours / stock for each measurement:
 *
 *   1. decrypting the same N-event encrypted history, fetched by /messages pages of 100;
 *   2. send-to-acknowledgement latency;
 *   3. cold start to ready (ours with a sealed store of 10,000 inbound group sessions);
 *   4. the durable store's cost per committed transaction, and journal bytes per record
 *      (ours only: the stock client has no durable store);
 *   5. resident memory of our endpoint compartment process and of a stock client process
 *      after the same work.
 *
 * Progress goes to stderr, the table (or, with --json, the rows) to stdout.
 *
 *   node test/bench/endpoint.ts [--events N] [--json]
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Endpoint, isDecrypted } from '../../endpoint/device.ts';
import { HomeserverClient } from '../../endpoint/matrix/index.ts';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { spawnGateway } from '../../endpoint/untrusted/gateway/index.ts';
import { runnableEntry } from '../../keyvault/common/entries.ts';
import {
  type Swtpm,
  type Synapse,
  type SynapseUser,
  StockPeer,
  makeTempDir,
  prepareCompartments,
  readTimeline,
  repoRoot,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import {
  type HistoryResult,
  type Memory,
  historyBody,
  historyIndex,
  median,
  quantile,
  processMemory,
  stockHistory,
} from './endpoint-lib.ts';

const { values: args } = parseArgs({
  options: { events: { type: 'string' }, json: { type: 'boolean' } },
});
const EVENTS = Number(args.events ?? 1000);
if (!Number.isInteger(EVENTS) || EVENTS < 10 || EVENTS > 100_000) {
  process.stderr.write('bench: --events must be an integer from 10 to 100000\n');
  process.exit(2);
}
const PAGE = 100;
const DECRYPT_PASSES = 3;
const SENDS = 100;
const SESSIONS = 10_000;
const COLD_RUNS = 3;
const COMMITS = 100;
/** The endpoint contract's timeline has no paging and at most 500 items. */
const RPC_WINDOW = Math.min(EVENTS, 500);
const CHILD = join(import.meta.dirname, 'endpoint-child.ts');

// matrix-js-sdk's MatrixRTCSession logs debug lines through console.log even with the fixture's
// global logger at "warn": stdout is for the table (or the JSON), so that chatter is dropped.
for (const method of ['log', 'info', 'debug', 'trace'] as const) {
  console[method] = () => undefined;
}

const started = performance.now();
function progress(message: string): void {
  const s = ((performance.now() - started) / 1000).toFixed(1).padStart(5);
  process.stderr.write(`[${s}s] ${message}\n`);
}

interface Row {
  /** Which of the five measurements (the table is in this order). */
  section: number;
  measurement: string;
  unit: string;
  ours: number;
  stock?: number;
  /** Ours divided by stock. */
  ratio?: number;
}

/** For waitUntil: an error from a condition ends the run at once. */
const poll = { timeoutMs: 60_000, intervalMs: 100, failOnError: true };

// --- child processes (test/bench/endpoint-child.ts) -------------------------------------------

type Message = Record<string, unknown>;
interface Child {
  process: ChildProcessWithoutNullStreams;
  /** The next message with this `event`, or a rejection if the child exits first. */
  next(event: string, timeoutMs?: number): Promise<Message>;
  send(message: Message): void;
  /** Closes its stdin (every mode exits then) and waits; SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<void>;
}
const children = new Set<ChildProcessWithoutNullStreams>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping\n`);
    process.exit(130); // the 'exit' hooks (ours, the fixtures') kill what is still running
  });
}

function startChild(mode: string, params: object): Child {
  const child = spawn(process.execPath, [CHILD, mode], {
    cwd: repoRoot,
    env: { ...process.env, MTE_BENCH_CHILD: JSON.stringify(params) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.add(child);
  const messages: Message[] = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  let buffered = '';
  let exitCode: number | string | null = null;
  const wake = (): void => {
    for (const w of waiters) w();
  };
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString('utf8');
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      try {
        const parsed: unknown = JSON.parse(line);
        if (typeof parsed === 'object' && parsed !== null && 'event' in parsed)
          messages.push(parsed);
      } catch {
        // a library's stray line: not ours
      }
    }
    wake();
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitCode = code ?? signal ?? 'unknown';
      children.delete(child);
      wake();
      resolve();
    });
  });
  return {
    process: child,
    next(event, timeoutMs = 120_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          done();
          reject(new Error(`child ${mode}: no "${event}" within ${timeoutMs} ms`));
        }, timeoutMs);
        const check = (): void => {
          const i = messages.findIndex((m) => m.event === event);
          if (i >= 0) {
            done();
            resolve(messages.splice(i, 1)[0] as Message);
          } else if (exitCode !== null) {
            done();
            const tail = stderr.trim().split('\n').slice(-3).join(' | ');
            reject(new Error(`child ${mode} exited (${exitCode}) before "${event}": ${tail}`));
          }
        };
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    send(message) {
      child.stdin.write(`${JSON.stringify(message)}\n`);
    },
    async stop(graceMs = 10_000) {
      child.stdin.end();
      if (exitCode !== null) return;
      const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!done) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

const num = (m: Message, key: string): number => {
  const v = m[key];
  if (typeof v !== 'number') throw new Error(`child message has no number ${key}`);
  return v;
};

// --- the endpoint's side -------------------------------------------------------------------

/** Ours: the whole history through Endpoint.timeline, pages of PAGE, newest first. */
async function ourHistory(endpoint: Endpoint, roomId: string): Promise<HistoryResult> {
  const result: HistoryResult = { events: 0, decrypted: new Set(), pages: 0 };
  let from: string | undefined;
  const maxPages = Math.ceil(EVENTS / PAGE) + 20;
  do {
    const page = await endpoint.timeline(roomId, { limit: PAGE, ...(from ? { from } : {}) });
    result.pages++;
    for (const item of page.items) {
      result.events++;
      if (item.decrypted && item.body !== undefined) {
        const index = historyIndex(item.body);
        if (index !== undefined) result.decrypted.add(index);
      }
    }
    from = page.next;
  } while (from !== undefined && result.pages < maxPages);
  return result;
}

async function startCompartment(
  dir: string,
  hs: Synapse,
  tpm: Swtpm,
  user: SynapseUser,
  stderr: string[],
): Promise<SpawnedEndpoint & { token: string; endpointConfig: string }> {
  const { endpointConfig, tokens } = await prepareCompartments(dir, {
    homeserver: hs.baseUrl,
    tpm,
    user,
  });
  const spawned = await spawnEndpoint(endpointConfig, { onStderr: (l) => stderr.push(l) });
  return Object.assign(spawned, { token: tokens.test ?? '', endpointConfig });
}

/** A compartment's child (the gateway's endpoint, the endpoint's vault: each has one). */
async function childPid(pid: number): Promise<number | undefined> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const first = text.trim().split(/\s+/)[0];
  return first ? Number(first) : undefined;
}

// --- the run -------------------------------------------------------------------------------

async function main(): Promise<{ rows: Row[]; notes: string[] }> {
  const rows: Row[] = [];
  const notes: string[] = [];
  const dir = await makeTempDir('bench-endpoint');
  /** Synapse, swtpm, the store builder: stopped last. */
  const stops: (() => Promise<unknown>)[] = [];
  /** The clients and their processes: stopped before the cold starts, or on failure. */
  const clients: (() => Promise<unknown>)[] = [];
  const compartmentStderr: string[] = [];
  try {
    // 3's store is built in the background while the world starts (it is not timed).
    progress(`building a sealed store with ${SESSIONS} inbound group sessions (child process)`);
    const storeDir = join(dir, 'cold');
    await mkdir(storeDir, { mode: 0o700 });
    const builder = startChild('build-store', { dir: storeDir, sessions: SESSIONS });
    stops.push(() => builder.stop());
    const built = builder.next('built', 150_000);
    built.catch(() => undefined); // awaited below

    progress('starting Synapse and swtpm');
    const [hs, tpm] = await Promise.all([startSynapse(), startSwtpm()]);
    stops.push(
      () => hs.stop(),
      () => tpm.stop(),
    );
    const register = (name: string): Promise<SynapseUser> => hs.registerUser(name);
    const [alice, bob, carol, dave, erin, frank] = await Promise.all([
      register('alice'), // our endpoint, in this process (1, 2)
      register('bob'), // the stock peer that sends the history
      register('carol'), // the stock client measured in this process (1, 2)
      register('dave'), // our endpoint compartment process (5)
      register('erin'), // the stock client in its own process (5)
      register('frank'), // a fresh stock device for each cold start (3)
    ]);

    progress('starting our endpoint (in-process and compartment) and the stock peers');
    const peer = async (user: SynapseUser): Promise<StockPeer> => {
      const p = await StockPeer.start(hs.baseUrl, user);
      clients.push(() => p.stop());
      await p.bootstrapCrossSigning(user.password);
      return p;
    };
    const [ours, compartment, bobPeer, carolPeer] = await Promise.all([
      (async () => {
        const api = new HomeserverClient({ baseUrl: hs.baseUrl });
        await api.login(alice.localpart, alice.password);
        const e = await Endpoint.start({ api, password: alice.password });
        clients.push(() => e.stop());
        return e;
      })(),
      (async () => {
        const c = await startCompartment(dir, hs, tpm, dave, compartmentStderr);
        clients.push(() => c.stop());
        return c;
      })(),
      peer(bob),
      peer(carol),
    ]);

    // The compartment can only create rooms (its contract has no join): it is the creator.
    const { roomId } = await compartment.client.call('createRoom', {
      auth: { token: compartment.token },
      invite: [alice.userId, bob.userId, carol.userId, erin.userId],
      name: 'bench',
    });
    const erinChild = startChild('stock-peer', {
      baseUrl: hs.baseUrl,
      user: erin,
      roomId,
    });
    clients.push(() => erinChild.stop());
    await Promise.all([
      ours.join(roomId),
      bobPeer.acceptInvite(roomId),
      carolPeer.acceptInvite(roomId),
      erinChild.next('joined', 120_000),
    ]);
    for (const u of [alice, carol, dave, erin]) await bobPeer.waitForMember(roomId, u.userId);
    await waitUntil(
      'encryption in the stock sender',
      () => bobPeer.crypto.isEncryptionEnabledInRoom(roomId),
      poll,
    );

    // 1. The history: a stock peer sends it, everyone receives it (and its keys) by sync.
    const live = new Set<number>();
    const off = ours.onEvent((item) => {
      const index = isDecrypted(item) ? historyIndex(item.content.body) : undefined;
      if (index !== undefined) live.add(index);
    });
    progress(`stock peer bob sends ${EVENTS} encrypted messages`);
    let nextIndex = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (nextIndex < EVENTS) {
          const i = nextIndex++;
          await bobPeer.sendText(roomId, historyBody(i));
          if ((i + 1) % 250 === 0) progress(`  sent ${i + 1}`);
        }
      }),
    );
    const carolCount = (): number =>
      carolPeer.messages.filter((m) => m.roomId === roomId && historyIndex(m.body) !== undefined)
        .length;
    await waitUntil('carol to receive the history', () => carolCount() >= EVENTS, {
      ...poll,
      timeoutMs: 120_000,
    });
    await waitUntil('alice to receive the history', () => live.size >= EVENTS, poll).catch(
      () => undefined, // checked below, through /messages
    );
    off();

    const b = await built;
    progress(
      `store built: ${num(b, 'sessions')} sessions, ${(num(b, 'storeBytes') / 2 ** 20).toFixed(1)} MiB on disk`,
    );
    if (num(b, 'sessions') !== SESSIONS) throw new Error('the store does not hold every session');
    notes.push(
      `Cold-start store: ${SESSIONS} Megolm sessions started by a second OlmMachine (shareRoomKey in ${SESSIONS} rooms), exported with exportRoomKeys and imported with importExportedRoomKeys into a fresh sealed store (${(num(b, 'storeBytes') / 2 ** 20).toFixed(1)} MiB on disk); building took ${((num(b, 'makeMs') + num(b, 'importMs')) / 1000).toFixed(1)} s, untimed.`,
    );

    progress('1. decrypting the history, both sides (one check pass, then timed passes)');
    const check = async (name: string, run: () => Promise<HistoryResult>): Promise<void> => {
      let decrypted = 0;
      await waitUntil(
        () => `${name} to decrypt the history (decrypted ${decrypted} of ${EVENTS} events)`,
        async () => {
          decrypted = (await run()).decrypted.size;
          return decrypted === EVENTS;
        },
        { ...poll, timeoutMs: 30_000, intervalMs: 1000 },
      );
    };
    const oursRun = (): Promise<HistoryResult> => ourHistory(ours, roomId);
    const stockRun = (): Promise<HistoryResult> =>
      stockHistory(carolPeer.client, roomId, { pageSize: PAGE });
    await check('our endpoint', oursRun);
    await check('the stock client', stockRun);
    const rate = { ours: [] as number[], stock: [] as number[] };
    for (let pass = 0; pass < DECRYPT_PASSES; pass++) {
      for (const [side, run] of [
        ['ours', oursRun],
        ['stock', stockRun],
      ] as const) {
        const t0 = performance.now();
        const r = await run();
        const s = (performance.now() - t0) / 1000;
        if (r.decrypted.size !== EVENTS)
          throw new Error(`${side}: decrypted ${r.decrypted.size} of ${EVENTS} in a timed pass`);
        rate[side].push(r.events / s);
        progress(`  ${side}: ${r.events} events in ${s.toFixed(2)} s (${r.pages} pages)`);
      }
    }
    rows.push({
      section: 1,
      measurement: `decrypt the ${EVENTS}-event history (/messages, pages of ${PAGE})`,
      unit: 'events/s',
      ours: median(rate.ours),
      stock: median(rate.stock),
    });

    // 5. Memory: the compartment and a stock child after the same work.
    progress(`5. memory: the compartment and the stock child decrypt the newest ${RPC_WINDOW}`);
    await waitUntil(
      'the compartment to decrypt the history',
      async () => {
        const items = await readTimeline(compartment.client, compartment.token, roomId, RPC_WINDOW);
        const ok = items.filter((i) => i.decrypted && historyIndex(i.body) !== undefined);
        return ok.length === RPC_WINDOW;
      },
      poll,
    );
    const ourMemory = await processMemory(compartment.process.pid ?? 0);
    const vaultPid = await childPid(compartment.process.pid ?? 0);
    const vaultMemory = vaultPid ? await processMemory(vaultPid).catch(() => undefined) : undefined;
    erinChild.send({ expect: EVENTS, newest: RPC_WINDOW });
    const erinDone = await erinChild.next('decrypted', 180_000);
    if (num(erinDone, 'received') < EVENTS || num(erinDone, 'decrypted') !== RPC_WINDOW) {
      throw new Error(
        `stock child: received ${num(erinDone, 'received')}, decrypted ${num(erinDone, 'decrypted')} of ${RPC_WINDOW}`,
      );
    }
    const stockMemory: Memory = { rss: num(erinDone, 'rss'), peak: num(erinDone, 'peak') };
    const mib = (n: number): number => n / 2 ** 20;
    rows.push(
      {
        section: 5,
        measurement: 'resident memory (VmRSS) after the history',
        unit: 'MiB',
        ours: mib(ourMemory.rss),
        stock: mib(stockMemory.rss),
      },
      {
        section: 5,
        measurement: 'peak resident memory (VmHWM)',
        unit: 'MiB',
        ours: mib(ourMemory.peak),
        stock: mib(stockMemory.peak),
      },
    );
    if (vaultMemory) {
      rows.push({
        section: 5,
        measurement: "the endpoint's vault process (VmRSS)",
        unit: 'MiB',
        ours: mib(vaultMemory.rss),
      });
    }
    notes.push(
      `Memory: ours is the endpoint compartment process (spawnEndpoint, TPM vault on swtpm; the vault's own row is its process); stock is a StockPeer in a child process. Each received the ${EVENTS} messages by sync (decrypting them) and then decrypted the newest ${RPC_WINDOW} again from /messages. No GC forced. Compartments run from their bundles (${runnableEntry('endpoint/main.ts').endsWith('.mjs') ? 'as here' : 'NOT here: a source changed since the bundle was built, so these figures are the TypeScript sources'}; dist/compartments/, built by the set-up).`,
    );
    await erinChild.stop();
    await compartment.stop();

    // The whole footprint: the same store behind the gateway, all three compartments.
    progress(`5. memory: gateway, endpoint and vault, reading the newest ${RPC_WINDOW} over HTTP`);
    const gwConfig = join(dir, 'gateway.json');
    await writeFile(
      gwConfig,
      JSON.stringify({ socket: 'gw.sock', endpointConfig: compartment.endpointConfig }),
    );
    const gateway = await spawnGateway(gwConfig, {
      onStderr: (l) => compartmentStderr.push(l),
    });
    try {
      const timeline = `/v1/rooms/${encodeURIComponent(roomId)}/timeline?limit=100`;
      let readable = 0;
      let from: string | undefined;
      while (readable < RPC_WINDOW) {
        const res = await gateway.request(
          from === undefined ? timeline : `${timeline}&from=${encodeURIComponent(from)}`,
          { token: compartment.token },
        );
        if (res.status !== 200) throw new Error(`the gateway's timeline answered ${res.status}`);
        const page = res.json() as {
          items: { decrypted?: boolean; body?: string }[];
          next?: string;
        };
        readable += page.items.filter(
          (i) => i.decrypted === true && historyIndex(i.body) !== undefined,
        ).length;
        if (page.next === undefined || page.next === from) break;
        from = page.next;
      }
      if (readable < RPC_WINDOW) {
        throw new Error(`the stack decrypted ${readable} of the newest ${RPC_WINDOW}`);
      }
      const gatewayPid = gateway.process.pid ?? 0;
      const endpointPid = await childPid(gatewayPid);
      const stackVaultPid = endpointPid === undefined ? undefined : await childPid(endpointPid);
      if (endpointPid === undefined || stackVaultPid === undefined) {
        throw new Error('the stack has no endpoint or vault process to measure');
      }
      const [g, e, v] = await Promise.all(
        [gatewayPid, endpointPid, stackVaultPid].map((pid) => processMemory(pid)),
      );
      if (!g || !e || !v) throw new Error('a compartment exited before it was measured');
      rows.push(
        { section: 5, measurement: 'stack: the gateway (VmRSS)', unit: 'MiB', ours: mib(g.rss) },
        { section: 5, measurement: 'stack: the endpoint (VmRSS)', unit: 'MiB', ours: mib(e.rss) },
        { section: 5, measurement: 'stack: the vault (VmRSS)', unit: 'MiB', ours: mib(v.rss) },
        {
          section: 5,
          measurement: 'stack: all three compartments together (VmRSS)',
          unit: 'MiB',
          ours: mib(g.rss + e.rss + v.rss),
          stock: mib(stockMemory.rss),
        },
      );
      notes.push(
        `Stack: the same store and device behind the gateway (spawnGateway: gateway, endpoint, vault), after reading the newest ${RPC_WINDOW} through the gateway's timeline route (its sync had nothing new to fetch); against the stock child's figure above, one process doing the same work.`,
      );
    } finally {
      await gateway.stop();
    }

    // 2. Send latency, interleaved so both see the same homeserver load.
    progress(`2. ${SENDS} sends each, interleaved`);
    const send = {
      ours: (i: number) => ours.sendText(roomId, `latency probe ours ${i}`),
      stock: (i: number) =>
        carolPeer.client.sendMessage(roomId, {
          msgtype: 'm.text',
          body: `latency probe stock ${i}`,
        } as never),
    };
    await send.ours(-1);
    await send.stock(-1);
    const latency = { ours: [] as number[], stock: [] as number[] };
    for (let i = 0; i < SENDS; i++) {
      for (const side of ['ours', 'stock'] as const) {
        const t0 = performance.now();
        await send[side](i);
        latency[side].push(performance.now() - t0);
      }
    }
    rows.push(
      {
        section: 2,
        measurement: 'send to acknowledgement, median',
        unit: 'ms',
        ours: median(latency.ours),
        stock: median(latency.stock),
      },
      {
        section: 2,
        measurement: 'send to acknowledgement, p99',
        unit: 'ms',
        ours: quantile(latency.ours, 0.99),
        stock: quantile(latency.stock, 0.99),
      },
    );
    // Quiet from here on: nothing else runs while the cold starts and commits are timed.
    for (const stop of clients.splice(0).reverse()) await stop().catch(() => undefined);

    // 3. Cold start, each in a fresh process.
    progress(`3. cold start to ready, ${COLD_RUNS} runs each`);
    const cold = {
      ours: [] as number[],
      stock: [] as number[],
      oursSpawn: [] as number[],
      stockSpawn: [] as number[],
    };
    for (let run = 0; run < COLD_RUNS; run++) {
      const t0 = performance.now();
      const o = startChild('open-store', { dir: storeDir });
      const ready = await o.next('ready');
      cold.oursSpawn.push(performance.now() - t0);
      cold.ours.push(num(ready, 'ms'));
      const closed = await o.next('closed');
      await o.stop();
      if (num(closed, 'sessions') !== SESSIONS)
        throw new Error(`reopened store holds ${num(closed, 'sessions')} sessions`);

      const device = await hs.login(frank.localpart, frank.password); // a new device each time
      const t1 = performance.now();
      const s = startChild('stock-cold', { baseUrl: hs.baseUrl, user: device });
      const sReady = await s.next('ready');
      cold.stockSpawn.push(performance.now() - t1);
      cold.stock.push(num(sReady, 'ms'));
      await s.next('closed');
      await s.stop();
      progress(
        `  ours ${num(ready, 'ms').toFixed(0)} ms (store open ${num(ready, 'storeOpenMs').toFixed(0)} ms), stock ${num(sReady, 'ms').toFixed(0)} ms`,
      );
    }
    rows.push(
      {
        section: 3,
        measurement: `cold start to ready (ours: ${SESSIONS} sessions; stock: no store)`,
        unit: 'ms',
        ours: median(cold.ours),
        stock: median(cold.stock),
      },
      {
        section: 3,
        measurement: 'cold start to ready, from process spawn (node start, imports)',
        unit: 'ms',
        ours: median(cold.oursSpawn),
        stock: median(cold.stockSpawn),
      },
    );
    notes.push(
      `Cold start: ours = openDurableStore (decrypt, verify, replay) + OlmMachine.initFromStore, the store key given (from the vault in production), no network; stock = createClient + initRustCrypto({useIndexedDB:false}) + first sync, which has no persistence at all: every start is a new device with no keys and no history it can read. Medians of ${COLD_RUNS}, each in a fresh process.`,
    );

    // 4. Store commits, on a fresh store in a child process.
    progress(`4. store commits, ${COMMITS} per kind`);
    const commitDir = join(dir, 'commit');
    await mkdir(commitDir, { mode: 0o700 });
    const committer = startChild('commit', { dir: commitDir, sessions: COMMITS });
    const c = await committer.next('commit');
    await committer.stop();
    type Kind = { samples: number[]; records: number; bytes: number };
    const kind = (k: string): Kind => c[k] as Kind;
    const seq = kind('sequential');
    const conc = kind('concurrent');
    const eng = kind('engine');
    rows.push(
      {
        section: 4,
        measurement: 'store commit: app-state put (1 KiB), one at a time, median',
        unit: 'ms/tx',
        ours: median(seq.samples),
      },
      {
        section: 4,
        measurement: 'store commit: app-state put (1 KiB), one at a time, p99',
        unit: 'ms/tx',
        ours: quantile(seq.samples, 0.99),
      },
      {
        section: 4,
        measurement: `store commit: ${COMMITS} app-state puts at once`,
        unit: 'ms/tx',
        ours: conc.samples[0] ?? NaN,
      },
      {
        section: 4,
        measurement: 'store commit: engine room-key import, one at a time, median',
        unit: 'ms/tx',
        ours: median(eng.samples),
      },
      {
        section: 4,
        measurement: 'journal bytes per record: app-state put (1 KiB)',
        unit: 'bytes',
        ours: seq.bytes / seq.records,
      },
      {
        section: 4,
        measurement: 'journal bytes per record: engine room-key import',
        unit: 'bytes',
        ours: eng.bytes / eng.records,
      },
    );
    notes.push(
      `Store: every committed transaction is one encrypted, fdatasync'ed journal record before it completes; ${COMMITS} of each kind on a fresh store (records per room-key import: ${(eng.records / COMMITS).toFixed(2)}; bytes per record from stats()). The stock client has no durable store to compare.`,
    );
  } catch (e) {
    if (compartmentStderr.length > 0)
      process.stderr.write(`compartment stderr:\n${compartmentStderr.slice(-10).join('\n')}\n`);
    throw e;
  } finally {
    progress('stopping everything');
    for (const stop of [...clients.reverse(), ...stops.reverse()])
      await stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
  for (const r of rows) if (r.stock !== undefined) r.ratio = r.ours / r.stock;
  return { rows: rows.sort((a, b) => a.section - b.section), notes };
}

function format(row: Row, value: number | undefined): string {
  if (value === undefined) return '';
  if (row.unit === 'events/s' || row.unit === 'bytes') return value.toFixed(0);
  if (row.unit === 'MiB') return value.toFixed(1);
  return value.toFixed(2);
}

let result: { rows: Row[]; notes: string[] };
try {
  result = await main();
} catch (e) {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}
progress('done');
if (args.json) {
  process.stdout.write(`${JSON.stringify({ events: EVENTS, ...result }, null, 2)}\n`);
  process.exit(0);
}
const header = ['measurement', 'unit', 'ours', 'stock', 'ours / stock'];
const table = result.rows.map((r) => [
  r.measurement,
  r.unit,
  format(r, r.ours),
  format(r, r.stock),
  r.ratio === undefined ? '' : r.ratio.toFixed(3),
]);
const widths = header.map((h, i) =>
  Math.max(h.length, ...table.map((row) => (row[i] ?? '').length)),
);
const line = (cells: string[]): string =>
  cells.map((c, i) => (i < 2 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
process.stdout.write(
  `${line(header)}\n${line(widths.map((w) => '-'.repeat(w)))}\n${table.map(line).join('\n')}\n\n`,
);
process.stdout.write(
  [
    'ours / stock: above 1 is better for events/s, below 1 is better for ms and MiB.',
    `History: ${EVENTS} messages sent by a stock peer (matrix-js-sdk) into an encrypted room; ours = Endpoint.timeline in this process, stock = a matrix-js-sdk client in this process fetching the same /messages pages with its token and decrypting each event (new MatrixEvent + decryptEventIfNeeded); both verified all ${EVENTS} decrypted; fetch included; median of ${DECRYPT_PASSES} passes.`,
    `Sends: ${SENDS} each into that room (5 members; the compartment and stock child stopped by then), interleaved; ours = Endpoint.sendText (members as sync keeps them, encrypt, PUT), stock = MatrixClient.sendMessage; both resolve with the event id. p99 of 100 samples is the slowest.`,
    ...result.notes,
  ].join('\n') + '\n',
);
process.exit(0);
