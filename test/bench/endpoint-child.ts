/**
 * The child processes of bench/endpoint.ts, one mode each, so that what is measured runs in a
 * fresh process (cold starts) or in a process of its own (memory). Parameters come as JSON in
 * the MTE_BENCH_CHILD environment variable (never argv: one holds a password); results go to
 * stdout as one JSON object per line. Every mode exits when its stdin closes (the parent died).
 *
 *   node test/bench/endpoint-child.ts stock-peer | build-store | open-store | stock-cold | commit
 */
import { hkdfSync, randomBytes } from 'node:crypto';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SyncState as SdkSyncState } from 'matrix-js-sdk';
import { historyIndex, processMemory, say, stockHistory } from './endpoint-lib.ts';

interface Params {
  baseUrl?: string;
  user?: { userId: string; accessToken: string; deviceId: string; password: string };
  roomId?: string;
  dir?: string;
  sessions?: number;
}

const mode = process.argv[2] ?? '';
const params = JSON.parse(process.env.MTE_BENCH_CHILD ?? '{}') as Params;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const stdinClosed = new Promise<void>((resolve) => process.stdin.once('end', resolve));
void stdinClosed.then(() => {
  if (mode !== 'stock-peer') process.exit(3); // the parent is gone; stock-peer exits below
});

/** The engine's store name and key derivation, as EndpointService does it. */
const CRYPTO_DB = 'mte-crypto';
const USER = '@bench:bench.invalid';
const DEVICE = 'BENCHDEVICE';
function engineKey(storeKey: Uint8Array): Uint8Array {
  return new Uint8Array(
    hkdfSync('sha256', storeKey, new Uint8Array(), 'mte-endpoint/engine-store', 32),
  );
}

function need<K extends keyof Params>(key: K): NonNullable<Params[K]> {
  const value = params[key];
  if (value === undefined) throw new Error(`${mode}: missing ${key}`);
  return value;
}

/**
 * A dev counter in a file beside the store (the vault's counter in production): it must
 * outlive the process, or the next open would see a rolled-back store.
 */
function fileCounter(dir: string): {
  read: () => Promise<bigint>;
  increment: () => Promise<bigint>;
} {
  const file = join(dir, 'counter');
  const read = async (): Promise<bigint> => {
    try {
      return BigInt((await readFile(file, 'utf8')).trim());
    } catch {
      return 0n;
    }
  };
  return {
    read,
    increment: async () => {
      const next = (await read()) + 1n;
      await writeFile(file, String(next), { mode: 0o600 });
      return next;
    },
  };
}

async function storeKey(dir: string): Promise<Uint8Array> {
  const file = join(dir, 'store.key');
  try {
    return new Uint8Array(await readFile(file));
  } catch {
    const key = randomBytes(32);
    await writeFile(file, key, { mode: 0o600 });
    return new Uint8Array(key);
  }
}

/** Room keys made the real way: a second OlmMachine starts a Megolm session per room. */
async function makeRoomKeys(count: number, prefix: string): Promise<string> {
  const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
  await wasm.initAsync();
  const sender = await wasm.OlmMachine.initialize(
    new wasm.UserId('@sender:bench.invalid'),
    new wasm.DeviceId('SENDER'),
  );
  const settings = new wasm.EncryptionSettings();
  for (let i = 0; i < count; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, count - i) }, (_, j) =>
        sender.shareRoomKey(new wasm.RoomId(`!${prefix}${i + j}:bench.invalid`), [], settings),
      ),
    );
  }
  const json = await sender.exportRoomKeys(() => true);
  sender.close();
  return json;
}

async function stockPeer(): Promise<void> {
  const { StockPeer } = await import('../fixtures/peer.ts');
  const user = need('user');
  const roomId = need('roomId');
  const peer = await StockPeer.start(need('baseUrl'), user);
  await peer.bootstrapCrossSigning(user.password);
  await peer.acceptInvite(roomId, 60_000);
  say({ event: 'joined' });
  const next = await lines.next();
  if (next.done) {
    await peer.stop();
    process.exit(3);
  }
  const { expect, newest } = JSON.parse(next.value) as { expect: number; newest: number };
  // The history arrives by sync first, as it does for the endpoint: wait for all of it.
  const received = (): number =>
    peer.messages.filter((m) => m.roomId === roomId && historyIndex(m.body) !== undefined).length;
  const deadline = Date.now() + 120_000;
  while (received() < expect && Date.now() < deadline) await sleep(100);
  const history = await stockHistory(peer.client, roomId, { pageSize: 100, max: newest });
  say({
    event: 'decrypted',
    received: received(),
    events: history.events,
    decrypted: history.decrypted.size,
    ...(await processMemory(process.pid)),
  });
  await stdinClosed;
  await peer.stop();
  process.exit(0);
}

async function buildStore(): Promise<void> {
  const dir = need('dir');
  const sessions = need('sessions');
  const { openDurableStore } = await import('../../endpoint/store/index.ts');
  const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
  const t0 = performance.now();
  const json = await makeRoomKeys(sessions, 'room');
  const t1 = performance.now();
  const key = await storeKey(dir);
  const store = await openDurableStore({
    dir: join(dir, 'store'),
    storeKey: key,
    counter: fileCounter(dir),
  });
  const uninstall = store.install();
  const handle = await wasm.StoreHandle.openWithKey(CRYPTO_DB, engineKey(key));
  const machine = await wasm.OlmMachine.initFromStore(
    new wasm.UserId(USER),
    new wasm.DeviceId(DEVICE),
    handle,
  );
  handle.free();
  const imported = await machine.importExportedRoomKeys(json, () => undefined);
  const t2 = performance.now();
  const total = (await machine.roomKeyCounts()).total;
  machine.close();
  await store.close();
  uninstall();
  let bytes = 0;
  for (const name of await readdir(join(dir, 'store')))
    bytes += (await stat(join(dir, 'store', name))).size;
  say({
    event: 'built',
    imported: imported.importedCount,
    sessions: total,
    makeMs: t1 - t0,
    importMs: t2 - t1,
    storeBytes: bytes,
  });
}

