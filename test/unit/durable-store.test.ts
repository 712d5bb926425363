import { statSync } from 'node:fs';
import { cp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  StoreCode,
  openDatabase,
  openDurableStore,
  requestResult,
  transactionDone,
  type DurableStore,
  type DurableStoreOptions,
  type EpochStep,
  type IdbDatabase,
  type StoreCounter,
} from '../../endpoint/store/index.ts';
import { makeTempDir } from '../fixtures/process.ts';

let root: string;
beforeAll(async () => {
  root = await makeTempDir('durable-store');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
const freshDir = (): string => join(root, `store-${n++}`);
const KEY = new Uint8Array(32).fill(7);

class MemoryCounter implements StoreCounter {
  value: bigint;
  failNextIncrement = false;
  constructor(start = 0n) {
    this.value = start;
  }
  read(): Promise<bigint> {
    return Promise.resolve(this.value);
  }
  increment(): Promise<bigint> {
    if (this.failNextIncrement) {
      this.failNextIncrement = false;
      return Promise.reject(new Error('vault unreachable'));
    }
    return Promise.resolve(++this.value);
  }
}

function open(
  dir: string,
  counter: StoreCounter,
  extra: Partial<DurableStoreOptions> = {},
): Promise<DurableStore> {
  return openDurableStore({ dir, storeKey: KEY, counter, ...extra });
}

/** A database with one out-of-line-key store, "kv". */
function kvDb(store: DurableStore): Promise<IdbDatabase> {
  return openDatabase(store.indexedDB, 'test', 1, (db) => {
    db.createObjectStore('kv');
  });
}

async function put(db: IdbDatabase, entries: Record<string, unknown>): Promise<void> {
  const tx = db.transaction('kv', 'readwrite');
  const done = transactionDone(tx);
  for (const [key, value] of Object.entries(entries)) tx.objectStore('kv').put(value, key);
  await done;
}

async function readAll(db: IdbDatabase, name = 'kv'): Promise<Map<unknown, unknown>> {
  const tx = db.transaction(name, 'readonly');
  const store = tx.objectStore(name);
  const [keys, values] = await Promise.all([
    requestResult(store.getAllKeys()),
    requestResult(store.getAll()),
  ]);
  return new Map(keys.map((k, i) => [k, values[i]]));
}

/** Opens, runs, and closes without compacting, so the journal keeps its records. */
async function session<T>(
  dir: string,
  counter: StoreCounter,
  run: (store: DurableStore) => Promise<T>,
  extra: Partial<DurableStoreOptions> = {},
): Promise<T> {
  const store = await open(dir, counter, { compactOnClose: false, ...extra });
  try {
    return await run(store);
  } finally {
    await store.close();
  }
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  await expect(promise).rejects.toMatchObject({ name: 'StoreError', code });
}

describe('durable store', () => {
  it('round-trips data and schema across reopen, including upgrades and key generators', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const value = {
      bytes: new Uint8Array([1, 2, 3]),
      map: new Map([['a', 1]]),
      when: new Date(1_700_000_000_000),
      nested: [{ big: 2n ** 70n }],
    };
    await session(dir, counter, async (store) => {
      const db = await openDatabase(store.indexedDB, 'app', 1, (db) => {
        db.createObjectStore('plain');
        const people = db.createObjectStore('people', { keyPath: 'id' });
        people.createIndex('by_email', 'email', { unique: true });
        people.createIndex('by_tag', 'tags', { multiEntry: true });
        db.createObjectStore('auto', { autoIncrement: true });
        db.createObjectStore('doomed');
      });
      const tx = db.transaction(['plain', 'people', 'auto'], 'readwrite');
      const done = transactionDone(tx);
      tx.objectStore('plain').put(value, 'v');
      tx.objectStore('plain').put('gone', 'deleted-later');
      tx.objectStore('plain').delete('deleted-later');
      tx.objectStore('people').put({ id: 1, email: 'a@x', tags: ['red', 'blue'] });
      tx.objectStore('people').put({ id: 2, email: 'b@x', tags: ['red'] });
      for (const v of ['one', 'two', 'three']) tx.objectStore('auto').add(v);
      await done;
      // Cursor updates and deletes are effects too.
      const cursorTx = db.transaction(['people', 'auto'], 'readwrite');
      const cursorDone = transactionDone(cursorTx);
      const cursorReq = cursorTx.objectStore('people').openCursor();
      cursorReq.onsuccess = () => {
        const cursor = cursorReq.result;
        if (!cursor) return;
        const person = cursor.value as { id: number; email: string; tags: string[] };
        if (person.id === 2) cursor.update({ ...person, email: 'b2@x' });
        cursor.continue();
      };
      cursorTx.objectStore('auto').delete(3); // the highest generated key: must not be reused
      await cursorDone;
      db.close();
      // Upgrade: drop a store, rename one, add an index.
      const v2 = await openDatabase(store.indexedDB, 'app', 2, (db, upgrade) => {
        db.deleteObjectStore('doomed');
        upgrade.objectStore('plain').name = 'renamed';
        upgrade.objectStore('people').createIndex('by_id_email', ['id', 'email']);
      });
      v2.close();
      // A database created and deleted again leaves nothing behind.
      (await openDatabase(store.indexedDB, 'temporary', 1)).close();
      await requestResult(store.indexedDB.deleteDatabase('temporary'));
    });

    await session(dir, counter, async (store) => {
      const names = (await store.indexedDB.databases()).map((d) => d.name).sort();
      expect(names).toEqual(['app']);
      const db = await openDatabase(store.indexedDB, 'app');
      expect(db.version).toBe(2);
      expect([...db.objectStoreNames]).toEqual(['auto', 'people', 'renamed']);
      const renamed = await readAll(db, 'renamed');
      expect([...renamed.keys()]).toEqual(['v']);
      const restored = renamed.get('v') as typeof value;
      expect(restored).toEqual(value);
      expect(restored.bytes).toBeInstanceOf(Uint8Array);
      const tx = db.transaction(['people', 'auto'], 'readwrite');
      const people = tx.objectStore('people');
      expect([...people.indexNames]).toEqual(['by_email', 'by_id_email', 'by_tag']);
      expect(people.index('by_email').unique).toBe(true);
      expect(await requestResult(people.index('by_email').get('b2@x'))).toMatchObject({ id: 2 });
      expect(await requestResult(people.index('by_tag').count('red'))).toBe(2);
      expect(await requestResult(people.index('by_id_email').getKey([1, 'a@x']))).toBe(1);
      const added = await requestResult(tx.objectStore('auto').add('four'));
      expect(added).toBe(4);
      await transactionDone(tx);
      db.close();
    });
  });

  it('journals nothing from aborted transactions or failed requests', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      await put(db, { kept: 1 });
      // Explicit abort after a write.
      const aborted = db.transaction('kv', 'readwrite');
      const abortedDone = transactionDone(aborted);
      aborted.objectStore('kv').put('x', 'aborted');
      aborted.abort();
      await expect(abortedDone).rejects.toBeDefined();
      // A failed add whose error is prevented: the transaction commits without it.
      const partial = db.transaction('kv', 'readwrite');
      const partialDone = transactionDone(partial);
      partial.objectStore('kv').put('y', 'committed');
      const dup = partial.objectStore('kv').add('z', 'kept');
      dup.onerror = (event) => {
        event.preventDefault();
      };
      await partialDone;
      // A request error that is not prevented aborts everything before it.
      const failing = db.transaction('kv', 'readwrite');
      const failingDone = transactionDone(failing);
      failing.objectStore('kv').put('w', 'rolled-back');
      failing.objectStore('kv').add('dup', 'kept');
      await expect(failingDone).rejects.toBeDefined();
      // A readwrite transaction that only reads changes nothing, so writes no record.
      const reader = db.transaction('kv', 'readwrite');
      await requestResult(reader.objectStore('kv').get('kept'));
      await transactionDone(reader);
      expect(store.stats().journalRecords).toBe(3); // upgrade + two commits
      db.close();
      // An upgrade that aborts leaves the version and schema as they were.
      await expect(
        openDatabase(store.indexedDB, 'test', 2, (upgraded, tx) => {
          upgraded.createObjectStore('never');
          tx.abort();
        }),
      ).rejects.toBeDefined();
      expect(store.stats().journalRecords).toBe(3);
    });
    await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      expect(db.version).toBe(1);
      expect([...db.objectStoreNames]).toEqual(['kv']);
      expect(await readAll(db)).toEqual(
        new Map<string, unknown>([
          ['committed', 'y'],
          ['kept', 1],
        ]),
      );
      db.close();
    });
  });

  it('fires complete only once the record of the transaction is on disk', async () => {
    const dir = freshDir();
    await session(dir, new MemoryCounter(), async (store) => {
      const db = await kvDb(store);
      const before = statSync(join(dir, 'journal')).size;
      const tx = db.transaction('kv', 'readwrite');
      tx.objectStore('kv').put(new Uint8Array(10_000), 'big');
      const sizeAtComplete = await new Promise<number>((resolve) => {
        tx.oncomplete = () => {
          resolve(statSync(join(dir, 'journal')).size);
        };
      });
      expect(sizeAtComplete).toBeGreaterThan(before + 10_000);
      expect(sizeAtComplete).toBe(store.stats().journalBytes);
      db.close();
    });
  });

  it('keeps overlapping transactions queued until a commit is durable', async () => {
    // A compaction whose counter increment we hold up blocks the journal queue, so the next
    // commit waits for disk for as long as we like.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const counter = new MemoryCounter();
    let armed = false; // not while the store is created
    const slow: StoreCounter = {
      read: () => counter.read(),
      increment: async () => {
        if (armed) await gate;
        return counter.increment();
      },
    };
    await session(freshDir(), slow, async (store) => {
      const db = await kvDb(store);
      await put(db, { x: 1 });
      armed = true;
      const compaction = store.compact();
      const events: string[] = [];
      const writer = db.transaction('kv', 'readwrite');
      writer.objectStore('kv').put(2, 'x');
      writer.oncomplete = () => events.push('write complete');
      await new Promise((resolve) => setTimeout(resolve, 20));
      // Created while the write waits for disk: it must not see the write before it completes.
      const reader = db.transaction('kv', 'readonly');
      const read = requestResult(reader.objectStore('kv').get('x')).then((v) => {
        events.push(`read ${String(v)}`);
      });
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(events).toEqual([]);
      expect(() => {
        writer.abort();
      }).toThrow();
      release();
      await Promise.all([compaction, read]);
      expect(events).toEqual(['write complete', 'read 2']);
      db.close();
    });
  });

  it('drops a torn journal tail and keeps every record before it', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      for (let i = 0; i < 3; i++) await put(db, { [`k${i}`]: i });
      db.close();
    });
    const journal = join(dir, 'journal');
    const full = (await stat(journal)).size;
    await truncate(journal, full - 5);
    await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      expect([...(await readAll(db)).keys()]).toEqual(['k0', 'k1']);
      expect(store.stats().journalRecords).toBe(3);
      await put(db, { after: true });
      db.close();
    });
    await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      expect([...(await readAll(db)).keys()]).toEqual(['after', 'k0', 'k1']);
      db.close();
    });
  });

  it('refuses a tampered journal record or snapshot', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      await put(db, { a: 1 });
      await put(db, { b: 2 });
      db.close();
    });
    const journal = join(dir, 'journal');
    const original = await readFile(journal);
    const tampered = Buffer.from(original);
    const at = 48 + 4 + 12 + 3; // inside the first record's ciphertext
    tampered[at] = (tampered[at] ?? 0) ^ 1;
    await writeFile(journal, tampered);
    await expectCode(open(dir, counter), StoreCode.Tampered);
    await writeFile(journal, original);

    const snapshot = join(dir, 'snapshot');
    const snap = await readFile(snapshot);
    const badSnap = Buffer.from(snap);
    badSnap[badSnap.length - 1] = (badSnap[badSnap.length - 1] ?? 0) ^ 1;
    await writeFile(snapshot, badSnap);
    await expectCode(open(dir, counter), StoreCode.Tampered);
    await writeFile(snapshot, snap);

    // Intact again: opens, and the lock left by the refused opens is gone.
    await session(dir, counter, async (store) => {
      expect([...(await readAll(await kvDb(store))).keys()]).toEqual(['a', 'b']);
    });
  });

  it('refuses a store sealed under another key with its own error', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    await session(dir, counter, async (store) => {
      await put(await kvDb(store), { a: 1 });
    });
    const otherKey = new Uint8Array(32).fill(9);
    const error = await openDurableStore({ dir, storeKey: otherKey, counter }).catch(
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: StoreCode.WrongKey });
    expect((error as Error).message).not.toContain('0909');
  });

  it('refuses an older copy of the store once the counter moved on', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    await session(dir, counter, async (store) => {
      await put(await kvDb(store), { a: 1 });
    });
    const backup = `${dir}-backup`;
    await cp(dir, backup, { recursive: true });
    const before = counter.value;
    await session(dir, counter, async (store) => {
      await put(await kvDb(store), { b: 2 });
      await store.compact();
      expect(store.stats().epoch).toBe(before + 1n);
    });
    expect(counter.value).toBe(before + 1n);
    await rm(dir, { recursive: true });
    await cp(backup, dir, { recursive: true });
    const error = await open(dir, counter).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: StoreCode.RolledBack });
    expect((error as Error).message).toMatch(/older copy/);
    // And a store ahead of its counter (another vault) is refused too.
    await expectCode(open(dir, new MemoryCounter(0n)), StoreCode.CounterBehind);
  });

  it('creates a new store at the counter plus one, past its start only when asked', async () => {
    const counter = new MemoryCounter(41n);
    const dir = freshDir();
    await expectCode(open(dir, counter), StoreCode.Missing);
    expect(counter.value).toBe(41n);
    const store = await open(dir, counter, { allowFresh: true });
    expect(store.stats()).toMatchObject({ epoch: 42n, journalRecords: 0 });
    expect(counter.value).toBe(42n);
    await store.close();
    // Where the vault tells where its counter started, a store at that value is a first one.
    const first = await open(freshDir(), new MemoryCounter(5n), { counterStart: 5n });
    expect(first.stats().epoch).toBe(6n);
    await first.close();
  });

  it('compaction shrinks the journal, advances the counter and keeps the data', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const start = await session(dir, counter, async (store) => {
      const db = await kvDb(store);
      for (let i = 0; i < 50; i++) await put(db, { [`k${i % 10}`]: 'x'.repeat(200) + String(i) });
      const before = store.stats();
      expect(before.journalRecords).toBe(51);
      await store.compact();
      const after = store.stats();
      expect(after.journalRecords).toBe(0);
      expect(after.journalBytes).toBeLessThan(before.journalBytes / 20);
      expect(after.epoch).toBe(before.epoch + 1n);
      expect((await stat(join(dir, 'journal'))).size).toBe(after.journalBytes);
      await put(db, { afterCompaction: 1 });
      db.close();
      return before.epoch;
    });
    expect(counter.value).toBe(start + 1n);
    await session(dir, counter, async (store) => {
      const all = await readAll(await kvDb(store));
      expect(all.size).toBe(11);
      expect(all.get('k9')).toBe('x'.repeat(200) + '49');
    });
  });

  it('compacts on its own after compactEvery records, and on close', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const store = await open(dir, counter, { compactEvery: 5 });
    const db = await kvDb(store);
    for (let i = 0; i < 12; i++) await put(db, { [`k${i}`]: i });
    await store.flush();
    expect(store.stats().compactions).toBeGreaterThanOrEqual(1);
    expect(store.stats().journalRecords).toBeLessThan(5);
    db.close();
    const epoch = store.stats().epoch;
    await store.close();
    expect(counter.value).toBe(epoch + 1n);
    await session(dir, counter, async (s) => {
      expect(s.stats().journalRecords).toBe(0);
      expect((await readAll(await kvDb(s))).size).toBe(12);
    });
  });

  describe('a crash in the middle of a compaction loses nothing', () => {
    async function crashAt(step: EpochStep): Promise<{ dir: string; counter: MemoryCounter }> {
      const dir = freshDir();
      const counter = new MemoryCounter();
      let armed = false; // creating the store goes through the same steps
      const store = await open(dir, counter, {
        compactOnClose: false,
        testHooks: {
          epochStep: (at) => {
            if (armed && at === step) throw new Error('crash');
          },
        },
      });
      const db = await kvDb(store);
      await put(db, { a: 1, b: 2 });
      await put(db, { c: 3 });
      armed = true;
      await expect(store.compact()).rejects.toMatchObject({ name: 'SimulatedCrash' });
      expect(store.stats().failed).toBe(StoreCode.Failed);
      // Further commits are refused (reported as aborted), never silently lost.
      await expect(put(db, { refused: true })).rejects.toBeDefined();
      db.close();
      await store.close();
      return { dir, counter };
    }

    it('between snapshot.next and the counter increment: discarded, journal kept', async () => {
      const { dir, counter } = await crashAt('snapshot-next-written');
      expect(await readdir(dir)).toContain('snapshot.next');
      const epoch = counter.value;
      await session(dir, counter, async (store) => {
        expect(store.stats()).toMatchObject({ epoch, journalRecords: 3 });
        expect([...(await readAll(await kvDb(store))).keys()]).toEqual(['a', 'b', 'c']);
      });
      expect(await readdir(dir)).not.toContain('snapshot.next');
    });

    it('between the counter increment and the rename: rolled forward', async () => {
      const { dir, counter } = await crashAt('counter-incremented');
      await session(dir, counter, async (store) => {
        expect(store.stats()).toMatchObject({ epoch: counter.value, journalRecords: 0 });
        expect([...(await readAll(await kvDb(store))).keys()]).toEqual(['a', 'b', 'c']);
      });
      expect(await readdir(dir)).not.toContain('snapshot.next');
    });

    it('after the new journal, before the rename: rolled forward', async () => {
      const { dir, counter } = await crashAt('journal-reset');
      await session(dir, counter, async (store) => {
        expect(store.stats()).toMatchObject({ epoch: counter.value, journalRecords: 0 });
        expect([...(await readAll(await kvDb(store))).keys()]).toEqual(['a', 'b', 'c']);
      });
    });

    it('a failed counter increment abandons the compaction and the store carries on', async () => {
      const dir = freshDir();
      const counter = new MemoryCounter();
      await session(dir, counter, async (store) => {
        const db = await kvDb(store);
        await put(db, { a: 1 });
        const epoch = store.stats().epoch;
        counter.failNextIncrement = true;
        await expect(store.compact()).rejects.toThrow('vault unreachable');
        expect(store.stats()).toMatchObject({ epoch, failed: null });
        expect(await readdir(dir)).not.toContain('snapshot.next');
        await put(db, { b: 2 });
        db.close();
      });
      await session(dir, counter, async (store) => {
        expect([...(await readAll(await kvDb(store))).keys()]).toEqual(['a', 'b']);
      });
    });
  });

  it('after an abandoned compaction, commits do not each try again (one whole snapshot each)', async () => {
    const dir = freshDir();
    let increments = 0;
    // The vault is down: every counter increment fails, as long as it stays down.
    const counter = new MemoryCounter();
    await session(dir, counter, () => Promise.resolve()); // created with a working counter
    const down: StoreCounter = {
      read: () => counter.read(),
      increment: () => {
        increments++;
        return Promise.reject(new Error('vault unreachable'));
      },
    };
    const store = await open(dir, down, { compactEvery: 2, compactOnClose: false });
    const db = await kvDb(store);
    for (let i = 0; i < 20; i++) await put(db, { [`k${i}`]: i });
    await store.flush();
    await new Promise((r) => setTimeout(r, 50));
    // One try, then a pause: not one per commit past the threshold.
    expect(increments).toBe(1);
    expect(store.stats().failed).toBeNull();
    db.close();
    await store.close();
  });

  it('keeps typed app state in the same sealed store', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const Sync = z.object({ token: z.string(), rooms: z.array(z.string()) });
    await session(dir, counter, async (store) => {
      await store.appState.put('deviceId', 'DEVICE');
      await store.appState.update({
        put: [
          ['sync', { token: 's1', rooms: ['!a:x'] }],
          ['outbox', [{ txn: 1 }]],
        ],
      });
      await store.appState.delete('outbox');
    });
    await session(dir, counter, async (store) => {
      expect(await store.appState.get('deviceId', z.string())).toBe('DEVICE');
      expect(await store.appState.get('sync', Sync)).toEqual({ token: 's1', rooms: ['!a:x'] });
      expect(await store.appState.get('outbox', z.unknown())).toBeUndefined();
      expect((await store.appState.keys()).sort()).toEqual(['deviceId', 'sync']);
      await expectCode(store.appState.get('deviceId', z.number()), StoreCode.InvalidValue);
    });
    // Nothing readable on disk.
    for (const name of await readdir(dir)) {
      expect((await readFile(join(dir, name))).includes('DEVICE')).toBe(false);
    }
  });

  it('allows one open handle per directory and installs its globals only while open', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const store = await open(dir, counter);
    await expectCode(open(dir, counter), StoreCode.Locked);
    const g = globalThis as Record<string, unknown>;
    const before = g.indexedDB;
    store.install();
    expect(g.indexedDB).toBe(store.indexedDB);
    expect(g.IDBKeyRange).toBe(store.IDBKeyRange);
    await store.close();
    expect(g.indexedDB).toBe(before);
    await expectCode(store.compact(), StoreCode.Closed);
  });
});
