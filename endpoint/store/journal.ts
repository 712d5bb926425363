/**
 * The append side of the journal: one queue, so records land in commit order, and group
 * commit, so transactions that finish while an fsync is running share the next one (each
 * still gets its own record). A record's promise settles only after fdatasync returns: the
 * durable store releases the transaction's `complete` event on that promise.
 *
 * Exclusive tasks (compaction) run in the same queue, after every record queued before them
 * is durable and before any queued after them is written.
 */
import type { FileHandle } from 'node:fs/promises';
import { StoreCode, StoreError } from './errors.ts';
import { sealRecord } from './format.ts';
import type { StoreKeys } from './keys.ts';

interface AppendItem {
  kind: 'append';
  payload: Buffer;
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

/** Bounds one group write, so a burst does not build one huge buffer. */
const MAX_GROUP_BYTES = 8 << 20;

export interface JournalPosition {
  handle: FileHandle;
  epoch: bigint;
  /** Sequence number of the next record. */
  seq: number;
  /** File size (header plus intact records). */
  size: number;
}

export class JournalWriter {
  readonly #keys: StoreKeys;
  #pos: JournalPosition;
  #queue: Item[] = [];
  #running = false;
  #failure: StoreError | null = null;

  constructor(keys: StoreKeys, position: JournalPosition) {
    this.#keys = keys;
    this.#pos = position;
  }

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
    return !this.#running && this.#queue.length === 0;
  }

  /** Queues a record; resolves when it is on disk. The payload is zeroed once sealed. */
  append(payload: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ kind: 'append', payload, resolve, reject });
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
    this.#failure ??= failure;
    for (const item of this.#queue.splice(0)) item.reject(this.#failure);
  }

  async close(): Promise<void> {
    await this.#pos.handle.close().catch(() => undefined);
  }

  #pump(): void {
    if (this.#running) return;
    this.#running = true;
    void this.#run().finally(() => {
      this.#running = false;
      if (this.#queue.length > 0) this.#pump();
    });
  }

  async #run(): Promise<void> {
    for (let head = this.#queue[0]; head; head = this.#queue[0]) {
      if (this.#failure) {
        this.fail(this.#failure);
        return;
      }
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
      const group = this.#takeGroup();
      try {
        await this.#write(group);
        for (const item of group) item.resolve();
      } catch (e) {
        const failure = new StoreError(
          StoreCode.Failed,
          'writing the journal failed; the store stopped accepting commits (reopen it)',
          { cause: e },
        );
        for (const item of group) item.reject(failure);
        this.fail(failure);
        return;
      }
    }
  }

  #takeGroup(): AppendItem[] {
    const group: AppendItem[] = [];
    let bytes = 0;
    for (let head = this.#queue[0]; head?.kind === 'append'; head = this.#queue[0]) {
      if (group.length > 0 && bytes + head.payload.length > MAX_GROUP_BYTES) break;
      bytes += head.payload.length;
      group.push(head);
      this.#queue.shift();
    }
    return group;
  }

  async #write(group: AppendItem[]): Promise<void> {
    const pos = this.#pos;
    const frames = group.map((item, i) => {
      const frame = sealRecord(this.#keys, pos.epoch, pos.seq + i, item.payload);
      item.payload.fill(0);
      return frame;
    });
    const buffer = Buffer.concat(frames);
    let written = 0;
    while (written < buffer.length) {
      const { bytesWritten } = await pos.handle.write(
        buffer,
        written,
        buffer.length - written,
        pos.size + written,
      );
      written += bytesWritten;
    }
    await pos.handle.datasync();
    pos.size += buffer.length;
    pos.seq += group.length;
  }
}
