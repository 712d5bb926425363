/**
 * The durable store: an in-memory IndexedDB (a private fake-indexeddb factory) made durable
 * by an encrypted, fsynced journal of committed transactions, compacted into snapshots whose
 * epochs follow the vault's monotonic counter. See capture.ts (how commits are captured and
 * held back until durable), epochs.ts (the anti-rollback protocol) and format.ts (the files).
 */
import { setTimeout as sleep } from 'node:timers/promises';
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
import { StoreCode, StoreError, isStoreError } from './errors.ts';
import { isNoSpace, makeDirDurable, nodeFs, type StoreFs } from './fs.ts';
import { createPrivateFactory, keyRange, type RawFactory } from './fake-internals.ts';
import { installGlobals, uninstallGlobals } from './globals.ts';
import type { IdbFactory, IdbKeyRangeStatic } from './idb-types.ts';
import { JournalWriter } from './journal.ts';
import { deriveKeys, zeroiseKeys, type StoreKeys } from './keys.ts';
import {
  checkIdentityOption,
  frameSnapshot,
  reconcileIdentity,
  sameIdentity,
  unframeSnapshot,
  type StoreIdentity,
} from './identity.ts';
import { lockDirectory } from './lock.ts';
import { UnsafeFilesError, assertPrivateDir } from '../../keyvault/common/hygiene.ts';
import { Replayer } from './replay.ts';

/** After an abandoned compaction (safe: the journal goes on), the next automatic one waits this long. */
const ABANDONED_RETRY_MS = 5_000;

export interface DurableStoreOptions {
  /**
   * The store's directory (created 0700 when missing). One process at a time. It must be
   * owned by this process's user, mode 0700, its files 0600, no symlinks: otherwise the open
   * is refused with STORE_UNSAFE_FILES and the command that fixes it.
   */
  dir: string;
  /**
   * Who the store belongs to (identity.ts): recorded in a new store, checked against an
   * existing one (STORE_WRONG_IDENTITY when it belongs to someone else). Without it nothing is
   * checked (tests, tools).
   */
  identity?: StoreIdentity;
  /**
   * Create a new store even though the counter shows one existed (STORE_MISSING otherwise):
   * only for starting a new device on purpose (the endpoint's reset-store command).
   */
  allowFresh?: boolean;
  /**
   * The counter's value before any store used it (default 0n, as dev and PKCS#11 vaults
   * create their counters); null when the vault cannot tell (a TPM counter starts above the
   * highest value any counter on that TPM had). See epochs.ts RecoverOptions.
   */
  counterStart?: bigint | null;
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
  /** The filesystem the store's files live on (default node:fs/promises); tests simulate one. */
  fs?: StoreFs;
  /**
   * While the disk is full, how long to wait before retrying the journal write (default 1000
   * ms; later retries wait up to twice it). See the README's "Full disk".
   */
  /**
   * While the disk is full, commits wait (written once space returns) instead of failing with
   * STORAGE_FULL: see JournalOptions.holdWhileFull. Default false.
   */
  holdWhileFull?: boolean;
  fullRetryMs?: number;
  /**
   * Called with health() whenever it changes: the disk became full, has space again, or the
   * store stopped. For the endpoint's status (e.g. HTTP 507 while `full`). Must not throw.
   */
  onHealth?: (health: DurableStoreHealth) => void;
}

export interface DurableStoreHealth {
  /**
   * The last journal write found no space (ENOSPC, EDQUOT): commits are rejected at once with
   * STORAGE_FULL, their records are kept in order and written when space returns.
   */
  full: boolean;
  /** When the disk became full (ms since 1970), or null. */
  fullSince: number | null;
  /** Commits rejected with STORAGE_FULL whose records are still waiting for space. */
  waiting: number;
  /** The error code that stopped the store for good (reopen it), or null. */
  failed: string | null;
}

