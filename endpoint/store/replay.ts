/**
 * Loads a snapshot and the journal after it into a fresh private factory, through the public
 * IndexedDB API (so fake-indexeddb builds its own indexes and key order), while the capture
 * is not journaling. Consecutive write entries for one database share one transaction.
 * Key generators are set afterwards from the recorded values: IndexedDB never reuses a
 * generated key, even after the record holding it was deleted.
 */
import { StoreCode, StoreError } from './errors.ts';
import { keyRange, type RawFactory } from './fake-internals.ts';
import type { DatabaseDump, DataOp, JournalEntry } from './content.ts';
import { deleteDatabase, openDatabase, transactionDone } from './idb-promise.ts';
import type { IdbDatabase, IdbFactory, IdbObjectStore, IdbValidKey } from './idb-types.ts';

type WriteEntry = Extract<JournalEntry, { kind: 'write' }>;

function corrupt(what: string, e: unknown): StoreError {
  const reason = e instanceof DOMException || e instanceof StoreError ? e.name : 'error';
  return new StoreError(StoreCode.Corrupt, `${what} could not be applied (${reason})`, {
    cause: e,
  });
}

function applyOp(store: IdbObjectStore, op: DataOp): void {
  switch (op.op) {
    case 'put':
      if (store.keyPath === null) store.put(op.value, op.key as IdbValidKey);
      else store.put(op.value);
      return;
    case 'delete':
      store.delete(op.key as IdbValidKey);
      return;
    case 'deleteRange': {
      const hasLower = op.lower !== undefined;
      const hasUpper = op.upper !== undefined;
      if (hasLower && hasUpper) {
        store.delete(keyRange.bound(op.lower, op.upper, op.lowerOpen, op.upperOpen));
      } else if (hasLower) {
        store.delete(keyRange.lowerBound(op.lower, op.lowerOpen));
      } else if (hasUpper) {
        store.delete(keyRange.upperBound(op.upper, op.upperOpen));
      } else {
        store.clear();
      }
      return;
    }
    case 'clear':
      store.clear();
      return;
  }
}

export class Replayer {
  readonly #factory: IdbFactory;
  readonly #raw: RawFactory;
  readonly #connections = new Map<string, IdbDatabase>();
  #batch: WriteEntry[] = [];
  #applied = 0;

  constructor(factory: IdbFactory, raw: RawFactory) {
    this.#factory = factory;
    this.#raw = raw;
  }

  async database(dump: DatabaseDump): Promise<void> {
    await this.#flush();
    try {
      await this.#replace(dump);
    } catch (e) {
      throw corrupt(`database image "${dump.name}"`, e);
    }
  }

  async entry(entry: JournalEntry): Promise<void> {
    const index = this.#applied++;
    if (entry.kind === 'write') {
      if (this.#batch[0] && this.#batch[0].db !== entry.db) await this.#flush();
      this.#batch.push(entry);
      return;
    }
    await this.#flush();
    try {
      if (entry.kind === 'replaceDb') await this.#replace(entry.dump);
      else await this.#drop(entry.db);
    } catch (e) {
      throw corrupt(`journal record ${index}`, e);
    }
  }

  async finish(): Promise<void> {
    try {
      await this.#flush();
    } finally {
      for (const db of this.#connections.values()) db.close();
      this.#connections.clear();
    }
  }

  async #drop(name: string): Promise<void> {
    this.#connections.get(name)?.close();
    this.#connections.delete(name);
    await deleteDatabase(this.#factory, name);
  }

  async #replace(dump: DatabaseDump): Promise<void> {
    if (this.#raw._databases.has(dump.name)) await this.#drop(dump.name);
    const db = await openDatabase(this.#factory, dump.name, dump.version, (db) => {
      for (const s of dump.stores) {
        const store = db.createObjectStore(s.name, {
          keyPath: s.keyPath,
          autoIncrement: s.autoIncrement,
        });
        for (const i of s.indexes) {
          store.createIndex(i.name, i.keyPath, { unique: i.unique, multiEntry: i.multiEntry });
        }
        for (const [key, value] of s.records) {
          if (s.keyPath === null) store.put(value, key as IdbValidKey);
          else store.put(value);
        }
      }
    });
    this.#connections.set(dump.name, db);
    this.#setGenerators(
      dump.name,
      dump.stores.map((s) => [s.name, s.keyGen]),
    );
  }

  async #flush(): Promise<void> {
    const batch = this.#batch;
    this.#batch = [];
    const first = batch[0];
    if (!first) return;
    try {
      const db = this.#connection(first.db);
      const names = new Set<string>();
      for (const entry of batch) for (const op of entry.ops) names.add(op.store);
      const tx = db.transaction([...names], 'readwrite');
      const done = transactionDone(tx);
      try {
        for (const entry of batch)
          for (const op of entry.ops) applyOp(tx.objectStore(op.store), op);
      } catch (e) {
        tx.abort();
        await done.catch(() => undefined);
        throw e;
      }
      await done;
    } catch (e) {
      throw corrupt(`journal records for "${first.db}"`, e);
    }
    for (const entry of batch) this.#setGenerators(entry.db, entry.keyGens);
  }

  #connection(name: string): IdbDatabase {
    const db = this.#connections.get(name);
    // Every write entry follows the image that created its database (snapshot or journal).
    if (!db)
      throw new StoreError(StoreCode.Corrupt, `a write refers to unknown database "${name}"`);
    return db;
  }

  #setGenerators(dbName: string, generators: [string, number][]): void {
    const db = this.#raw._databases.get(dbName);
    for (const [storeName, num] of generators) {
      const generator = db?.rawObjectStores.get(storeName)?.keyGenerator;
      if (generator) generator.num = num;
    }
  }
}
