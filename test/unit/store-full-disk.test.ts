/**
 * A full disk (ENOSPC, EDQUOT) at the store level, on the simulated disk: commits are refused
 * with STORAGE_FULL while it lasts (their records wait, in order), the store retries on its
 * own and carries on when space returns, a compaction that finds no space leaves the current
 * epoch usable, and every acknowledged commit is there after a reopen.
 */
import { describe, expect, it } from 'vitest';
import {
  StoreCode,
  StoreError,
  openDatabase,
  openDurableStore,
  requestResult,
  transactionDone,
  type DurableStore,
  type DurableStoreHealth,
  type DurableStoreOptions,
  type IdbDatabase,
} from '../../endpoint/store/index.ts';
import { JournalWriter } from '../../endpoint/store/journal.ts';
import { deriveKeys } from '../../endpoint/store/keys.ts';
import { SimCounter, SimDisk, errno } from '../fixtures/power-loss.ts';

const DIR = '/data/store';
const KEY = new Uint8Array(32).fill(7);
const silent = { warn: () => undefined, info: () => undefined };

function setup(): { disk: SimDisk; counter: SimCounter } {
  const disk = new SimDisk(new Map([['/data', null]]));
  return { disk, counter: new SimCounter(disk) };
}

function open(
  disk: SimDisk,
  counter: SimCounter,
  extra: Partial<DurableStoreOptions> = {},
): Promise<DurableStore> {
  return openDurableStore({
    dir: DIR,
    storeKey: KEY,
    counter,
    fs: disk,
    logger: silent,
    fullRetryMs: 10,
    compactOnClose: false,
    ...extra,
  });
}

function kvDb(store: DurableStore): Promise<IdbDatabase> {
  return openDatabase(store.indexedDB, 'test', 1, (db) => {
    db.createObjectStore('kv');
  });
}

function put(db: IdbDatabase, key: string, value: unknown): Promise<void> {
  const tx = db.transaction('kv', 'readwrite');
  const done = transactionDone(tx);
  tx.objectStore('kv').put(value, key);
  return done;
}

async function readAll(db: IdbDatabase): Promise<Map<unknown, unknown>> {
  const tx = db.transaction('kv', 'readonly');
  const [keys, values] = await Promise.all([
    requestResult(tx.objectStore('kv').getAllKeys()),
    requestResult(tx.objectStore('kv').getAll()),
  ]);
  return new Map(keys.map((k, i) => [k, values[i]]));
}

