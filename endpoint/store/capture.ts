/**
 * How committed transactions are captured from fake-indexeddb, without touching any shared
 * prototype: every hook is an own property on an object that belongs to the durable store's
 * private FDBFactory (its `_databases` map, each Database's `rawObjectStores` map and
 * `transactions` array, each raw ObjectStore, each FDBTransaction, each deleteDatabase
 * request). See fake-internals.ts for the internals relied on.
 *
 * - Effects: a raw ObjectStore's storeRecord/deleteRecord/clear are wrapped. Called with a
 *   transaction's `_rollbackLog` they are that transaction's effects, recorded only after the
 *   original returns, so a request that failed (ConstraintError, even when the caller
 *   prevents the abort) leaves nothing; called without it they are rollbacks and ignored.
 *   This covers put/add, delete, clear, cursor update/delete and generated keys alike.
 * - Commit: each readwrite/versionchange transaction's `_markFinished`, `_abort` and
 *   dispatchEvent are wrapped. fake-indexeddb fires `complete` only for a transaction without
 *   error, from `_start()` through `this.dispatchEvent`, so that call is the commit point:
 *   the effects become one journal entry (a versionchange becomes the database's whole new
 *   image), queued synchronously. The transaction is kept in state "committing" (not
 *   "finished") and the event itself (with fake-indexeddb's internal listeners: the next
 *   transaction in line, the open request of an upgrade) is dispatched only once the record
 *   is fsynced. An aborted transaction never fires `complete`, so its effects are dropped.
 * - deleteDatabase: its request's `success` is delayed the same way behind a drop record.
 */
import { StoreCode, StoreError } from './errors.ts';
import {
  checkDatabase,
  checkObjectStore,
  checkTransaction,
  isKeyRange,
  type RawDatabase,
  type RawEvent,
  type RawEventConstructor,
  type RawFactory,
  type RawObjectStore,
  type RawRequest,
  type RawTransaction,
} from './fake-internals.ts';
import { dumpDatabase, type DataOp, type JournalEntry } from './content.ts';
import type { IdbKeyRange } from './idb-types.ts';

type Effect = DataOp extends infer O ? (O extends DataOp ? Omit<O, 'store'> : never) : never;

interface PendingTransaction {
  effects: { store: RawObjectStore; effect: Effect }[];
}

export interface CaptureSink {
  /** False while the store loads its own content: nothing is journaled then. */
  readonly journaling: boolean;
  /** Queues an entry synchronously; settles when it is durable (or can never be). */
  commit(entry: JournalEntry): Promise<void>;
  /** A write transaction or database deletion settled: a waiting compaction may start. */
  settled(): void;
}

class ObservedMap<K, V> extends Map<K, V> {
  readonly #onSet: (value: V) => void;

  constructor(entries: Iterable<[K, V]>, onSet: (value: V) => void) {
    super();
    this.#onSet = onSet;
    for (const [key, value] of entries) this.set(key, value);
  }

  override set(key: K, value: V): this {
    this.#onSet(value);
    return super.set(key, value);
  }
}

/** Re-raises listener exceptions the way fake-indexeddb would: uncaught, on a later task. */
function deliver(dispatch: (event: RawEvent) => boolean, event: RawEvent): void {
  try {
    dispatch(event);
  } catch (e) {
    setImmediate(() => {
      throw e;
    });
  }
}

function failedCommit(error: unknown): DOMException {
  const code = error instanceof StoreError ? error.code : StoreCode.Failed;
  // The cause carries the typed StoreError, so a caller can tell a full disk (STORAGE_FULL,
  // retried and recoverable) from a stopped store without parsing the message.
  return new DOMException(`durable store could not persist the transaction (${code})`, {
    name: 'UnknownError',
    cause: error,
  });
}

export class Capture {
  readonly #sink: CaptureSink;
  readonly #instrumented = new WeakSet<object>();
  readonly #pending = new WeakMap<unknown[], PendingTransaction>();
  /** Write transactions whose `complete` or `abort` has not been seen yet. */
  readonly #open = new Set<RawTransaction>();

