/**
 * Peers benchmark: our endpoint against Pantalaimon 0.10.5 (the E2EE proxy a user would pick
 * instead) and against the crypto engine's own ceiling, in one run on the same local Synapse and
 * the same encrypted history:
 *
 *   1. reading the whole N-event history: a bare OlmMachine decrypting pre-fetched events (the
 *      ceiling), our gateway's timeline route, Pantalaimon's /messages, and a stock
 *      matrix-js-sdk client for reference;
 *   2. send-to-acknowledgement latency: ours, Pantalaimon, and the stock client;
 *   3. resident memory of each side after the same work.
 *
 * Goals: ours >= 3x Pantalaimon's decrypt rate, ours >= 0.8x the ceiling, and our send p50 at
 * most Pantalaimon's. Pantalaimon comes from `bash deploy/pantalaimon.sh`; when it cannot run,
 * its column reads n/a, a note under the table says why, and the rest is still measured.
 *
 * Progress goes to stderr, the table (or, with --json, the rows) to stdout.
 *
 *   node test/bench/peers.ts [--events N] [--json]
 */
import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_TRUST, decryptionSettings } from '../../endpoint/crypto/settings.ts';
import {
  type EventStream,
  type SpawnedGateway,
  openEventStream,
  spawnGateway,
} from '../../endpoint/untrusted/gateway/index.ts';
import {
  type SynapseUser,
  StockPeer,
  makeTempDir,
  prepareCompartments,
  startSwtpm,
  startSynapse,
  repoRoot,
  waitUntil,
} from '../fixtures/index.ts';
import {
  type Pantalaimon,
  type PantalaimonUser,
  startPantalaimon,
} from '../fixtures/pantalaimon.ts';
import {
  historyBody,
  historyIndex,
  median,
  processMemory,
  quantile,
  stockHistory,
} from './endpoint-lib.ts';

const USAGE = `Usage: node test/bench/peers.ts [--events N] [--json]

Our endpoint against Pantalaimon 0.10.5 and a bare OlmMachine (the engine's ceiling) on the same
N-event encrypted history (default 1000, 10 to 100000), and send-to-ack latency. Pantalaimon is
installed by "bash deploy/pantalaimon.sh". Progress on stderr, the table (or --json) on stdout.
`;