async function until(condition: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** What a commit refused for lack of space looks like to an IndexedDB caller. */
const FULL_ABORT = /STORAGE_FULL/;

async function reopenKeys(disk: SimDisk, counter: SimCounter): Promise<Map<unknown, unknown>> {
  const store = await open(disk, counter);
  try {
    const db = await kvDb(store);
    const all = await readAll(db);
    db.close();
    return all;
  } finally {
    await store.close();
  }
}

describe('full disk (store level)', () => {
  it('refuses commits with STORAGE_FULL while full, retries by itself and recovers', async () => {
    const { disk, counter } = setup();
    const health: DurableStoreHealth[] = [];
    const store = await open(disk, counter, { onHealth: (h) => health.push(h) });
    const db = await kvDb(store);
    await put(db, 'before', 1);
    const acked = new Set(['before']);

    // Room for part of the next record only: the write is short, then ENOSPC.
    disk.capacity = disk.used() + 300;
    const big = 'x'.repeat(2000);
    await expect(put(db, 'refused-1', big)).rejects.toThrow(FULL_ABORT);
    expect(store.health()).toMatchObject({ full: true, waiting: 1, failed: null });
    expect(store.stats()).toMatchObject({ full: true, failed: null });
    expect(store.health().fullSince).toEqual(expect.any(Number));
    expect(health.at(-1)).toMatchObject({ full: true });
    // The partial write was cut back off: the file ends at the last good record.
    expect(disk.image().get(`${DIR}/journal`)?.length).toBe(store.stats().journalBytes);

    // While full, new commits are refused at once (no waiting for a disk write).
    const started = Date.now();
    await expect(put(db, 'refused-2', 'small')).rejects.toThrow(FULL_ABORT);
    expect(Date.now() - started).toBeLessThan(500);
    await expect(store.flush()).rejects.toMatchObject({
      code: StoreCode.Full,
      message: 'the disk is full: 2 commits waiting; retrying',
    });
    // It keeps retrying (nothing changes while there is no space).
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(store.health().full).toBe(true);

    // Space returns: the waiting records are written in order, commits are accepted again.
    disk.capacity = Infinity;
    await until(() => !store.health().full);
    expect(health.at(-1)).toMatchObject({ full: false, fullSince: null, waiting: 0 });
    await put(db, 'after', 3);
    acked.add('after');
    await store.flush();
    db.close();
    await store.close();

    const all = await reopenKeys(disk, counter);
    for (const key of acked) expect(all.has(key)).toBe(true);
    // The refused commits were kept in memory all along, so they were written too (in order):
    // memory and disk never parted.
    expect([...all.keys()]).toEqual(['after', 'before', 'refused-1', 'refused-2']);
  });

  it('with holdWhileFull, commits wait for space instead of failing, and complete in order', async () => {
    const { disk, counter } = setup();
    const store = await open(disk, counter, { holdWhileFull: true });
    const db = await kvDb(store);
    await put(db, 'before', 1);
    disk.capacity = disk.used() + 300;
    const settled: string[] = [];
    const first = put(db, 'held-1', 'x'.repeat(2000)).then(() => settled.push('held-1'));
    const second = put(db, 'held-2', 'small').then(() => settled.push('held-2'));
    await until(() => store.health().full);
    // Neither fails nor completes while the disk is full: the engine above sees a slow
    // commit, never an aborted one whose change it already holds in memory.
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(settled).toEqual([]);
    expect(store.health()).toMatchObject({ full: true, failed: null });
    disk.capacity = Infinity;
    await Promise.all([first, second]);
    expect(settled).toEqual(['held-1', 'held-2']);
    expect(store.health().full).toBe(false);
    db.close();
    await store.close();
    const all = await reopenKeys(disk, counter);
    expect([...all.keys()]).toEqual(['before', 'held-1', 'held-2']);
  });

  it('treats ENOSPC from fdatasync and EDQUOT the same way', async () => {
    const { disk, counter } = setup();
    const store = await open(disk, counter);
    const db = await kvDb(store);
    let failures = 3;
    disk.inject = (call) => {
      if (call.op !== 'datasync' || failures <= 0) return undefined;
      failures--;
      return errno(failures % 2 === 0 ? 'EDQUOT' : 'ENOSPC', 'fdatasync', call.path);
    };
    await expect(put(db, 'a', 1)).rejects.toThrow(FULL_ABORT);
    expect(store.health().full).toBe(true);
    await until(() => !store.health().full);
    await put(db, 'b', 2);
    db.close();
    await store.close();
    expect([...(await reopenKeys(disk, counter)).keys()]).toEqual(['a', 'b']);
  });

  it('still stops for good on other write errors', async () => {
    const { disk, counter } = setup();
    const store = await open(disk, counter);
    const db = await kvDb(store);
    disk.inject = (call) => (call.op === 'write' ? errno('EIO', 'write', call.path) : undefined);
    await expect(put(db, 'a', 1)).rejects.toThrow(/STORE_FAILED/);
    expect(store.health()).toMatchObject({ full: false, failed: StoreCode.Failed });
    disk.inject = null;
    await expect(put(db, 'b', 2)).rejects.toBeDefined();
    db.close();
    await store.close();
  });

  it('a compaction that finds no space leaves the current epoch usable', async () => {
    const { disk, counter } = setup();
    const store = await open(disk, counter);
    const db = await kvDb(store);
    for (let i = 0; i < 5; i++) await put(db, `k${i}`, 'v'.repeat(400));
    const epoch = store.stats().epoch;
    const before = counter.value;
    // Appends fit, a whole snapshot does not.
    disk.capacity = disk.used() + 1500;
    await expect(store.compact()).rejects.toMatchObject({ code: StoreCode.Full });
    expect(store.stats()).toMatchObject({ epoch, failed: null });
    expect(counter.value).toBe(before);
    expect((await disk.readdir(DIR)).sort()).toEqual(['journal', 'snapshot']);
    await put(db, 'small', 1);
    // With space, the next compaction goes through.
    disk.capacity = Infinity;
    await store.compact();
    expect(store.stats().epoch).toBe(epoch + 1n);
    db.close();
    await store.close();
    expect((await reopenKeys(disk, counter)).size).toBe(6);
  });

  it('a compaction past its counter increment waits for space instead of failing', async () => {
    const { disk, counter } = setup();
    const health: DurableStoreHealth[] = [];
    const store = await open(disk, counter, { onHealth: (h) => health.push(h) });
    const db = await kvDb(store);
    await put(db, 'a', 1);
    const epoch = store.stats().epoch;
    let armed = false;
    let failures = 4;
    disk.inject = (call) => {
      if (call.op === 'rename' && call.path.includes('journal.')) armed = true;
      if (!armed || call.op !== 'syncDir' || failures <= 0) return undefined;
      failures--;
      return errno('ENOSPC', 'fsync', call.path);
    };
    await store.compact();
    expect(failures).toBe(0);
    expect(store.stats()).toMatchObject({ epoch: epoch + 1n, failed: null, full: false });
    expect(health.map((h) => h.full)).toEqual([true, false]);
    await put(db, 'b', 2);
    db.close();
    await store.close();
    expect([...(await reopenKeys(disk, counter)).keys()]).toEqual(['a', 'b']);
  });

  it('closes without waiting while full; acknowledged commits survive', async () => {
    const { disk, counter } = setup();
    const store = await open(disk, counter, { compactOnClose: true });
    const db = await kvDb(store);
    await put(db, 'kept', 1);
    disk.capacity = disk.used();
    await expect(put(db, 'lost', 'y'.repeat(1000))).rejects.toThrow(FULL_ABORT);
    db.close();
    await store.close();
    disk.capacity = Infinity;
    expect([...(await reopenKeys(disk, counter)).keys()]).toEqual(['kept']);
  });

  it('stops (STORE_FAILED) rather than hold more than maxWaitingBytes of waiting records', async () => {
    const disk = new SimDisk(new Map([['/data', null]]));
    const handle = await disk.open('/data/journal', 'wx');
    const failed: string[] = [];
    const writer = new JournalWriter(
      deriveKeys(KEY),
      { handle, epoch: 1n, seq: 0, size: 0 },
      { retryMs: 10, maxWaitingBytes: 5000, onFailed: (f) => failed.push(f.code) },
    );
    await writer.append(Buffer.alloc(100, 1));
    disk.capacity = disk.used();
    const results: unknown[] = [];
    for (let i = 0; i < 6; i++) {
      results.push(await writer.append(Buffer.alloc(1000, 2)).catch((e: unknown) => e));
    }
    const codes = results.map((e) => (e as { code?: string }).code);
    // About 1 kB for the sealed group, + 1000 per queued record: the fifth passes 5000.
    expect(codes).toEqual([
      ...Array<string>(4).fill(StoreCode.Full),
      StoreCode.Failed,
      StoreCode.Failed,
    ]);
    expect(failed).toEqual([StoreCode.Failed]);
    expect(writer.failure?.message).toMatch(/stayed full with \d+ commits/);
    await writer.settle();
    await writer.close();
  });

  it('refuses work queued behind a write that finds the disk full (a drain does not hang)', async () => {
    const disk = new SimDisk(new Map([['/data', null]]));
    const handle = await disk.open('/data/journal', 'wx');
    const writer = new JournalWriter(deriveKeys(KEY), { handle, epoch: 1n, seq: 0, size: 0 });
    disk.capacity = 0;
    const appended = writer.append(Buffer.alloc(100, 1)).catch((e: unknown) => e);
    const drained = writer.drain().catch((e: unknown) => e);
    expect(await drained).toMatchObject({ code: StoreCode.Full });
    expect(await appended).toMatchObject({ code: StoreCode.Full });
    expect(writer.waiting).toBe(1);
    writer.fail(new StoreError(StoreCode.Closed, 'closed'));
    await writer.settle();
    await writer.close();
  });

  it('reports a full disk at open with STORAGE_FULL', async () => {
    const { disk, counter } = setup();
    disk.capacity = 10;
    await expect(open(disk, counter)).rejects.toMatchObject({ code: StoreCode.Full });
  });
});