  constructor(raw: RawFactory, sink: CaptureSink) {
    this.#sink = sink;
    raw._databases = new ObservedMap(raw._databases, (db) => {
      this.#instrumentDatabase(db);
    });
    this.#instrumentDeleteDatabase(raw);
  }

  /**
   * True when fake-indexeddb's structures hold only committed state: no write transaction has
   * started (or, for an upgrade, been created) without reaching its commit or rollback.
   * Compaction dumps the databases only then.
   */
  quiescent(): boolean {
    for (const tx of this.#open) {
      if (tx._state === 'finished') continue;
      if (tx.mode === 'versionchange' || tx._started) return false;
    }
    return true;
  }

  #instrumentDatabase(db: RawDatabase): void {
    if (this.#instrumented.has(db)) return;
    checkDatabase(db);
    this.#instrumented.add(db);
    db.rawObjectStores = new ObservedMap(db.rawObjectStores, (store) => {
      this.#instrumentStore(store);
    });
    const list = db.transactions;
    Object.defineProperty(list, 'push', {
      configurable: true,
      writable: true,
      value: (...txs: RawTransaction[]): number => {
        for (const tx of txs) this.#instrumentTransaction(tx);
        return Array.prototype.push.apply(list, txs);
      },
    });
  }

  #instrumentStore(store: RawObjectStore): void {
    if (this.#instrumented.has(store)) return;
    checkObjectStore(store);
    this.#instrumented.add(store);
    const storeRecord = store.storeRecord.bind(store);
    const deleteRecord = store.deleteRecord.bind(store);
    const clear = store.clear.bind(store);
    store.storeRecord = (record, noOverwrite, rollbackLog) => {
      const key = storeRecord(record, noOverwrite, rollbackLog);
      if (rollbackLog) {
        // `record` now carries the final key (generated or extracted) and the stored clone.
        this.#effect(rollbackLog, store, { op: 'put', key: record.key, value: record.value });
      }
      return key;
    };
    store.deleteRecord = (key, rollbackLog) => {
      deleteRecord(key, rollbackLog);
      if (!rollbackLog) return;
      if (isKeyRange(key)) {
        const range = key as IdbKeyRange;
        this.#effect(rollbackLog, store, {
          op: 'deleteRange',
          lower: range.lower,
          upper: range.upper,
          lowerOpen: range.lowerOpen,
          upperOpen: range.upperOpen,
        });
      } else {
        this.#effect(rollbackLog, store, { op: 'delete', key });
      }
    };
    store.clear = (rollbackLog) => {
      clear(rollbackLog);
      if (rollbackLog) this.#effect(rollbackLog, store, { op: 'clear' });
    };
  }

  #effect(rollbackLog: unknown[], store: RawObjectStore, effect: Effect): void {
    const pending = this.#pending.get(rollbackLog);
    if (pending) {
      pending.effects.push({ store, effect });
    } else if (this.#sink.journaling) {
      // A mutation from a transaction we never saw created: journaling would silently miss
      // it, so fail the request (and with it the transaction) instead.
      throw new StoreError(StoreCode.Incompatible, 'a write came from an untracked transaction');
    }
  }

  #instrumentTransaction(tx: RawTransaction): void {
    checkTransaction(tx);
    if (tx.mode === 'readonly' || !this.#sink.journaling) return;
    const pending: PendingTransaction = { effects: [] };
    this.#pending.set(tx._rollbackLog, pending);
    this.#open.add(tx);
    const dispatch = tx.dispatchEvent.bind(tx);
    const markFinished = tx._markFinished.bind(tx);
    const abort = tx._abort.bind(tx);
    let aborting = false;
    let held = false;
    tx._abort = (errName) => {
      // Nothing inside fake-indexeddb aborts a transaction past its last request; refuse it
      // anyway, since rolling back a transaction being journaled would split memory and disk.
      if (held) throw new DOMException('the transaction is committing', 'InvalidStateError');
      aborting = true;
      abort(errName);
    };
    tx._markFinished = () => {
      if (aborting || tx.error) {
        markFinished();
        return;
      }
      // The commit point: `_start()` ran out of requests. Stay "committing" instead of
      // "finished" until the record is durable, so overlapping transactions stay queued
      // behind this one (none can read what is not on disk yet) and abort() is refused,
      // as while a real IndexedDB commits.
      held = true;
      tx._state = 'committing';
    };
    const finish = (): void => {
      held = false;
      markFinished();
    };
    tx.dispatchEvent = (event: RawEvent): boolean => {
      if (event.type === 'complete') {
        this.#commit(tx, pending, event, dispatch, finish);
        return true;
      }
      if (event.type === 'abort') {
        this.#open.delete(tx);
        pending.effects = [];
        try {
          return dispatch(event);
        } finally {
          this.#sink.settled();
        }
      }
      return dispatch(event);
    };
  }

  #commit(
    tx: RawTransaction,
    pending: PendingTransaction,
    event: RawEvent,
    dispatch: (event: RawEvent) => boolean,
    finish: () => void,
  ): void {
    this.#open.delete(tx);
    let durable: Promise<void>;
    try {
      const entry = this.#entry(tx, pending);
      pending.effects = [];
      if (entry === null) {
        finish();
        this.#sink.settled();
        dispatch(event);
        return;
      }
      durable = this.#sink.commit(entry);
    } catch (e) {
      durable = Promise.reject(
        e instanceof Error ? e : new StoreError(StoreCode.Failed, 'journaling a commit failed'),
      );
    }
    this.#sink.settled();
    durable.then(
      () => {
        finish();
        deliver(dispatch, event);
      },
      (error: unknown) => {
        // Too late to roll back (later transactions may have built on it in memory); report
        // it as aborted so the engine does not believe it durable. The store refuses further
        // commits until it is reopened.
        finish();
        tx.error = failedCommit(error);
        const Event = event.constructor as RawEventConstructor;
        const abort = new Event('abort', { bubbles: true, cancelable: false });
        abort.eventPath = [tx.db];
        deliver(dispatch, abort);
      },
    );
  }

  #entry(tx: RawTransaction, pending: PendingTransaction): JournalEntry | null {
    if (tx.mode === 'versionchange') {
      return { kind: 'replaceDb', dump: dumpDatabase(tx.db._rawDatabase) };
    }
    const ops: DataOp[] = [];
    const generators = new Map<string, number>();
    for (const { store, effect } of pending.effects) {
      // Only an upgrade deletes stores, and it journals a whole image instead.
      if (store.deleted) continue;
      ops.push({ ...effect, store: store.name });
      if (store.keyGenerator) generators.set(store.name, store.keyGenerator.num);
    }
    if (ops.length === 0) return null;
    return { kind: 'write', db: tx.db.name, ops, keyGens: [...generators] };
  }

  #instrumentDeleteDatabase(raw: RawFactory): void {
    const deleteDatabase = raw.deleteDatabase.bind(raw);
    raw.deleteDatabase = (...args: [string]): RawRequest => {
      const request = deleteDatabase(...args);
      if (!this.#sink.journaling) return request;
      const name = args[0];
      const dispatch = request.dispatchEvent.bind(request);
      request.dispatchEvent = (event: RawEvent & { oldVersion?: number }): boolean => {
        // oldVersion 0: nothing committed existed, so there is nothing to forget on disk.
        if (event.type !== 'success' || !event.oldVersion) return dispatch(event);
        const durable = this.#sink.commit({ kind: 'dropDb', db: name });
        this.#sink.settled();
        durable.then(
          () => {
            deliver(dispatch, event);
          },
          (error: unknown) => {
            const target = request as RawRequest & { error: unknown; result: unknown };
            target.error = failedCommit(error);
            target.result = undefined;
            const Event = event.constructor as RawEventConstructor;
            const failure = new Event('error', { bubbles: true, cancelable: true });
            deliver(dispatch, failure);
          },
        );
        return true;
      };
      return request;
    };
  }
}