export interface DurableStoreStats {
  epoch: bigint;
  journalBytes: number;
  journalRecords: number;
  snapshotBytes: number;
  compactions: number;
  /** The error code that stopped the store, or null. */
  failed: string | null;
  /** See DurableStoreHealth. */
  full: boolean;
  fullSince: number | null;
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
  /** Who the store belongs to, as recorded (null: a store created without an identity). */
  readonly identity: StoreIdentity | null;
  /**
   * Records the full user id and the device id once the endpoint knows them (after login),
   * compacting so that they are sealed in the snapshot. Refused with STORE_WRONG_IDENTITY
   * when they contradict what the store has; a no-op when nothing new is learned.
   */
  bindIdentity(identity: StoreIdentity): Promise<void>;
  /** Whether commits are being accepted; `onHealth` reports every change. */
  health(): DurableStoreHealth;
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
  readonly #fullRetryMs: number;
  readonly #onHealth: ((health: DurableStoreHealth) => void) | undefined;
  #writer: JournalWriter | null = null;
  #releaseLock: () => Promise<void>;
  #state: 'loading' | 'open' | 'closed' = 'loading';
  #failure: StoreError | null = null;
  #compactWaiter: Deferred | null = null;
  #autoCompacting = false;
  #compactions = 0;
  #snapshotBytes = 0;
  /** An epoch change past its counter increment waits for space (its renames are retried). */
  #epochFullSince: number | null = null;
  /** After a compaction found no space, automatic ones wait until then. */
  #compactAfter = 0;
  #closing = false;
  readonly #options: DurableStoreOptions;
  #identity: StoreIdentity | null;
  /** The identity changed since the last snapshot: the next compaction must run. */
  #identityDirty = false;

