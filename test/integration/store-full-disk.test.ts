/**
 * A full disk for real: the durable store on a 2 MiB tmpfs, filled up by another file and
 * freed again. Commits are refused with STORAGE_FULL while it is full, the store recovers by
 * itself once space returns, a compaction without room leaves the epoch usable, and every
 * acknowledged commit is there after a reopen. Needs permission to mount a tmpfs (root, or
 * CAP_SYS_ADMIN); skipped with the reason otherwise.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, open, readdir, rm, stat, truncate, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  StoreCode,
  openDatabase,
  openDurableStore,
  requestResult,
  transactionDone,
  type DurableStore,
  type DurableStoreHealth,
  type DurableStoreOptions,
  type IdbDatabase,
  type StoreCounter,
} from '../../endpoint/store/index.ts';
import { makeTempDir } from '../fixtures/process.ts';

const root = await makeTempDir('store-full-disk');
const mnt = join(root, 'mnt');
await mkdir(mnt);
let skipReason: string | null = null;
try {
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mnt], {
    stdio: 'pipe',
  });
} catch (e) {
  const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
  skipReason = `cannot mount a tmpfs here (${stderr || (e as Error).message}); needs root or CAP_SYS_ADMIN`;
  console.log(`store-full-disk: skipped: ${skipReason}`);
}

afterAll(async () => {
  if (!skipReason) execFileSync('umount', ['-l', mnt], { stdio: 'pipe' });
  await rm(root, { recursive: true, force: true });
});

const KEY = new Uint8Array(32).fill(7);
const silent = { warn: () => undefined, info: () => undefined };

class MemoryCounter implements StoreCounter {
  value = 0n;
  read(): Promise<bigint> {
    return Promise.resolve(this.value);
  }
  increment(): Promise<bigint> {
    return Promise.resolve(++this.value);
  }
}

let n = 0;
const freshDir = (): string => join(mnt, `store-${n++}`);

function openStore(
  dir: string,
  counter: StoreCounter,
  extra: Partial<DurableStoreOptions> = {},
): Promise<DurableStore> {
  return openDurableStore({
    dir,
    storeKey: KEY,
    counter,
    logger: silent,
    fullRetryMs: 50,
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

async function keysAfterReopen(dir: string, counter: StoreCounter): Promise<string[]> {
  const store = await openStore(dir, counter);
  try {
    const db = await kvDb(store);
    const tx = db.transaction('kv', 'readonly');
    const keys = await requestResult(tx.objectStore('kv').getAllKeys());
    db.close();
    return keys.map(String);
  } finally {
    await store.close();
  }
}

/** Fills the filesystem with `path`, down to the last byte it takes. */
async function fill(path: string): Promise<void> {
  const file = await open(path, 'w');
  try {
    let chunk = 256 << 10;
    let position = (await file.stat()).size;
    while (chunk >= 1) {
      try {
        const { bytesWritten } = await file.write(Buffer.alloc(chunk, 0xaa), 0, chunk, position);
        position += bytesWritten;
        if (bytesWritten < chunk) chunk >>= 1;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
        chunk >>= 1;
      }
    }
  } finally {
    await file.close();
  }
}

async function until(condition: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const FULL = /STORAGE_FULL/;
const record = (i: number): string => `${String(i)}:`.padEnd(16_000, 'r');

describe.skipIf(skipReason !== null)('full disk (real tmpfs)', () => {
  it('refuses commits with STORAGE_FULL while full, recovers once freed, loses nothing', async () => {
    const dir = freshDir();
    const filler = join(mnt, 'filler');
    const counter = new MemoryCounter();
    const health: DurableStoreHealth[] = [];
    const store = await openStore(dir, counter, { onHealth: (h) => health.push(h) });
    const db = await kvDb(store);
    const acked: string[] = [];
    for (let i = 0; i < 4; i++) {
      await put(db, `a${i}`, record(i));
      acked.push(`a${i}`);
    }

    await fill(filler);
    await expect(put(db, 'refused-0', record(100))).rejects.toThrow(FULL);
    expect(store.health()).toMatchObject({ full: true, failed: null });
    expect(health.at(-1)).toMatchObject({ full: true });
    // Nothing of the failed write stays behind the last good record.
    expect((await stat(join(dir, 'journal'))).size).toBe(store.stats().journalBytes);
    // Refused at once while full, however often asked; flush and compact too.
    for (let i = 1; i <= 3; i++) {
      const started = Date.now();
      await expect(put(db, `refused-${i}`, record(100 + i))).rejects.toThrow(FULL);
      expect(Date.now() - started).toBeLessThan(1000);
    }
    await expect(store.flush()).rejects.toMatchObject({
      code: StoreCode.Full,
      message: 'the disk is full: 4 commits waiting; retrying',
    });
    await expect(store.compact()).rejects.toMatchObject({ code: StoreCode.Full });
    await new Promise((resolve) => setTimeout(resolve, 200)); // a few retries, still full
    expect(store.health().full).toBe(true);

    await unlink(filler);
    await until(() => !store.health().full);
    expect(health.at(-1)).toMatchObject({ full: false, waiting: 0, failed: null });
    for (let i = 0; i < 3; i++) {
      await put(db, `b${i}`, record(200 + i));
      acked.push(`b${i}`);
    }
    await store.compact();
    await put(db, 'c0', 'after compaction');
    acked.push('c0');
    db.close();
    await store.close();

    const keys = await keysAfterReopen(dir, counter);
    for (const key of acked) expect(keys).toContain(key);
    // The refused commits stayed in memory and were written once space returned.
    expect(keys.filter((k) => k.startsWith('refused'))).toEqual([
      'refused-0',
      'refused-1',
      'refused-2',
      'refused-3',
    ]);
  });

  it('a compaction without room for its snapshot leaves the current epoch usable', async () => {
    const dir = freshDir();
    const filler = join(mnt, 'filler');
    const counter = new MemoryCounter();
    const store = await openStore(dir, counter);
    const db = await kvDb(store);
    for (let i = 0; i < 20; i++) await put(db, `k${String(i).padStart(2, '0')}`, record(i));
    const { epoch } = store.stats();
    const before = counter.value;

    // Full, then room for small appends but not for a ~320 kB snapshot.
    await fill(filler);
    await truncate(filler, (await stat(filler)).size - (64 << 10));
    await expect(store.compact()).rejects.toMatchObject({ code: StoreCode.Full });
    expect(store.stats()).toMatchObject({ epoch, failed: null, full: false });
    expect(counter.value).toBe(before);
    expect((await readdir(dir)).sort()).toEqual(['LOCK', 'journal', 'snapshot']);
    await put(db, 'small', 'fits');

    await unlink(filler);
    await store.compact();
    expect(store.stats().epoch).toBe(epoch + 1n);
    db.close();
    await store.close();
    expect(await keysAfterReopen(dir, counter)).toHaveLength(21);
  });
});
