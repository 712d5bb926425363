/**
 * The fake-indexeddb (6.2.8, pinned in package.json) internals the durable store relies on,
 * typed, with runtime shape checks so an upgrade that moves them fails loudly at open instead
 * of silently journaling nothing. Read with node_modules/fake-indexeddb/build/esm/ at hand:
 *
 * - FDBFactory keeps its databases in an instance field `_databases` (Map name -> Database);
 *   Database holds `rawObjectStores` (Map name -> ObjectStore) and `transactions` (array).
 * - Every committed mutation goes through ObjectStore.storeRecord / deleteRecord / clear with
 *   the transaction's `_rollbackLog` as last argument; the same methods called *without* it
 *   are rollbacks (abort, or a failed index update), which never need journaling.
 * - A transaction fires `complete` from `_start()` through `this.dispatchEvent(event)`, right
 *   after `this._markFinished()`, and only when it has no error; `_abort()` rolls back, calls
 *   `_markFinished()` and queues `abort`. Database.processTransactions treats every started
 *   transaction not in state "finished" as running (so it blocks overlapping ones).
 */
import * as fake from 'fake-indexeddb';
import { StoreCode, StoreError } from './errors.ts';
import type { IdbFactory, IdbKeyPath, IdbKeyRangeStatic } from './idb-types.ts';

export interface RawRecord {
  key: unknown;
  value: unknown;
}

export interface RawIndex {
  name: string;
  keyPath: IdbKeyPath;
  unique: boolean;
  multiEntry: boolean;
  deleted: boolean;
}

export interface RawObjectStore {
  name: string;
  deleted: boolean;
  keyPath: IdbKeyPath | null;
  autoIncrement: boolean;
  keyGenerator: { num: number } | null;
  rawIndexes: Map<string, RawIndex>;
  records: { values(): Iterable<RawRecord> };
  storeRecord(record: RawRecord, noOverwrite: boolean, rollbackLog?: unknown[]): unknown;
  deleteRecord(key: unknown, rollbackLog?: unknown[]): void;
  clear(rollbackLog?: unknown[]): void;
}

export interface RawDatabase {
  name: string;
  version: number;
  rawObjectStores: Map<string, RawObjectStore>;
  transactions: RawTransaction[];
}

/** fake-indexeddb's internal Event class; only its constructor is reused. */
export interface RawEvent {
  readonly type: string;
  eventPath: unknown[];
}
export type RawEventConstructor = new (
  type: string,
  init?: { bubbles?: boolean; cancelable?: boolean },
) => RawEvent;

export interface RawTransaction {
  mode: 'readonly' | 'readwrite' | 'versionchange';
  _state: 'active' | 'inactive' | 'committing' | 'finished';
  _started: boolean;
  _rollbackLog: unknown[];
  error: unknown;
  db: { name: string; _rawDatabase: RawDatabase };
  dispatchEvent(event: RawEvent): boolean;
  _abort(errName: string | null): void;
  _markFinished(): void;
}

export interface RawRequest {
  dispatchEvent(event: RawEvent): boolean;
}

export interface RawFactory {
  _databases: Map<string, RawDatabase>;
  deleteDatabase(name: string): RawRequest;
}

/** The classes the wasm looks up as globals (it uses `instanceof IDBRequest` and friends). */
export const idbGlobals = {
  IDBCursor: fake.IDBCursor as unknown,
  IDBCursorWithValue: fake.IDBCursorWithValue as unknown,
  IDBDatabase: fake.IDBDatabase as unknown,
  IDBFactory: fake.IDBFactory as unknown,
  IDBIndex: fake.IDBIndex as unknown,
  IDBKeyRange: fake.IDBKeyRange as unknown,
  IDBObjectStore: fake.IDBObjectStore as unknown,
  IDBOpenDBRequest: fake.IDBOpenDBRequest as unknown,
  IDBRecord: fake.IDBRecord as unknown,
  IDBRequest: fake.IDBRequest as unknown,
  IDBTransaction: fake.IDBTransaction as unknown,
  IDBVersionChangeEvent: fake.IDBVersionChangeEvent as unknown,
} as const;

export const keyRange = fake.IDBKeyRange as unknown as IdbKeyRangeStatic;
const KeyRangeClass = fake.IDBKeyRange as unknown as abstract new (...args: never[]) => object;

export function isKeyRange(value: unknown): boolean {
  return value instanceof KeyRangeClass;
}

function incompatible(what: string): StoreError {
  return new StoreError(
    StoreCode.Incompatible,
    `fake-indexeddb internals changed (${what}); the durable store is written against 6.2.8`,
  );
}

/** A factory of our own: nothing else in the process shares its databases. */
export function createPrivateFactory(): { factory: IdbFactory; raw: RawFactory } {
  const Factory = fake.IDBFactory as unknown as new () => object;
  const instance = new Factory();
  const raw = instance as Partial<RawFactory>;
  if (!(raw._databases instanceof Map) || typeof raw.deleteDatabase !== 'function') {
    throw incompatible('FDBFactory._databases');
  }
  return { factory: instance as IdbFactory, raw: instance as RawFactory };
}

export function checkDatabase(db: Partial<RawDatabase>): asserts db is RawDatabase {
  if (!(db.rawObjectStores instanceof Map) || !Array.isArray(db.transactions)) {
    throw incompatible('Database.rawObjectStores/transactions');
  }
}

export function checkObjectStore(store: Partial<RawObjectStore>): asserts store is RawObjectStore {
  if (
    typeof store.storeRecord !== 'function' ||
    typeof store.deleteRecord !== 'function' ||
    typeof store.clear !== 'function' ||
    !(store.rawIndexes instanceof Map) ||
    typeof store.records?.values !== 'function'
  ) {
    throw incompatible('ObjectStore record methods');
  }
}

export function checkTransaction(tx: Partial<RawTransaction>): asserts tx is RawTransaction {
  if (
    !Array.isArray(tx._rollbackLog) ||
    typeof tx._started !== 'boolean' ||
    typeof tx.dispatchEvent !== 'function' ||
    typeof tx._abort !== 'function' ||
    typeof tx._markFinished !== 'function'
  ) {
    throw incompatible('FDBTransaction._rollbackLog/_started/_abort/_markFinished');
  }
}
