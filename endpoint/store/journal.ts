/**
 * The append side of the journal: one queue, so records land in commit order, and group
 * commit, so transactions that finish while an fsync is running share the next one (each
 * still gets its own record). A record's promise settles only after fdatasync returns: the
 * durable store releases the transaction's `complete` event on that promise.
 *
 * Exclusive tasks (compaction) run in the same queue, after every record queued before them
 * is durable and before any queued after them is written.
 *
 * A full disk (ENOSPC, EDQUOT) does not stop the writer. The group that found no space is cut
 * back off the file (whatever part of it was written), its commits and every commit queued or
 * arriving while the disk stays full are rejected at once with STORAGE_FULL, and their
 * records stay queued, in order: they are rewritten and fsynced every `retryMs` until a write
 * succeeds. So the in-memory state (which already holds those transactions) and the disk
 * never part ways: a STORAGE_FULL commit is "not durable yet", written once space returns, or
 * lost with the process if it stops first, like any commit that was never acknowledged.
 */
import { StoreCode, StoreError } from './errors.ts';
import { MAX_GROUP_BYTES, recordBytes, sealGroup } from './format.ts';
import { isNoSpace, type StoreFileHandle } from './fs.ts';
import type { StoreKeys } from './keys.ts';

interface AppendItem {
  kind: 'append';
  payload: Buffer;
  /** Already answered (rejected with STORAGE_FULL): written later without telling anyone. */
  answered: boolean;
  resolve: () => void;
  reject: (e: unknown) => void;
}
interface TaskItem {
  kind: 'task';
  run: () => Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}
type Item = AppendItem | TaskItem;

interface Group {
  items: AppendItem[];
  /** The sealed records, kept so that a write that found no space can be repeated as is. */
  frames: Buffer;
}

export interface JournalPosition {
  handle: StoreFileHandle;
  epoch: bigint;
  /** Sequence number of the next record. */
  seq: number;
  /** File size (header plus intact records). */
  size: number;
}

export interface JournalOptions {
  /** Pause before the first retry once the disk is full; later ones wait up to twice it. */
  retryMs?: number;
  /** Records held while the disk is full before the writer gives up and stops (bytes). */
  maxWaitingBytes?: number;
  /** Called when the writer becomes full, and when a write succeeds again. */
  onFull?: (full: boolean) => void;
  /** Called once, when the writer stops for good (also when it stops itself). */
  onFailed?: (failure: StoreError) => void;
  /**
   * While the disk is full, hold commits (their promises wait, to be settled once written)
   * instead of rejecting them with STORAGE_FULL. The endpoint holds: the crypto engine treats
   * a rejected commit as an aborted transaction while its memory already has the change (a
   * room key just received, a ratcheted Olm session), and the two part ways; a commit that
   * waits keeps the engine consistent and only slows it. Rejecting suits callers that can
   * redo a refused commit.
   */
  holdWhileFull?: boolean;
}

export class JournalWriter {
  readonly #keys: StoreKeys;
  readonly #retryMs: number;
  readonly #maxWaitingBytes: number;
  readonly #onFull: (full: boolean) => void;
  readonly #onFailed: (failure: StoreError) => void;
  #pos: JournalPosition;
  #queue: Item[] = [];
  #running: Promise<void> | null = null;
  #failure: StoreError | null = null;
  /** The group being written, or the one waiting for space. */
  #group: Group | null = null;
  #fullSince: number | null = null;
  #retryDelay = 0;
  #timer: NodeJS.Timeout | null = null;

  constructor(keys: StoreKeys, position: JournalPosition, options: JournalOptions = {}) {
    this.#keys = keys;
    this.#pos = position;
    this.#retryMs = options.retryMs ?? 1000;
    this.#maxWaitingBytes = options.maxWaitingBytes ?? 64 << 20;
    this.#onFull = options.onFull ?? (() => undefined);
    this.#onFailed = options.onFailed ?? (() => undefined);
    this.#hold = options.holdWhileFull ?? false;
  }