async function openStore(): Promise<void> {
  const dir = need('dir');
  const key = await storeKey(dir);
  const counter = fileCounter(dir);
  const { openDurableStore } = await import('../../endpoint/store/index.ts');
  const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
  // Timed: the sealed store's open (decrypt, verify, replay into IndexedDB) and the engine's
  // start on it, as EndpointService and CryptoEngine.open do. The key is the vault's, given.
  const t0 = performance.now();
  const store = await openDurableStore({ dir: join(dir, 'store'), storeKey: key, counter });
  const uninstall = store.install();
  const opened = performance.now();
  await wasm.initAsync();
  const handle = await wasm.StoreHandle.openWithKey(CRYPTO_DB, engineKey(key));
  const machine = await wasm.OlmMachine.initFromStore(
    new wasm.UserId(USER),
    new wasm.DeviceId(DEVICE),
    handle,
  );
  handle.free();
  const t1 = performance.now();
  say({ event: 'ready', ms: t1 - t0, storeOpenMs: opened - t0 });
  const sessions = (await machine.roomKeyCounts()).total;
  machine.close();
  await store.close();
  uninstall();
  say({ event: 'closed', sessions });
}

async function stockCold(): Promise<void> {
  await import('../fixtures/peer.ts'); // quiets the SDK's global logger, as in the tests
  const { ClientEvent, SyncState, createClient } = await import('matrix-js-sdk');
  const user = need('user');
  const noop = (): void => undefined;
  const logger = {
    trace: noop,
    debug: noop,
    info: noop,
    warn: noop,
    error: noop,
    getChild: () => logger,
  };
  // Timed: what the stock client does from nothing to a usable client, with no store at all.
  const t0 = performance.now();
  const client = createClient({
    baseUrl: need('baseUrl'),
    userId: user.userId,
    accessToken: user.accessToken,
    deviceId: user.deviceId,
    logger,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise<void>((resolve, reject) => {
    client.on(ClientEvent.Sync, (state: SdkSyncState) => {
      if (state === SyncState.Prepared || state === SyncState.Syncing) resolve();
      else if (state === SyncState.Error) reject(new Error('first sync failed'));
    });
  });
  await client.startClient({ initialSyncLimit: 20 });
  await prepared;
  const t1 = performance.now();
  say({ event: 'ready', ms: t1 - t0 });
  client.stopClient();
  say({ event: 'closed' });
}

async function commit(): Promise<void> {
  const dir = need('dir');
  const runs = need('sessions');
  const { openDurableStore } = await import('../../endpoint/store/index.ts');
  const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
  const key = await storeKey(dir);
  const store = await openDurableStore({
    dir: join(dir, 'store'),
    storeKey: key,
    counter: fileCounter(dir),
  });
  const uninstall = store.install();
  const value = (): string => randomBytes(768).toString('base64'); // 1 KiB of text
  const delta = async (
    run: () => Promise<number[]>,
  ): Promise<{ samples: number[]; records: number; bytes: number }> => {
    await store.flush();
    const before = store.stats();
    const samples = await run();
    await store.flush();
    const after = store.stats();
    if (after.compactions !== before.compactions) throw new Error('compacted while measuring');
    return {
      samples,
      records: after.journalRecords - before.journalRecords,
      bytes: after.journalBytes - before.journalBytes,
    };
  };

  for (let i = 0; i < 10; i++) await store.appState.put(`warm/${i}`, value());
  const sequential = await delta(async () => {
    const samples: number[] = [];
    for (let i = 0; i < runs; i++) {
      const v = value();
      const t = performance.now();
      await store.appState.put(`seq/${i}`, v);
      samples.push(performance.now() - t);
    }
    return samples;
  });
  const concurrent = await delta(async () => {
    const values = Array.from({ length: runs }, value);
    const t = performance.now();
    await Promise.all(values.map((v, i) => store.appState.put(`conc/${i}`, v)));
    return [(performance.now() - t) / runs];
  });

  // Engine transactions: room keys imported one at a time into the store-backed OlmMachine.
  const keys = JSON.parse(await makeRoomKeys(runs + 5, 'commit')) as unknown[];
  const handle = await wasm.StoreHandle.openWithKey(CRYPTO_DB, engineKey(key));
  const machine = await wasm.OlmMachine.initFromStore(
    new wasm.UserId(USER),
    new wasm.DeviceId(DEVICE),
    handle,
  );
  handle.free();
  for (const k of keys.slice(runs)) await machine.importExportedRoomKeys(JSON.stringify([k]), noop);
  const engine = await delta(async () => {
    const samples: number[] = [];
    for (const k of keys.slice(0, runs)) {
      const json = JSON.stringify([k]);
      const t = performance.now();
      await machine.importExportedRoomKeys(json, noop);
      samples.push(performance.now() - t);
    }
    return samples;
  });
  machine.close();
  await store.close();
  uninstall();
  say({ event: 'commit', sequential, concurrent, engine });
}

function noop(): void {
  // progress callback
}

const modes: Record<string, () => Promise<void>> = {
  'stock-peer': stockPeer,
  'build-store': buildStore,
  'open-store': openStore,
  'stock-cold': stockCold,
  commit,
};
const run = modes[mode];
if (!run) {
  process.stderr.write(
    `usage: node test/bench/endpoint-child.ts ${Object.keys(modes).join('|')}\n`,
  );
  process.exit(2);
}
run().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench child ${mode}: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