const { values: args } = parseArgs({
  options: {
    events: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const EVENTS = Number(args.events ?? 1000);
if (!Number.isInteger(EVENTS) || EVENTS < 10 || EVENTS > 100_000) {
  process.stderr.write('bench: --events must be an integer from 10 to 100000\n');
  process.exit(2);
}
/** /messages pages, and our timeline's largest page (the contract's MAX_PAGE). */
const PAGE = 100;
const PASSES = 3;
const SENDS = 50;
const GOALS = { decryptVsPantalaimon: 3, decryptVsCeiling: 0.8, sendVsPantalaimon: 1 };

// matrix-js-sdk logs debug lines through console.log; stdout is for the table (or the JSON).
for (const method of ['log', 'info', 'debug', 'trace'] as const) {
  console[method] = () => undefined;
}

const started = performance.now();
function progress(message: string): void {
  const s = ((performance.now() - started) / 1000).toFixed(1).padStart(5);
  process.stderr.write(`[${s}s] ${message}\n`);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping\n`);
    process.exit(130); // the fixtures' 'exit' hooks kill what is still running
  });
}

type Side = 'ours' | 'pantalaimon' | 'ceiling' | 'stock';
const SIDES: Side[] = ['ours', 'pantalaimon', 'ceiling', 'stock'];

interface Row {
  measurement: string;
  unit: string;
  ours?: number;
  pantalaimon?: number;
  ceiling?: number;
  stock?: number;
  /** On a goal row: the ratio it is about, and the goal. */
  ratio?: number;
  goal?: { op: '>=' | '<='; value: number };
  /** Undefined when a side it needs was not measured. */
  met?: boolean;
}

const poll = { timeoutMs: 60_000, intervalMs: 100, failOnError: true };

/** Which history messages one read of the whole room produced in the clear, and how. */
interface Read {
  decrypted: Set<number>;
  pages: number;
}

// --- Matrix /messages, raw --------------------------------------------------------------------

interface RawEvent {
  type?: string;
  event_id?: string;
  content?: Record<string, unknown>;
  [key: string]: unknown;
}

/** Every page of a room's /messages from the newest back (dir=b), with this token. */
async function* messagePages(
  baseUrl: string,
  token: string,
  roomId: string,
): AsyncGenerator<RawEvent[]> {
  let from: string | undefined;
  for (;;) {
    const url = new URL(
      `${baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages`,
    );
    url.searchParams.set('dir', 'b');
    url.searchParams.set('limit', String(PAGE));
    if (from) url.searchParams.set('from', from);
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    if (!res.ok) throw new Error(`/messages at ${baseUrl}: ${res.status} ${await res.text()}`);
    const page = (await res.json()) as { chunk?: RawEvent[]; end?: string };
    const chunk = page.chunk ?? [];
    yield chunk;
    if (!page.end || chunk.length === 0) return;
    from = page.end;
  }
}

// --- the sides ---------------------------------------------------------------------------------

/** Ours: the whole history through the gateway's timeline route, pages of PAGE. */
async function ourHistory(gateway: SpawnedGateway, token: string, roomId: string): Promise<Read> {
  const read: Read = { decrypted: new Set(), pages: 0 };
  const base = `/v1/rooms/${encodeURIComponent(roomId)}/timeline?limit=${PAGE}`;
  let from: string | undefined;
  do {
    const res = await gateway.request(
      from === undefined ? base : `${base}&from=${encodeURIComponent(from)}`,
      { token },
    );
    if (res.status !== 200) throw new Error(`our timeline: HTTP ${res.status} ${res.text}`);
    const page = res.json() as { items: { decrypted: boolean; body?: string }[]; next?: string };
    read.pages++;
    for (const item of page.items) {
      const index = item.decrypted ? historyIndex(item.body) : undefined;
      if (index !== undefined) read.decrypted.add(index);
    }
    from = page.next;
  } while (from !== undefined && read.pages < EVENTS / PAGE + 20);
  return read;
}

/** Pantalaimon: the same pages of /messages through the proxy, which decrypts them. */
async function pantalaimonHistory(
  pan: Pantalaimon,
  user: PantalaimonUser,
  roomId: string,
): Promise<Read> {
  const read: Read = { decrypted: new Set(), pages: 0 };
  for await (const chunk of messagePages(pan.baseUrl, user.accessToken, roomId)) {
    read.pages++;
    for (const event of chunk) {
      // What it could not decrypt stays m.room.encrypted.
      const index = event.type === 'm.room.message' ? historyIndex(event.content?.body) : undefined;
      if (index !== undefined) read.decrypted.add(index);
    }
  }
  return read;
}

/**
 * The ceiling: a bare OlmMachine, in memory, holding the same Megolm sessions bob shared
 * (exported by the stock client carol, which received them by to-device, and imported here),
 * knowing bob's devices and cross-signing keys (one /keys/query, before anything is timed), and
 * decrypting with the settings our endpoint uses. Our endpoint cannot lend its own machine:
 * its store is sealed by its vault and held open by the endpoint process. So this is the engine
 * doing only what our timeline route cannot avoid doing per event, on events fetched before.
 */
interface Ceiling {
  run(): Promise<Read>;
  close(): void;
}

async function startCeiling(
  hs: { baseUrl: string },
  carol: StockPeer,
  token: string,
  bob: string,
  roomId: string,
): Promise<Ceiling> {
  await wasm.initAsync();
  // carol's user id, so that the key query it makes asks only this homeserver.
  const machine = await wasm.OlmMachine.initialize(
    new wasm.UserId(carol.userId),
    new wasm.DeviceId(`CEILING${randomBytes(3).toString('hex').toUpperCase()}`),
  );
  await machine.updateTrackedUsers([new wasm.UserId(bob)]);
  for (const request of await machine.outgoingRequests()) {
    if (!(request instanceof wasm.KeysQueryRequest)) continue; // its own keys are never uploaded
    const res = await fetch(`${hs.baseUrl}/_matrix/client/v3/keys/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: request.body,
    });
    if (!res.ok) throw new Error(`ceiling: /keys/query answered ${res.status}`);
    await machine.markRequestAsSent(request.id, request.type, await res.text());
  }
  const imported = await machine.importExportedRoomKeys(
    await carol.crypto.exportRoomKeysAsJson(),
    () => undefined,
  );
  progress(`  ceiling: imported ${imported.importedCount} of ${imported.totalCount} room keys`);
  const events: string[] = [];
  for await (const chunk of messagePages(hs.baseUrl, token, roomId)) {
    for (const event of chunk) {
      if (event.type === 'm.room.encrypted')
        events.push(JSON.stringify({ ...event, room_id: roomId }));
    }
  }
  const room = new wasm.RoomId(roomId);
  const settings = decryptionSettings(DEFAULT_TRUST);
  return {
    async run() {
      const read: Read = { decrypted: new Set(), pages: 0 };
      for (const event of events) {
        let decrypted: wasm.DecryptedRoomEvent;
        try {
          decrypted = await machine.decryptRoomEvent(event, room, settings);
        } catch {
          continue; // counted as not decrypted
        }
        const clear = JSON.parse(decrypted.event) as { content?: { body?: unknown } };
        decrypted.free();
        const index = historyIndex(clear.content?.body);
        if (index !== undefined) read.decrypted.add(index);
      }
      return read;
    },
    close() {
      machine.close();
    },
  };
}

// --- our sends: queued through the gateway, acknowledged on its event stream -----------------

interface OurSender {
  /**
   * POSTs the message; resolves when the stream says the homeserver took it. Both times are ms
   * from the POST: until its 202 (durably queued), and until the `sent` event.
   */
  send(body: string): Promise<{ queuedMs: number; ackedMs: number }>;
  close(): void;
}

async function ourSender(
  gateway: SpawnedGateway,
  token: string,
  roomId: string,
): Promise<OurSender> {
  const stream: EventStream = await openEventStream(gateway.target, { token });
  if (stream.status !== 200) throw new Error(`our event stream: HTTP ${stream.status}`);
  /** A `sent` event may come before the POST's answer: kept here until asked for. */
  const arrived = new Map<string, number>();
  const waiting = new Map<string, (at: number) => void>();
  void (async () => {
    for (;;) {
      let event;
      try {
        event = await stream.next(60_000);
      } catch {
        continue; // only heartbeats for a minute
      }
      if (event === undefined) return; // closed
      if (event.event !== 'sent') continue;
      const { txnId } = JSON.parse(event.data) as { txnId?: unknown };
      if (typeof txnId !== 'string') continue;
      const at = performance.now();
      const waiter = waiting.get(txnId);
      if (waiter) waiter(at);
      else arrived.set(txnId, at);
    }
  })();
  const path = `/v1/rooms/${encodeURIComponent(roomId)}/messages`;
  return {
    async send(body) {
      const t0 = performance.now();
      const res = await gateway.request(path, { method: 'POST', token, body: { body } });
      const answered = performance.now();
      if (res.status !== 202) throw new Error(`our send: HTTP ${res.status} ${res.text}`);
      const { txnId } = res.json() as { txnId: string };
      const at =
        arrived.get(txnId) ??
        (await new Promise<number>((resolve, reject) => {
          const timer = setTimeout(() => {
            waiting.delete(txnId);
            reject(new Error(`our send: no sent event for ${txnId} within 30 s`));
          }, 30_000);
          waiting.set(txnId, (t) => {
            clearTimeout(timer);
            waiting.delete(txnId);
            resolve(t);
          });
        }));
      arrived.delete(txnId);
      return { queuedMs: answered - t0, ackedMs: at - t0 };
    },
    close() {
      stream.close();
    },
  };
}

/** Pantalaimon's send: PUT through the proxy, which encrypts; its 200 is the homeserver's. */
async function pantalaimonSend(
  pan: Pantalaimon,
  user: PantalaimonUser,
  roomId: string,
  body: string,
): Promise<number> {
  const txn = `bench-${randomBytes(8).toString('hex')}`;
  const url = `${pan.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`;
  const t0 = performance.now();
  const res = await fetch(url, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${user.accessToken}` },
    body: JSON.stringify({ msgtype: 'm.text', body }),
  });
  const text = await res.text();
  const ms = performance.now() - t0;
  if (res.status !== 200 || !/"event_id"/.test(text)) {
    throw new Error(`Pantalaimon send: HTTP ${res.status} ${text.slice(0, 200)}`);
  }
  return ms;
}

/** A process and all its descendants, for memory. */
async function processTree(pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const children = text.trim().split(/\s+/).filter(Boolean).map(Number);
  const below = await Promise.all(children.map(processTree));
  return [pid, ...below.flat()];
}

/** gateway, endpoint, keyvault: the folder of the main script (main.ts, or a bundle) it runs. */
async function processName(pid: number): Promise<string> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  const main = argv.find((a) => /(^|\/)main(\.[\w-]+)*\.m?[jt]s$/.test(a));
  return main ? basename(dirname(main)) : (argv[0] ?? String(pid));
}

// --- the run -----------------------------------------------------------------------------------

interface Result {
  rows: Row[];
  notes: string[];
  /** Synapse's /messages alone, the same pages with nothing decrypted: events/s. */
  fetchOnly: number;
  pantalaimon: { measured: boolean; reason?: string };
}

async function main(): Promise<Result> {
  const notes: string[] = [];
  const stops: (() => unknown)[] = [];
  const gatewayStderr: string[] = [];
  /** Why Pantalaimon is not (or no longer) measured; undefined while it is. */
  let panReason: string | undefined;
  const panFailed = (e: unknown): void => {
    panReason = e instanceof Error ? e.message.split('\n')[0] : String(e);
    progress(`Pantalaimon is not measured: ${panReason}`);
  };
  const dir = await makeTempDir('bench-peers');
  try {
    progress('starting Synapse and swtpm');
    const [hs, tpm] = await Promise.all([startSynapse(), startSwtpm()]);
    stops.push(
      () => hs.stop(),
      () => tpm.stop(),
    );
    const register = (name: string): Promise<SynapseUser> => hs.registerUser(name);
    const [alice, bob, panUser, carol] = await Promise.all([
      register('alice'), // our endpoint, behind its gateway
      register('bob'), // the stock peer that sends the history
      register('pan'), // the user whose client goes through Pantalaimon
      register('carol'), // the stock client read for reference (and the ceiling's keys)
    ]);

    progress('starting Pantalaimon, our gateway (endpoint, vault) and the stock peers');
    const startPan = async (): Promise<{ pan: Pantalaimon; user: PantalaimonUser } | undefined> => {
      try {
        const pan = await startPantalaimon({ homeserver: hs.baseUrl });
        stops.push(() => pan.stop());
        return { pan, user: await pan.login(panUser.localpart, panUser.password) };
      } catch (e) {
        panFailed(e);
        return undefined;
      }
    };
    const startOurs = async (): Promise<{ gateway: SpawnedGateway; token: string }> => {
      const prepared = await prepareCompartments(dir, {
        homeserver: hs.baseUrl,
        tpm,
        user: alice,
        clients: [
          {
            name: 'bench',
            capabilities: [
              'rooms.read',
              'rooms.join',
              'messages.read',
              'messages.send',
              'events.stream',
            ],
            requestsPerMinute: 60_000,
          },
        ],
      });
      // Loopback TCP, as Pantalaimon listens, rather than the gateway's usual Unix socket.
      const config = join(dir, 'gateway.json');
      await writeFile(
        config,
        JSON.stringify({ tcp: { host: '127.0.0.1', port: 0 }, endpointConfig: 'endpoint.json' }),
      );
      const gateway = await spawnGateway(config, { onStderr: (l) => gatewayStderr.push(l) });
      stops.push(() => gateway.stop());
      return { gateway, token: prepared.tokens.bench ?? '' };
    };
    const peer = async (user: SynapseUser): Promise<StockPeer> => {
      const p = await StockPeer.start(hs.baseUrl, user);
      stops.push(() => p.stop());
      // Our endpoint neither shows messages from nor shares room keys with devices their owner
      // did not cross-sign: both stock peers are set up as Element sets them up.
      await p.bootstrapCrossSigning(user.password);
      return p;
    };
    const [panSide, ours, bobPeer, carolPeer] = await Promise.all([
      startPan(),
      startOurs(),
      peer(bob),
      peer(carol),
    ]);
    let pan = panSide;

    progress('bob creates the encrypted room; everyone joins');
    const roomId = await bobPeer.createEncryptedRoom({
      invite: [alice.userId, panUser.userId, carol.userId],
      name: 'bench peers',
    });
    const joinPan = async (): Promise<void> => {
      if (!pan) return;
      const { pan: proxy, user } = pan;
      try {
        const res = await fetch(
          `${proxy.baseUrl}/_matrix/client/v3/join/${encodeURIComponent(roomId)}`,
          {
            method: 'POST',
            headers: {
              'content-type': 'application/json',
              authorization: `Bearer ${user.accessToken}`,
            },
            body: '{}',
          },
        );
        if (!res.ok) throw new Error(`join through Pantalaimon: ${res.status} ${await res.text()}`);
      } catch (e) {
        panFailed(e);
        pan = undefined;
      }
    };
    await Promise.all([
      waitUntil(
        'our endpoint to see the invite and join',
        async () =>
          (
            await ours.gateway.request(`/v1/rooms/${encodeURIComponent(roomId)}/join`, {
              method: 'POST',
              token: ours.token,
            })
          ).status === 200,
        { timeoutMs: 60_000, intervalMs: 250 },
      ),
      joinPan(),
      carolPeer.acceptInvite(roomId),
    ]);
    for (const u of [alice, carol, ...(pan ? [panUser] : [])])
      await bobPeer.waitForMember(roomId, u.userId, 60_000);

    progress(`bob sends ${EVENTS} encrypted messages (8 at a time)`);
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

    progress('waiting until every side decrypts all of it (untimed check passes)');
    const check = async (name: string, run: () => Promise<Read>): Promise<void> => {
      let decrypted = 0;
      await waitUntil(
        () => `${name} to decrypt the history (decrypted ${decrypted} of ${EVENTS} events)`,
        async () => {
          decrypted = (await run()).decrypted.size;
          return decrypted === EVENTS;
        },
        { ...poll, timeoutMs: 120_000, intervalMs: 1000 },
      );
    };
    const runs: Partial<Record<Side, () => Promise<Read>>> = {
      ours: () => ourHistory(ours.gateway, ours.token, roomId),
      stock: async () => {
        const r = await stockHistory(carolPeer.client, roomId, { pageSize: PAGE });
        return { decrypted: r.decrypted, pages: r.pages };
      },
    };
    await check('our endpoint', runs.ours as () => Promise<Read>);
    await check('the stock client', runs.stock as () => Promise<Read>);
    if (pan) {
      const { pan: proxy, user } = pan;
      const panRun = (): Promise<Read> => pantalaimonHistory(proxy, user, roomId);
      try {
        await check('Pantalaimon', panRun);
        runs.pantalaimon = panRun;
      } catch (e) {
        panFailed(e);
        pan = undefined;
      }
    }
    progress('ceiling: a bare OlmMachine with the same room keys, events pre-fetched');
    const ceiling = await startCeiling(hs, carolPeer, carol.accessToken, bob.userId, roomId);
    stops.push(() => {
      ceiling.close();
    });
    const first = await ceiling.run();
    if (first.decrypted.size !== EVENTS) {
      throw new Error(`the bare OlmMachine decrypted ${first.decrypted.size} of ${EVENTS} events`);
    }
    runs.ceiling = () => ceiling.run();

    progress(`1. reading the history, ${PASSES} timed passes per side, interleaved`);
    const rate: Record<Side, number[]> = { ours: [], pantalaimon: [], ceiling: [], stock: [] };
    const fetchSeconds: number[] = [];
    for (let pass = 0; pass < PASSES; pass++) {
      for (const side of SIDES) {
        const run = runs[side];
        if (!run) continue;
        const t0 = performance.now();
        const r = await run();
        const s = (performance.now() - t0) / 1000;
        if (r.decrypted.size !== EVENTS)
          throw new Error(`${side}: decrypted ${r.decrypted.size} of ${EVENTS} in a timed pass`);
        rate[side].push(EVENTS / s);
        const pages = side === 'ceiling' ? '' : ` (${r.pages} pages)`;
        progress(`  ${side}: ${EVENTS} events in ${s.toFixed(3)} s${pages}`);
      }
      // What no reader that fetches from the homeserver avoids: the same pages, undecrypted.
      const t0 = performance.now();
      let pages = 0;
      let fetched = 0;
      for await (const chunk of messagePages(hs.baseUrl, carol.accessToken, roomId)) {
        pages++;
        fetched += chunk.length;
      }
      fetchSeconds.push((performance.now() - t0) / 1000);
      const took = (fetchSeconds.at(-1) ?? 0).toFixed(3);
      progress(`  fetch only: ${fetched} events in ${took} s (${pages} pages)`);
    }

    progress(`2. ${SENDS} sends per side, interleaved, after one warm-up each`);
    const sender = await ourSender(ours.gateway, ours.token, roomId);
    stops.push(() => {
      sender.close();
    });
    /** Ours only: until the POST's 202 (durably queued), for what the ack adds to it. */
    const queued: number[] = [];
    const sends: Partial<Record<Side, (i: number) => Promise<number>>> = {
      ours: async (i) => {
        const { queuedMs, ackedMs } = await sender.send(`latency probe ours ${i}`);
        if (i >= 0) queued.push(queuedMs);
        return ackedMs;
      },
      stock: async (i) => {
        const t0 = performance.now();
        await carolPeer.sendText(roomId, `latency probe stock ${i}`);
        return performance.now() - t0;
      },
    };
    if (pan) {
      const { pan: proxy, user } = pan;
      sends.pantalaimon = (i) => pantalaimonSend(proxy, user, roomId, `latency probe pan ${i}`);
    }
    const latency: Record<Side, number[]> = { ours: [], pantalaimon: [], ceiling: [], stock: [] };
    for (let i = -1; i < SENDS; i++) {
      for (const side of SIDES) {
        const send = sends[side];
        if (!send) continue;
        try {
          const ms = await send(i);
          if (i >= 0) latency[side].push(ms);
        } catch (e) {
          if (side !== 'pantalaimon') throw e;
          panFailed(e);
          delete sends.pantalaimon;
          latency.pantalaimon = [];
        }
      }
    }

    progress('3. resident memory');
    const ourProcesses = await Promise.all(
      (await processTree(ours.gateway.process.pid ?? 0)).map(async (pid) => ({
        name: await processName(pid),
        mib: (await processMemory(pid)).rss / 2 ** 20,
      })),
    );
    const memory: Partial<Record<Side, number>> = {
      ours: ourProcesses.reduce((sum, p) => sum + p.mib, 0),
      ...(pan ? { pantalaimon: (await processMemory(pan.pan.pid)).rss / 2 ** 20 } : {}),
    };

    const rows: Row[] = [];
    const sided = (
      measurement: string,
      unit: string,
      values: Partial<Record<Side, number | undefined>>,
    ): Row => {
      const row: Row = { measurement, unit };
      for (const side of SIDES) if (values[side] !== undefined) row[side] = values[side];
      return row;
    };
    const goalRow = (
      measurement: string,
      a: number | undefined,
      b: number | undefined,
      op: '>=' | '<=',
      value: number,
    ): Row => {
      const ratio = a !== undefined && b !== undefined ? a / b : undefined;
      return {
        measurement,
        unit: 'x',
        ...(ratio === undefined
          ? {}
          : { ratio, met: op === '>=' ? ratio >= value : ratio <= value }),
        goal: { op, value },
      };
    };
    const med = (samples: number[]): number | undefined =>
      samples.length > 0 ? median(samples) : undefined;
    const p99 = (samples: number[]): number | undefined =>
      samples.length > 0 ? quantile(samples, 0.99) : undefined;
    const decrypt = Object.fromEntries(SIDES.map((s) => [s, med(rate[s])]));
    rows.push(
      sided(`read the ${EVENTS}-event history, median of ${PASSES}`, 'events/s', decrypt),
      goalRow(
        'ours / Pantalaimon, read rate',
        decrypt.ours,
        decrypt.pantalaimon,
        '>=',
        GOALS.decryptVsPantalaimon,
      ),
      goalRow(
        'ours / ceiling, read rate',
        decrypt.ours,
        decrypt.ceiling,
        '>=',
        GOALS.decryptVsCeiling,
      ),
    );
    const sendP50 = Object.fromEntries(SIDES.map((s) => [s, med(latency[s])]));
    rows.push(
      sided(`send to acknowledgement, p50 of ${SENDS}`, 'ms', sendP50),
      goalRow(
        'ours / Pantalaimon, send p50',
        sendP50.ours,
        sendP50.pantalaimon,
        '<=',
        GOALS.sendVsPantalaimon,
      ),
      sided(
        `send to acknowledgement, p99 of ${SENDS}`,
        'ms',
        Object.fromEntries(SIDES.map((s) => [s, p99(latency[s])])),
      ),
      sided(`send accepted (ours: POST answered 202, durably queued), p50`, 'ms', {
        ours: med(queued),
      }),
      sided('resident memory (VmRSS) after the run', 'MiB', memory),
    );

    notes.push(
      `History: ${EVENTS} messages (about 100 characters each) sent by a stock matrix-js-sdk peer into an encrypted room while every reader was online, so each received the room keys by to-device; every read pages the whole room from the newest back, pages of ${PAGE}, and must yield all ${EVENTS} in the clear; events/s = ${EVENTS} / the pass's time; median of ${PASSES} interleaved passes after an untimed check pass.`,
      `ours = GET /v1/rooms/:roomId/timeline?limit=${PAGE}&from=... on our gateway (loopback TCP): gateway (HTTP, policy, audit log with fdatasync) -> endpoint compartment RPC -> Synapse /messages -> the Rust OlmMachine per event.`,
      `Pantalaimon = its /messages (dir=b, limit=${PAGE}, from tokens) on its loopback port with the proxied user's token: Synapse /messages, then matrix-nio with libolm (Debian's python3-olm) decrypting each event.`,
      `ceiling = a bare OlmMachine (@matrix-org/matrix-sdk-crypto-wasm ${await wasmVersion()}) in this process, in memory, with the Megolm sessions bob shared (exported by the stock client carol, imported) and bob's device and cross-signing keys (one /keys/query): decryptRoomEvent with our endpoint's decryption settings, then JSON.parse of the clear event, in a loop over the ${EVENTS} events fetched before timing. No HTTP in the timed part.`,
      'stock = a matrix-js-sdk client (Rust crypto) in this process: the same /messages pages with its token, each event decrypted by decryptEventIfNeeded (stockHistory).',
      `Sends: ${SENDS} per side into that room, interleaved, after one untimed warm-up each. ours = POST /v1/rooms/:roomId/messages (202 once durably queued) until the 'sent' event for its txnId arrives on GET /v1/events (the homeserver took it); Pantalaimon = PUT /rooms/{id}/send/m.room.message/{txn} through it until its 200 (it encrypts with matrix-nio, then forwards); stock = MatrixClient.sendMessage until it resolves with the event id. Members: bob, carol (both cross-signed stock clients), Pantalaimon's user (its device and the client's key-less login device) and ours. Our endpoint shares no room key with Pantalaimon's device (nio has no cross-signing); Pantalaimon and the stock client share with every device, ours included.`,
      `Memory: ours = our processes together (${ourProcesses.map((p) => `${p.name} ${p.mib.toFixed(1)}`).join(', ')} MiB); Pantalaimon = its one process. No GC forced.`,
    );
    const fetchS = median(fetchSeconds);
    const fetchOnly = EVENTS / fetchS;
    if (decrypt.ceiling !== undefined && decrypt.ours !== undefined) {
      const serial = EVENTS / (fetchS + EVENTS / decrypt.ceiling);
      const overlapped = Math.min(fetchOnly, decrypt.ceiling);
      const of = (x: number): string => (x / (decrypt.ceiling ?? NaN)).toFixed(2);
      notes.push(
        `Bounds for ours / ceiling: Synapse's /messages alone (the same pages with carol's token, nothing decrypted) took ${fetchS.toFixed(3)} s, ${fetchOnly.toFixed(0)} events/s (median of ${PASSES}, interleaved with the passes above). Fetching and then decrypting at the ceiling's rate allows ${serial.toFixed(0)} events/s (${of(serial)} of the ceiling); overlapping the two perfectly, ${overlapped.toFixed(0)} (${of(overlapped)}). Ours reached ${(decrypt.ours / serial).toFixed(2)} of the serial bound.`,
      );
    }
    if (panReason !== undefined) notes.push(`Pantalaimon was not measured: ${panReason}`);
    return {
      rows,
      notes,
      fetchOnly,
      pantalaimon:
        panReason === undefined ? { measured: true } : { measured: false, reason: panReason },
    };
  } catch (e) {
    if (gatewayStderr.length > 0)
      process.stderr.write(`gateway stderr:\n${gatewayStderr.slice(-10).join('\n')}\n`);
    throw e;
  } finally {
    progress('stopping everything');
    for (const stop of stops.reverse()) {
      try {
        await stop();
      } catch {
        // stopping the rest matters more
      }
    }
    await rm(dir, { recursive: true, force: true });
  }
}

