/**
 * The durable store: an in-memory IndexedDB (a private fake-indexeddb factory) made durable
 * by an encrypted, fsynced journal of committed transactions, compacted into snapshots whose
 * epochs follow the vault's monotonic counter. See capture.ts (how commits are captured and
 * held back until durable), epochs.ts (the anti-rollback protocol) and format.ts (the files).
 */
import { mkdir } from 'node:fs/promises';
import { Capture, type CaptureSink } from './capture.ts';
import { createAppState, type AppState } from './app-state.ts';
import {
  decodeEntry,
  decodeSnapshot,
  dumpAll,
  encodeEntry,
  encodeSnapshot,
  type JournalEntry,
} from './content.ts';
import {
  advanceEpoch,
  recoverFiles,
  SimulatedCrash,
  type EpochContext,
  type EpochStep,
  type StoreCounter,
  type StoreLogger,
} from './epochs.ts';
import { StoreCode, StoreError } from './errors.ts';
import { createPrivateFactory, keyRange, type RawFactory } from './fake-internals.ts';
import { installGlobals, uninstallGlobals } from './globals.ts';
import type { IdbFactory, IdbKeyRangeStatic } from './idb-types.ts';
import { JournalWriter } from './journal.ts';
import { deriveKeys, zeroiseKeys, type StoreKeys } from './keys.ts';
import { lockDirectory } from './lock.ts';
import { Replayer } from './replay.ts';

export interface DurableStoreOptions {
  /** The store's directory (created 0700 when missing). One process at a time. */
  dir: string;
  /** The vault's 32-byte store key. Not retained: only keys derived from it are, until close. */
  storeKey: Uint8Array;
  /** The vault's monotonic counter (Vault.counterRead / counterIncrement). */
  counter: StoreCounter;
  /** Compact after this many journal records (default 2000). */
  compactEvery?: number;
  /** ...or once the journal reaches this many bytes (default 32 MiB). */
  compactBytes?: number;
  /**
   * Compact on close when the journal is not empty (default true), so a cleanly stopped
   * store is wholly covered by the counter (see the README's note on journal truncation).
   */
  compactOnClose?: boolean;
  logger?: StoreLogger;
  /** Fault injection for tests: called at each step of an epoch change; throwing = crash. */
  testHooks?: { epochStep?: (step: EpochStep) => void | Promise<void> };
}

export interface DurableStoreStats {
  epoch: bigint;
  journalBytes: number;
  journalRecords: number;
  snapshotBytes: number;
  compactions: number;
  /** The error code that stopped the store, or null. */
  failed: string | null;
}

export interface DurableStore {
  /** The private IndexedDB factory whose committed transactions are journaled. */
  readonly indexedDB: IdbFactory;
  readonly IDBKeyRange: IdbKeyRangeStatic;
  /** The endpoint's own typed key-value state, in the same sealed store. */
  readonly appState: AppState;
  /**
   * Publishes `indexedDB`, `IDBKeyRange` and the other IDB classes as globals, which is where
   * the wasm crypto engine looks for them. Returns a function that restores the previous
   * globals; close() does it too. Only one store may be installed at a time.
   */
  install(): () => void;
  /** Snapshot now and start a new epoch (bumps the vault counter); a no-op if nothing changed. */
  compact(): Promise<void>;
  /** Resolves when every commit so far is on disk. */
  flush(): Promise<void>;
  close(): Promise<void>;
  stats(): DurableStoreStats;
}

const silent: StoreLogger = { warn: () => undefined, info: () => undefined };

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Compaction errors also reach the logger; an unobserved waiter must not crash the process.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new StoreError(StoreCode.BadOptions, `${name} must be a positive integer`);
  }
  return value;
}

