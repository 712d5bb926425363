import { type FileHandle, open, rename, stat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { formatPath } from '../load.ts';
import { type Lock, acquireLock } from '../../keyvault/common/lock.ts';
import {
  type AuditEntry,
  type AuditRecord,
  AuditError,
  GENESIS_HASH,
  type LogRecord,
  auditRecordSchema,
  canonicalJson,
  entryHash,
} from './entry.ts';
import { type SealedFile, listSealed, segmentPath, syncDir } from './files.ts';
import { DEFAULT_REFUSALS, type RefusalOptions, RefusalWindows, refusalKey } from './refusals.ts';
import { type Head, firstEntry, readSealed, readTail } from './tail.ts';
import { describeBroken, verifyAuditLog } from './verify.ts';

export interface AuditBounds {
  /** Every segment together stays within this many bytes. */
  maxBytes: number;
  /** The segment being written is sealed, and a new one begun, before it would pass this. */
  segmentBytes: number;
}

export interface AuditLogOptions {
  /**
   * A torn last line (the process died mid-append) is, by default, cut off (its first 64 KiB
   * kept in `<log>.torn-<ms>`) and an `audit.recover` entry appended in its place: that entry
   * was never acknowledged, so nothing acknowledged is lost. `refuse` throws AUDIT_TORN_TAIL.
   */
  onTornTail?: 'repair' | 'refuse';
  /** `tail` (default) checks the last entry; `full` verifies every segment first. */
  verifyOnOpen?: 'tail' | 'full';
  /** Most entries written with one fsync (group commit). */
  maxBatch?: number;
  /**
   * Segments and the size bound (the endpoint passes the policy's `audit` section). Without
   * them the log is one file that only grows: for short-lived writers (reset-store), which
   * must not prune by a bound other than the operator's.
   */
  bounds?: AuditBounds;
  /** How appendRefusal() counts floods (refusals.ts); default 60 s windows, 5 written each. */
  refusals?: RefusalOptions;
  /** For tests. */
  now?: () => Date;
}

type Made = { entry: AuditEntry; line: string; bytes: number };
type Item =
  | (Made & {
      kind: 'entry';
      resolve: (entry: AuditEntry) => void;
      reject: (error: Error) => void;
    })
  /** Seal the file being written and start `segment` (its header is the next item). */
  | { kind: 'rotate'; segment: number };

interface Sealed extends SealedFile {
  bytes: number;
  /** Where the segment continues the chain from (its first entry), if readable. */
  start: { seq: number; prevHash: string } | undefined;
}

function checkOptions(options: AuditLogOptions): void {
  const b = options.bounds;
  if (b) {
    const int = (n: number) => Number.isSafeInteger(n) && n > 0;
    if (!int(b.segmentBytes) || b.segmentBytes < 1024 || !int(b.maxBytes)) {
      throw new RangeError('audit bounds: segmentBytes >= 1024 and maxBytes, in whole bytes');
    }
    if (b.maxBytes < 2 * b.segmentBytes) {
      throw new RangeError('audit bounds: maxBytes must be at least twice segmentBytes');
    }
  }
  const r = options.refusals;
  if (
    r &&
    !(r.windowMs > 0 && Number.isInteger(r.individualPerWindow) && r.individualPerWindow >= 0)
  ) {
    throw new RangeError('audit refusals: windowMs > 0 and individualPerWindow >= 0');
  }
}

/**
 * The writer. One per log (a lock file enforces it, across processes too).
 *
 * `append()` resolves only once its entry is on disk (fdatasync). Appends made while an fsync is
 * running are written together with the next one (group commit, at most `maxBatch`, default
 * 256, per fsync), so many requests share one fsync but none is acknowledged early. If a write
 * fails the log stops: that append and every later one is rejected (AUDIT_FAILED) and the
 * caller must not carry on unaudited; reopening repairs the tail.
 *
 * With `bounds`, the file is sealed (renamed `<log>.NNNNNN`) before an entry would take it past
 * segmentBytes, and a new `<log>` begins with an `audit.segment` entry chained to the last one
 * sealed. When the sealed segments pass maxBytes - segmentBytes, an `audit.prune` entry naming
 * the last entry to go (seq and hash) is made durable, and only then are the oldest deleted, so
 * the verifier can tell that pruning from a deleted or truncated segment.
 */
export class AuditLog {
  readonly path: string;
  #handle: FileHandle;
  readonly #lock: Lock;
  readonly #now: () => Date;
  readonly #maxBatch: number;
  readonly #bounds: AuditBounds | undefined;
  readonly #refusals: RefusalWindows;
  // The chain as appends see it (queued entries included).
  #seq: number;
  #hash: string;
  #segment: number;
  #segmentBytes: number;
  #segmentEntries: number;
  // The files as they are on disk.
  #written: number;
  #activeStart: { seq: number; prevHash: string } | undefined;
  readonly #sealed: Sealed[];
  #queue: Item[] = [];
  #flushing: Promise<void> | undefined;
  #pruning: Promise<void> | undefined;
  #failed: AuditError | undefined;
  #closed = false;

  private constructor(
    path: string,
    handle: FileHandle,
    lock: Lock,
    options: AuditLogOptions,
    state: {
      head: Head;
      segment: number;
      size: number;
      entries: number;
      activeStart: { seq: number; prevHash: string } | undefined;
      sealed: Sealed[];
    },
  ) {
    this.path = path;
    this.#handle = handle;
    this.#lock = lock;
    this.#now = options.now ?? (() => new Date());
    this.#maxBatch = Math.max(1, options.maxBatch ?? 256);
    this.#bounds = options.bounds;
    this.#seq = state.head.seq;
    this.#hash = state.head.hash;
    this.#segment = state.segment;
    this.#segmentBytes = state.size;
    this.#segmentEntries = state.entries;
    this.#written = state.size;
    this.#activeStart = state.activeStart;
    this.#sealed = state.sealed;
    this.#refusals = new RefusalWindows(
      options.refusals ?? DEFAULT_REFUSALS,
      this.#now,
      (client, since, counts) => {
        // Its failure stops the log, which every later append reports.
        this.#enqueue({
          client,
          action: 'audit.refusals',
          target: null,
          decision: 'deny',
          reason: 'AGGREGATED',
          since,
          counts,
        }).catch(() => undefined);
      },
    );
  }

  /** Opens (creating, mode 0600) the log, checks its tail, and continues its chain. */
  static async open(path: string, options: AuditLogOptions = {}): Promise<AuditLog> {
    checkOptions(options);
    const lock = await acquireLock(path);
    let handle: FileHandle | undefined;
    try {
      const files = await listSealed(path);
      handle = await open(path, 'a+', 0o600);
      const info = await handle.stat();
      if (!info.isFile()) throw new AuditError('AUDIT_CORRUPT', `${path}: not a regular file`);
      if ((info.mode & 0o022) !== 0) {
        throw new AuditError(
          'AUDIT_CORRUPT',
          `${path}: writable by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
        );
      }
      if (options.verifyOnOpen === 'full') {
        const result = await verifyAuditLog(path);
        if (!result.ok && result.broken.problem !== 'torn-tail') {
          throw new AuditError('AUDIT_CORRUPT', `${path}: ${describeBroken(result.broken)}`);
        }
      }
      const tail = await readTail(handle, path, options.onTornTail ?? 'repair');
      const sealed: Sealed[] = [];
      let newestSealed: Head | undefined;
      for (const [i, file] of files.entries()) {
        const newest = i === files.length - 1;
        const read = await readSealed(file.path, newest && tail.head === null);
        const start = read.first && { seq: read.first.seq, prevHash: read.first.prevHash };
        sealed.push({ ...file, bytes: read.bytes, start });
        if (read.last) newestSealed = { seq: read.last.seq, hash: read.last.hash };
      }
      const first = tail.head ? await firstEntry(handle) : undefined;
      const lastSealed = files.at(-1)?.segment ?? 0;
      const segment = tail.head ? (first?.segment ?? 1) : lastSealed + 1;
      if (segment <= lastSealed) {
        throw new AuditError(
          'AUDIT_CORRUPT',
          `${path}: it is segment ${segment}, yet ${segmentPath(path, lastSealed)} exists; ` +
            `run "node policy/main.ts audit verify --log ${path}"`,
        );
      }
      const log = new AuditLog(path, handle, lock, options, {
        head: tail.head ?? newestSealed ?? { seq: 0, hash: GENESIS_HASH },
        // A crash after sealing a segment leaves <log> empty or missing: it starts the next,
        // with the header #beginSegment() writes below.
        segment: tail.head || files.length === 0 ? segment : segment - 1,
        size: tail.size,
        entries: tail.head ? 1 : 0,
        activeStart: first && { seq: first.seq, prevHash: first.prevHash },
        sealed,
      });
      if (!tail.head && files.length > 0) log.#beginSegment(false);
      if (tail.torn) {
        await log.append({
          client: null,
          action: 'audit.recover',
          target: null,
          decision: 'info',
          reason: 'TORN_TAIL_DISCARDED',
        });
      }
      // A bound lowered since the last run, or a prune a crash interrupted.
      log.#schedulePrune();
      await log.#pruning;
      return log;
    } catch (e) {
      await handle?.close();
      await lock.release();
      throw e;
    }
  }

  /** The last entry appended (or, before any, the one the log ended with). */
  get head(): Head {
    return { seq: this.#seq, hash: this.#hash };
  }

  append(record: AuditRecord): Promise<AuditEntry> {
    const parsed = this.#accept(record);
    if (parsed instanceof Error) return Promise.reject(parsed);
    return this.#enqueue(parsed);
  }

  /**
   * Appends a refusal, or counts it (resolving with null at once) when it is one a caller can
   * repeat without limit and its window already has its individual entries (refusals.ts).
   * Nothing was done for a counted refusal, so nothing waits for its durability.
   */
  appendRefusal(record: AuditRecord): Promise<AuditEntry | null> {
    const parsed = this.#accept(record);
    if (parsed instanceof Error) return Promise.reject(parsed);
    const key = refusalKey(parsed);
    if (key === undefined || this.#refusals.admit(key, parsed.reason)) {
      return this.#enqueue(parsed);
    }
    return Promise.resolve(null);
  }

  /** Writes the counts of every open refusal window now (durable when this resolves). */
  async flushRefusals(): Promise<void> {
    this.#refusals.closeAll();
    await this.#idle();
  }

  #accept(record: AuditRecord): LogRecord | AuditError {
    if (this.#closed) return new AuditError('AUDIT_CLOSED', 'the audit log is closed');
    if (this.#failed) return this.#failed;
    const parsed = auditRecordSchema.safeParse(record);
    if (parsed.success) return parsed.data;
    const issue = parsed.error.issues[0];
    const where = issue ? formatPath(issue.path) : '(record)';
    // Name the field, never the value: a rejected record may be exactly what must not leak.
    return new AuditError(
      'AUDIT_INVALID_RECORD',
      `audit record: ${where}: ${issue?.message ?? 'invalid'}`,
    );
  }

  #make(record: LogRecord): Made {
    const body = {
      seq: this.#seq + 1,
      ts: this.#now().toISOString(),
      ...record,
      prevHash: this.#hash,
    };
    const entry: AuditEntry = { ...body, hash: entryHash(body) };
    const line = `${canonicalJson(entry)}\n`;
    return { entry, line, bytes: Buffer.byteLength(line) };
  }

  /** Chains the entry now (its seq and place are fixed here) and queues it for writing. */
  #enqueue(record: LogRecord): Promise<AuditEntry> {
    if (this.#failed) return Promise.reject(this.#failed);
    let made = this.#make(record);
    const bounds = this.#bounds;
    if (
      bounds &&
      this.#segmentEntries > 0 &&
      this.#segmentBytes + made.bytes > bounds.segmentBytes
    ) {
      this.#beginSegment(true);
      made = this.#make(record);
    }
    this.#segmentEntries++;
    return this.#push(made);
  }

  /** The next segment's header, chained here; `rotate`: seal the current file before it. */
  #beginSegment(rotate: boolean): void {
    const segment = this.#segment + 1;
    if (rotate) this.#queue.push({ kind: 'rotate', segment });
    this.#segment = segment;
    this.#segmentBytes = 0;
    this.#segmentEntries = 0;
    const header = this.#make({
      client: null,
      action: 'audit.segment',
      target: null,
      decision: 'info',
      reason: 'SEGMENT_START',
      segment,
    });
    // Its failure stops the log, which every later append reports.
    this.#push(header).catch(() => undefined);
  }

  #push(made: Made): Promise<AuditEntry> {
    this.#seq = made.entry.seq;
    this.#hash = made.entry.hash;
    this.#segmentBytes += made.bytes;
    return new Promise<AuditEntry>((resolve, reject) => {
      this.#queue.push({ kind: 'entry', ...made, resolve, reject });
      this.#flushing ??= this.#flush();
    });
  }

  /**
   * Drains the queue. #flushing is cleared in the same synchronous step that sees the queue
   * empty, so an append made after that always starts a new flush.
   */
  async #flush(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const next = this.#queue[0];
        if (next?.kind === 'rotate') {
          this.#queue.shift();
          try {
            await this.#rotate(next.segment);
          } catch (e) {
            this.#fail(e, []);
            return;
          }
          continue;
        }
        let n = 0;
        while (n < this.#queue.length && n < this.#maxBatch && this.#queue[n]?.kind === 'entry') {
          n++;
        }
        const batch = this.#queue.splice(0, n) as Extract<Item, { kind: 'entry' }>[];
        const data = Buffer.from(batch.map((p) => p.line).join(''), 'utf8');
        try {
          let written = 0;
          while (written < data.length) {
            const { bytesWritten } = await this.#handle.write(data, written);
            written += bytesWritten;
          }
          await this.#handle.datasync();
        } catch (e) {
          this.#fail(e, batch);
          return;
        }
        this.#written += data.length;
        const first = batch[0]?.entry;
        if (first) this.#activeStart ??= { seq: first.seq, prevHash: first.prevHash };
        for (const p of batch) p.resolve(p.entry);
      }
    } finally {
      this.#flushing = undefined;
    }
  }

  #fail(e: unknown, batch: Extract<Item, { kind: 'entry' }>[]): void {
    const reason = (e as NodeJS.ErrnoException).code ?? 'error';
    this.#failed = new AuditError(
      'AUDIT_FAILED',
      `cannot write the audit log ${this.path} (${reason}); it is stopped`,
    );
    const queued = this.#queue.splice(0).filter((i) => i.kind === 'entry');
    for (const p of [...batch, ...queued]) p.reject(this.#failed);
  }

  /**
   * Seals the file being written (everything in it is already fdatasync'ed) under its number
   * and starts `segment` in a new `<log>`. A crash in between leaves no `<log>`, or an empty
   * one, which open() recognises and continues.
   */
  async #rotate(segment: number): Promise<void> {
    const sealedPath = segmentPath(this.path, segment - 1);
    const taken = await stat(sealedPath).then(
      () => true,
      (e: unknown) => {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
        throw e;
      },
    );
    if (taken) throw new AuditError('AUDIT_FAILED', `${sealedPath} exists already`);
    await rename(this.path, sealedPath);
    const old = this.#handle;
    this.#handle = await open(this.path, 'ax', 0o600);
    await old.close();
    await syncDir(dirname(this.path));
    this.#sealed.push({
      segment: segment - 1,
      path: sealedPath,
      bytes: this.#written,
      start: this.#activeStart,
    });
    this.#written = 0;
    this.#activeStart = undefined;
    this.#schedulePrune();
  }

  #schedulePrune(): void {
    if (!this.#bounds) return;
    const run = (this.#pruning ?? Promise.resolve()).then(() =>
      // An I/O error leaves the files; the next rotation tries again.
      this.#prune().catch(() => undefined),
    );
    this.#pruning = run;
    void run.then(() => {
      if (this.#pruning === run) this.#pruning = undefined;
    });
  }

  /** Deletes the oldest sealed segments past the bound, after recording where they end. */
  async #prune(): Promise<void> {
    const bounds = this.#bounds;
    if (!bounds) return;
    // Room for the segment being written to grow to its size.
    const budget = bounds.maxBytes - bounds.segmentBytes;
    let total = this.#sealed.reduce((sum, s) => sum + s.bytes, 0);
    let n = 0;
    // The newest sealed segment stays: its successor's start may not be on disk yet.
    while (n < this.#sealed.length - 1 && total > budget) {
      total -= this.#sealed[n]?.bytes ?? 0;
      n++;
    }
    const last = this.#sealed[n - 1];
    const next = this.#sealed[n]?.start;
    if (!last || !next) return;
    const victims = this.#sealed.splice(0, n);
    try {
      await this.#enqueue({
        client: null,
        action: 'audit.prune',
        target: null,
        decision: 'info',
        reason: 'SIZE_BOUND',
        pruned: { segment: last.segment, seq: next.seq - 1, hash: next.prevHash },
      });
    } catch {
      this.#sealed.unshift(...victims);
      return;
    }
    // Oldest first: an interrupted prune leaves the newer ones, which a later prune removes.
    while (victims.length > 0) {
      const victim = victims[0];
      if (!victim) break;
      try {
        await unlink(victim.path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.#sealed.unshift(...victims);
          throw e;
        }
      }
      victims.shift();
    }
    await syncDir(dirname(this.path));
  }

  /** Until nothing is queued, being written or being pruned. */
  async #idle(): Promise<void> {
    while (this.#flushing ?? this.#pruning) {
      await this.#flushing;
      await this.#pruning;
    }
  }

  /** Writes the open refusal windows' counts, waits for pending appends, then closes. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#refusals.closeAll();
    await this.#idle();
    await this.#handle.close();
    await this.#lock.release();
  }
}