  constructor(options: DurableStoreOptions, keys: StoreKeys, releaseLock: () => Promise<void>) {
    this.#keys = keys;
    this.#options = options;
    this.#identity = options.identity ?? null;
    this.#releaseLock = releaseLock;
    this.#log = options.logger ?? silent;
    this.#compactEvery = positive(options.compactEvery, 2000, 'compactEvery');
    this.#compactBytes = positive(options.compactBytes, 32 << 20, 'compactBytes');
    this.#compactOnClose = options.compactOnClose ?? true;
    this.#fullRetryMs = positive(options.fullRetryMs, 1000, 'fullRetryMs');
    this.#onHealth = options.onHealth;
    this.#ctx = {
      dir: options.dir,
      fs: options.fs ?? nodeFs,
      keys,
      counter: options.counter,
      logger: this.#log,
      onStep: options.testHooks?.epochStep,
      onNoSpace: (error) => this.#epochNoSpace(error),
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
    const configured = this.#options.identity;
    const files = await recoverFiles(
      this.#ctx,
      () => frameSnapshot(this.#identity, encodeSnapshot([])),
      {
        allowFresh: this.#options.allowFresh,
        counterStart: this.#options.counterStart,
        checkSnapshot: (plaintext) => {
          const stored = unframeSnapshot(plaintext).identity;
          const next = configured
            ? reconcileIdentity(stored, configured, this.#ctx.dir, 'as configured')
            : stored;
          this.#identityDirty = !sameIdentity(next, stored);
          this.#identity = next;
        },
      },
    );
    this.#writer = new JournalWriter(this.#keys, files.journal, {
      retryMs: this.#fullRetryMs,
      holdWhileFull: this.#options.holdWhileFull ?? false,
      onFull: (full) => {
        this.#fullChanged(full);
      },
      onFailed: (failure) => {
        if (!this.#closing) this.#fail(failure);
      },
    });
    this.#snapshotBytes = files.snapshotBytes;
    const replayer = new Replayer(this.indexedDB, this.#raw);
    try {
      const { content } = unframeSnapshot(files.snapshot);
      for (const db of decodeSnapshot(content)) await replayer.database(db);
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
        // STORAGE_FULL: not durable yet, still queued (see journal.ts); the store carries on.
        if (this.#state === 'open' && !isStoreError(e, StoreCode.Full)) this.#fail(e);
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
    // Queued behind records waiting for space, it would wait as long: refuse it now.
    if (this.#writer?.fullSince != null) return Promise.reject(this.#fullError());
    this.#compactWaiter ??= deferred();
    const { promise } = this.#compactWaiter;
    this.#startCompactionIfQuiet();
    return promise;
  }

  async flush(): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#writer?.fullSince != null) throw this.#fullError();
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
      full: this.health().full,
      fullSince: this.health().fullSince,
    };
  }

  health(): DurableStoreHealth {
    const since = this.#writer?.fullSince ?? this.#epochFullSince;
    return {
      full: since !== null,
      fullSince: since,
      waiting: this.#writer?.waiting ?? 0,
      failed: this.#failure?.code ?? null,
    };
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#closing = true;
    uninstallGlobals(this.indexedDB);
    this.appState.close();
    const writer = this.#writer;
    if (writer?.fullSince != null && !this.#failure) {
      // Waiting for space would block the close for as long as the disk stays full.
      this.#log.warn(
        `store: closing on a full disk; ${writer.waiting} commits rejected with STORAGE_FULL are not written`,
      );
    } else if (writer && !this.#failure && this.#state === 'open') {
      await writer.drain().catch(() => undefined);
      // The drain may have failed the store, which TypeScript's narrowing cannot see.
      const changed = writer.records > 0 || this.#identityDirty;
      if (this.#compactOnClose && changed && this.stats().failed === null) {
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
    await writer?.settle();
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
    const identity = this.#identity;
    try {
      const content = encodeSnapshot(dumpAll(this.#raw));
      plaintext = frameSnapshot(identity, content);
      content.fill(0);
    } catch (e) {
      waiter.reject(e);
      return;
    }
    writer
      .exclusive(() => this.#advance(writer, plaintext, identity))
      .then(waiter.resolve, (e: unknown) => {
        plaintext.fill(0); // refused without running (a full disk, a stopped store)
        waiter.reject(e);
      });
  }

  async bindIdentity(identity: StoreIdentity): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#state !== 'open')
      throw new StoreError(StoreCode.Closed, 'the durable store is closed');
    const next = reconcileIdentity(
      this.#identity,
      checkIdentityOption(identity),
      this.#ctx.dir,
      'as logged in',
    );
    if (sameIdentity(next, this.#identity) && !this.#identityDirty) return;
    this.#identity = next;
    this.#identityDirty = true;
    await this.compact();
  }

  get identity(): StoreIdentity | null {
    return this.#identity && { ...this.#identity };
  }

  async #advance(
    writer: JournalWriter,
    plaintext: Buffer,
    identity: StoreIdentity | null,
  ): Promise<void> {
    try {
      if (writer.records === 0 && !this.#identityDirty) return;
      const result = await advanceEpoch(this.#ctx, writer.epoch, plaintext);
      if (this.#epochFullSince !== null) {
        this.#epochFullSince = null;
        this.#reportHealth();
      }
      if (result.ok) {
        if (this.#identity === identity) this.#identityDirty = false;
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
        // Not again on the next commit: each try writes and fsyncs a whole snapshot, and what
        // stopped this one (a vault that is down, mostly) rarely clears within seconds.
        this.#compactAfter = Date.now() + ABANDONED_RETRY_MS;
        if (isNoSpace(result.error)) {
          this.#compactAfter = Date.now() + 30 * this.#fullRetryMs;
          throw new StoreError(
            StoreCode.Full,
            'the disk is full: compaction abandoned; the journal continues',
            { cause: result.error },
          );
        }
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
    if (Date.now() < this.#compactAfter) return;
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
    this.#reportHealth();
  }

  #fullChanged(full: boolean): void {
    if (full) {
      this.#log.warn(
        `store: the disk is full; commits ${this.#options.holdWhileFull ? 'wait' : 'are refused with STORAGE_FULL'} and are retried every ${this.#fullRetryMs} ms`,
      );
    } else {
      this.#log.info('store: the disk has space again; commits are accepted');
    }
    this.#reportHealth();
    if (!full) this.#maybeAutoCompact();
  }

  /** A rename or directory sync after the counter moved found no space: wait and retry. */
  async #epochNoSpace(error: unknown): Promise<boolean> {
    if (this.#stopping()) return false;
    if (this.#epochFullSince === null) {
      this.#epochFullSince = Date.now();
      this.#log.warn(`store: the disk is full while finishing a compaction (${errorCode(error)})`);
      this.#reportHealth();
    }
    await sleep(this.#fullRetryMs);
    return !this.#stopping();
  }

  #stopping(): boolean {
    return this.#closing || this.#state !== 'open';
  }

  #fullError(): StoreError {
    const waiting = this.#writer?.waiting ?? 0;
    return new StoreError(StoreCode.Full, `the disk is full: ${waiting} commits waiting; retrying`);
  }

  #reportHealth(): void {
    try {
      this.#onHealth?.(this.health());
    } catch (e) {
      this.#log.warn(`store: the onHealth callback threw (${errorCode(e)})`);
    }
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
  if (options.identity !== undefined) checkIdentityOption(options.identity);
  const keys = deriveKeys(options.storeKey);
  let release: (() => Promise<void>) | null = null;
  try {
    const fs = options.fs ?? nodeFs;
    await makeDirDurable(fs, options.dir);
    // Only a real directory has owners and modes (a simulated disk in tests has neither).
    if (fs === nodeFs) await checkHygiene(options.dir);
    release = await lockDirectory(options.dir, fs);
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
    if (isNoSpace(e)) {
      throw new StoreError(
        StoreCode.Full,
        `the disk is full: the store in ${options.dir} cannot be opened (finishing an ` +
          'interrupted write needs space); free some and retry',
        { cause: e },
      );
    }
    throw e;
  }
}

async function checkHygiene(dir: string): Promise<void> {
  try {
    await assertPrivateDir(dir, 'the store directory');
  } catch (e) {
    if (!(e instanceof UnsafeFilesError)) throw e;
    throw new StoreError(StoreCode.UnsafeFiles, e.message, { cause: e });
  }
}