class Store implements DurableStore, CaptureSink {
  readonly indexedDB: IdbFactory;
  readonly IDBKeyRange = keyRange;
  readonly appState: AppState;
  readonly #raw: RawFactory;
  readonly #capture: Capture;
  readonly #keys: StoreKeys;
  readonly #ctx: EpochContext;
  readonly #log: StoreLogger;
  readonly #compactEvery: number;
  readonly #compactBytes: number;
  readonly #compactOnClose: boolean;
  #writer: JournalWriter | null = null;
  #releaseLock: () => Promise<void>;
  #state: 'loading' | 'open' | 'closed' = 'loading';
  #failure: StoreError | null = null;
  #compactWaiter: Deferred | null = null;
  #autoCompacting = false;
  #compactions = 0;
  #snapshotBytes = 0;

  constructor(options: DurableStoreOptions, keys: StoreKeys, releaseLock: () => Promise<void>) {
    this.#keys = keys;
    this.#releaseLock = releaseLock;
    this.#log = options.logger ?? silent;
    this.#compactEvery = positive(options.compactEvery, 2000, 'compactEvery');
    this.#compactBytes = positive(options.compactBytes, 32 << 20, 'compactBytes');
    this.#compactOnClose = options.compactOnClose ?? true;
    this.#ctx = {
      dir: options.dir,
      keys,
      counter: options.counter,
      logger: this.#log,
      onStep: options.testHooks?.epochStep,
    };
    const { factory, raw } = createPrivateFactory();
    this.indexedDB = factory;
    this.#raw = raw;
    this.#capture = new Capture(raw, this);
    this.appState = createAppState(factory);
  }

  get journaling(): boolean {
    return this.#state !== 'loading';
  }

  async load(): Promise<void> {
    const files = await recoverFiles(this.#ctx, () => encodeSnapshot([]));
    this.#writer = new JournalWriter(this.#keys, files.journal);
    this.#snapshotBytes = files.snapshotBytes;
    const replayer = new Replayer(this.indexedDB, this.#raw);
    try {
      for (const db of decodeSnapshot(files.snapshot)) await replayer.database(db);
      files.snapshot.fill(0);
      for (const payload of files.records) {
        const entry = decodeEntry(payload);
        payload.fill(0);
        await replayer.entry(entry);
      }
    } finally {
      await replayer.finish();
    }
    this.#state = 'open';
    const { epoch, records } = this.#writer;
    this.#log.info(
      `store: opened at epoch ${epoch}${files.created ? ' (new store)' : ''}, ${records} journal records`,
    );
  }

  // CaptureSink: called synchronously at each commit point.
  commit(entry: JournalEntry): Promise<void> {
    const writer = this.#writer;
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#state !== 'open' || !writer) {
      return Promise.reject(new StoreError(StoreCode.Closed, 'the durable store is closed'));
    }
    const done = writer.append(encodeEntry(entry));
    done.then(
      () => {
        this.#maybeAutoCompact();
      },
      (e: unknown) => {
        if (this.#state === 'open') this.#fail(e);
      },
    );
    return done;
  }

  settled(): void {
    this.#startCompactionIfQuiet();
  }

  install(): () => void {
    return installGlobals(this.indexedDB);
  }

  compact(): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#state !== 'open') {
      return Promise.reject(new StoreError(StoreCode.Closed, 'the durable store is closed'));
    }
    this.#compactWaiter ??= deferred();
    const { promise } = this.#compactWaiter;
    this.#startCompactionIfQuiet();
    return promise;
  }

  async flush(): Promise<void> {
    if (this.#failure) throw this.#failure;
    await this.#writer?.drain();
  }

  stats(): DurableStoreStats {
    return {
      epoch: this.#writer?.epoch ?? 0n,
      journalBytes: this.#writer?.bytes ?? 0,
      journalRecords: this.#writer?.records ?? 0,
      snapshotBytes: this.#snapshotBytes,
      compactions: this.#compactions,
      failed: this.#failure?.code ?? null,
    };
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    uninstallGlobals(this.indexedDB);
    this.appState.close();
    const writer = this.#writer;
    if (writer && !this.#failure && this.#state === 'open') {
      await writer.drain().catch(() => undefined);
      // The drain may have failed the store, which TypeScript's narrowing cannot see.
      if (this.#compactOnClose && writer.records > 0 && this.stats().failed === null) {
        if (this.#capture.quiescent()) {
          await this.compact().catch((e: unknown) => {
            this.#log.warn(`store: compaction on close failed (${errorCode(e)})`);
          });
        } else {
          this.#log.warn('store: a transaction was still running at close; not compacting');
        }
      }
    }
    this.#state = 'closed';
    this.#compactWaiter?.reject(new StoreError(StoreCode.Closed, 'the durable store is closed'));
    this.#compactWaiter = null;
    writer?.fail(new StoreError(StoreCode.Closed, 'the durable store is closed'));
    await writer?.close();
    zeroiseKeys(this.#keys);
    await this.#releaseLock();
  }

  /** Dumps and queues a compaction in one synchronous turn, once no write is half-done. */
  #startCompactionIfQuiet(): void {
    const waiter = this.#compactWaiter;
    const writer = this.#writer;
    if (!waiter || !writer || this.#state !== 'open' || !this.#capture.quiescent()) return;
    this.#compactWaiter = null;
    let plaintext: Buffer;
    try {
      plaintext = encodeSnapshot(dumpAll(this.#raw));
    } catch (e) {
      waiter.reject(e);
      return;
    }
    writer.exclusive(() => this.#advance(writer, plaintext)).then(waiter.resolve, waiter.reject);
  }

  async #advance(writer: JournalWriter, plaintext: Buffer): Promise<void> {
    try {
      if (writer.records === 0) return;
      const result = await advanceEpoch(this.#ctx, writer.epoch, plaintext);
      if (result.ok) {
        await writer.replace(result.position);
        this.#compactions++;
        this.#snapshotBytes = result.snapshotBytes;
        this.#log.info(`store: compacted into epoch ${result.position.epoch}`);
        return;
      }
      if (result.safe) {
        this.#log.warn(
          `store: compaction abandoned, journal continues (${errorCode(result.error)})`,
        );
      } else {
        this.#fail(result.error);
      }
      throw result.error;
    } finally {
      plaintext.fill(0);
    }
  }

  #maybeAutoCompact(): void {
    const writer = this.#writer;
    if (!writer || this.#autoCompacting || this.#state !== 'open') return;
    if (writer.records < this.#compactEvery && writer.bytes < this.#compactBytes) return;
    this.#autoCompacting = true;
    this.compact()
      .catch(() => undefined)
      .finally(() => {
        this.#autoCompacting = false;
      });
  }

  #fail(error: unknown): void {
    if (this.#failure) return;
    this.#failure =
      error instanceof StoreError
        ? error
        : new StoreError(
            StoreCode.Failed,
            error instanceof SimulatedCrash
              ? error.message
              : 'the durable store stopped after a write failure; reopen it',
            { cause: error },
          );
    this.#log.warn(`store: stopped (${errorCode(error)}); commits are refused until reopened`);
    this.#writer?.fail(this.#failure);
    this.#compactWaiter?.reject(this.#failure);
    this.#compactWaiter = null;
  }
}

function errorCode(e: unknown): string {
  if (e instanceof StoreError) return e.code;
  if (e instanceof SimulatedCrash) return e.message;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'error';
}

export async function openDurableStore(options: DurableStoreOptions): Promise<DurableStore> {
  if (typeof options.dir !== 'string' || options.dir === '') {
    throw new StoreError(StoreCode.BadOptions, 'dir must be a directory path');
  }
  const keys = deriveKeys(options.storeKey);
  let release: (() => Promise<void>) | null = null;
  try {
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    release = await lockDirectory(options.dir);
    const store = new Store(options, keys, release);
    try {
      await store.load();
    } catch (e) {
      await store.close().catch(() => undefined);
      throw e;
    }
    return store;
  } catch (e) {
    zeroiseKeys(keys);
    await release?.();
    throw e;
  }
}