  readonly #hold: boolean;

  get epoch(): bigint {
    return this.#pos.epoch;
  }
  get records(): number {
    return this.#pos.seq;
  }
  get bytes(): number {
    return this.#pos.size;
  }
  get failure(): StoreError | null {
    return this.#failure;
  }
  get idle(): boolean {
    return this.#running === null && this.#queue.length === 0 && this.#group === null;
  }
  /** Since when (ms since the epoch) the disk has been full, or null. */
  get fullSince(): number | null {
    return this.#fullSince;
  }
  /** Commits rejected with STORAGE_FULL whose records are still waiting for space. */
  get waiting(): number {
    let n = this.#group?.items.length ?? 0;
    for (const item of this.#queue) if (item.kind === 'append') n++;
    return this.#fullSince === null ? 0 : n;
  }

  /**
   * Queues a record; resolves when it is on disk. The payload is zeroed once sealed. While
   * the disk is full it rejects at once with STORAGE_FULL, and the record is written later.
   */
  append(payload: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#failure) {
        reject(this.#failure);
        return;
      }
      const item: AppendItem = { kind: 'append', payload, answered: false, resolve, reject };
      this.#queue.push(item);
      if (this.#fullSince !== null) {
        this.#checkWaitingBytes(); // past the bound, fail() rejects it (unanswered) instead
        if (this.#stopped() || this.#hold) return;
        item.answered = true;
        reject(this.#fullError());
        return;
      }
      this.#pump();
    });
  }

  /** Runs `run` once everything queued before it is durable, with nothing else running. */
  exclusive(run: () => Promise<void>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ kind: 'task', run, resolve, reject });
      this.#pump();
    });
  }

  /** Resolves when everything queued so far has settled. */
  drain(): Promise<void> {
    return this.exclusive(() => Promise.resolve());
  }

  /** Switches to a new journal file (inside an exclusive task, after compaction). */
  async replace(position: JournalPosition): Promise<void> {
    const old = this.#pos.handle;
    this.#pos = position;
    await old.close();
  }

  /** Stops the writer for good: queued and future work is refused with `failure`. */
  fail(failure: StoreError): void {
    const first = this.#failure === null;
    this.#failure ??= failure;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const items: Item[] = [...(this.#group?.items ?? []), ...this.#queue.splice(0)];
    this.#group = null;
    for (const item of items) {
      if (item.kind === 'task' || !item.answered) item.reject(this.#failure);
    }
    if (first) this.#onFailed(this.#failure);
  }

  /** Waits for a write or task in progress (after fail(), nothing new starts). */
  async settle(): Promise<void> {
    await this.#running;
  }

  async close(): Promise<void> {
    await this.#pos.handle.close().catch(() => undefined);
  }

  #pump(): void {
    if (this.#running || this.#timer) return;
    this.#running = this.#run().finally(() => {
      this.#running = null;
      if (this.#queue.length > 0 && this.#fullSince === null) this.#pump();
    });
  }

  async #run(): Promise<void> {
    for (;;) {
      if (this.#failure) {
        this.fail(this.#failure);
        return;
      }
      let group = this.#group;
      if (!group) {
        const head = this.#queue[0];
        if (!head) return;
        if (head.kind === 'task') {
          this.#queue.shift();
          try {
            await head.run();
            head.resolve();
          } catch (e) {
            head.reject(e);
          }
          continue;
        }
        group = this.#seal(this.#takeGroup());
        this.#group = group;
      }
      try {
        await this.#write(group);
      } catch (e) {
        if (this.#stopped()) continue;
        if (isNoSpace(e)) {
          await this.#noSpace(group);
          if (!this.#stopped()) return;
          continue;
        }
        const failure = new StoreError(
          StoreCode.Failed,
          'writing the journal failed; the store stopped accepting commits (reopen it)',
          { cause: e },
        );
        this.fail(failure);
        return;
      }
      this.#group = null;
      for (const item of group.items) if (!item.answered) item.resolve();
      if (this.#fullSince !== null) {
        this.#fullSince = null;
        this.#onFull(false);
      }
    }
  }

  /** Whether fail() ran (possibly while a write was awaited). */
  #stopped(): boolean {
    return this.#failure !== null;
  }

  /** Cuts the group's bytes back off, answers every waiting commit, and schedules a retry. */
  async #noSpace(group: Group): Promise<void> {
    try {
      // A partial write (or one whose fsync failed) must not stay behind the last good record:
      // the retry rewrites the group here, and a crash meanwhile must not find half of it.
      await this.#pos.handle.truncate(this.#pos.size);
    } catch {
      // Retried with the write; the next attempt overwrites the same bytes anyway.
    }
    const first = this.#fullSince === null;
    this.#fullSince ??= Date.now();
    const error = this.#fullError();
    if (!this.#hold) {
      for (const item of [...group.items, ...this.#queue]) {
        if (item.kind === 'append' && !item.answered) {
          item.answered = true;
          item.reject(error);
        }
      }
    }
    // Tasks queued behind (a compaction, a flush's or a close's drain) would wait as long as
    // the disk stays full: refuse them now, as compact() and flush() do while full.
    const tasks = this.#queue.filter((item) => item.kind === 'task');
    this.#queue = this.#queue.filter((item) => item.kind === 'append');
    for (const task of tasks) task.reject(error);
    this.#checkWaitingBytes();
    if (this.#failure) return;
    this.#retryDelay = first ? this.#retryMs : Math.min(this.#retryDelay * 1.5, this.#retryMs * 2);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#pump();
    }, this.#retryDelay);
    this.#timer.unref();
    if (first) this.#onFull(true);
  }

  #fullError(): StoreError {
    return new StoreError(
      StoreCode.Full,
      `the disk is full: ${this.waiting} commits waiting; retrying`,
    );
  }

  /** The waiting records live in memory: past the bound, stop rather than grow without end. */
  #checkWaitingBytes(): void {
    let bytes = this.#group?.frames.length ?? 0;
    for (const item of this.#queue) if (item.kind === 'append') bytes += item.payload.length;
    if (bytes <= this.#maxWaitingBytes) return;
    this.fail(
      new StoreError(
        StoreCode.Failed,
        `the disk stayed full with ${this.waiting} commits (${bytes} bytes) waiting; the store ` +
          'stopped accepting commits (free space, then reopen it)',
      ),
    );
  }

  #takeGroup(): AppendItem[] {
    const group: AppendItem[] = [];
    let bytes = 0;
    for (let head = this.#queue[0]; head?.kind === 'append'; head = this.#queue[0]) {
      // Counted as written (format.ts's torn-tail rule relies on the bound).
      const size = recordBytes(head.payload.length);
      if (group.length > 0 && bytes + size > MAX_GROUP_BYTES) break;
      bytes += size;
      group.push(head);
      this.#queue.shift();
    }
    return group;
  }

  #seal(items: AppendItem[]): Group {
    const pos = this.#pos;
    const payloads = items.map((item) => item.payload);
    const frames = sealGroup(this.#keys, pos.epoch, pos.seq, payloads);
    for (const payload of payloads) payload.fill(0);
    return { items, frames };
  }

  async #write(group: Group): Promise<void> {
    const pos = this.#pos;
    const buffer = group.frames;
    let written = 0;
    while (written < buffer.length) {
      const { bytesWritten } = await pos.handle.write(
        buffer,
        written,
        buffer.length - written,
        pos.size + written,
      );
      if (bytesWritten <= 0) throw new Error('a journal write made no progress');
      written += bytesWritten;
    }
    await pos.handle.datasync();
    pos.size += buffer.length;
    pos.seq += group.items.length;
  }
}