async function wasmVersion(): Promise<string> {
  const file = join(
    repoRoot,
    'node_modules',
    '@matrix-org',
    'matrix-sdk-crypto-wasm',
    'package.json',
  );
  const text = await readFile(file, 'utf8').catch(() => '{}');
  return (JSON.parse(text) as { version?: string }).version ?? '?';
}

function format(row: Row, value: number | undefined): string {
  if (value === undefined) return '';
  if (row.unit === 'events/s') return value.toFixed(0);
  if (row.unit === 'MiB') return value.toFixed(1);
  return value.toFixed(2);
}

let result: Result;
try {
  result = await main();
} catch (e) {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}
progress('done');
if (args.json) {
  process.stdout.write(`${JSON.stringify({ events: EVENTS, goals: GOALS, ...result }, null, 2)}\n`);
  process.exit(0);
}
const panMissing = !result.pantalaimon.measured;
const header = [
  'measurement',
  'unit',
  'ours',
  'Pantalaimon',
  'ceiling',
  'stock',
  'ratio',
  'goal',
  'met',
];
const table = result.rows.map((r) => {
  const isGoal = r.goal !== undefined;
  const cell = (side: Side): string => {
    if (isGoal) return '';
    if (side === 'pantalaimon' && panMissing && r.pantalaimon === undefined) return 'n/a';
    return format(r, r[side]);
  };
  return [
    isGoal ? `  ${r.measurement}` : r.measurement,
    r.unit,
    ...SIDES.map(cell),
    r.ratio === undefined ? (isGoal ? 'n/a' : '') : r.ratio.toFixed(3),
    r.goal ? `${r.goal.op} ${r.goal.value}` : '',
    r.goal ? (r.met === undefined ? 'not measured' : r.met ? 'met' : 'not met') : '',
  ];
});
const widths = header.map((h, i) =>
  Math.max(h.length, ...table.map((row) => (row[i] ?? '').length)),
);
const line = (cells: string[]): string =>
  cells
    .map((c, i) => (i < 2 || i > 6 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0)))
    .join('  ')
    .trimEnd();
process.stdout.write(
  `${line(header)}\n${line(widths.map((w) => '-'.repeat(w)))}\n${table.map(line).join('\n')}\n\n`,
);
process.stdout.write(
  [
    'ratio: ours divided by the side the row names; above 1 is better for events/s, below 1 for ms.',
    ...result.notes,
  ].join('\n') + '\n',
);
process.exit(0);
