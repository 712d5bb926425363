import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import type { AppState } from './store/index.ts';

/**
 * Messages accepted for sending. Each is written to the sealed store (durably) before
 * enqueue() returns, sent with a transaction id fixed at acceptance, and removed only after
 * the homeserver acknowledged it. After a crash or an outage the same transaction id is sent
 * again, and the homeserver's deduplication on it makes the delivery exactly once.
 */
const entrySchema = z.object({
  txnId: z.string().min(1),
  roomId: z.string().min(1),
  /** Text, edit: the text. Reaction: the key. Redaction: the reason. Attachment: the caption. */
  body: z.string(),
  /** What to send; entries of earlier versions are all text. */
  kind: z.enum(['text', 'edit', 'reaction', 'redaction', 'attachment']).default('text'),
  /** The event this message replies to. */
  replyTo: z.string().optional(),
  /** Edit, reaction, redaction: the event it is about. */
  target: z.string().optional(),
  /** A thread reply: the thread's root. */
  thread: z.string().optional(),
  /** An uploaded attachment (with its decryption key: the store is sealed). */
  attachment: z
    .object({
      msgtype: z.enum(['m.file', 'm.image', 'm.video', 'm.audio']),
      name: z.string(),
      mimetype: z.string(),
      size: z.number().int().nonnegative(),
      file: z.record(z.string(), z.unknown()),
    })
    .optional(),
  acceptedAt: z.number(),
  seq: z.number().int().nonnegative(),
});
export type OutboxEntry = z.infer<typeof entrySchema>;
/** What enqueue takes besides the room and the body. */
export type EnqueueOptions = Partial<
  Pick<OutboxEntry, 'kind' | 'replyTo' | 'target' | 'thread' | 'attachment'>
>;

/** A send the homeserver refused for good, kept until a UI retries or discards it. */
export interface FailedSend {
  entry: OutboxEntry;
  reason: string;
  /** The homeserver's errcode (M_FORBIDDEN, M_TOO_LARGE...), or ERROR. */
  code: string;
  failedAt: number;
}

const PREFIX = 'outbox/';
/** How soon a held room is tried again without a nudge (an acknowledgement pumps at once). */
const HOLD_RETRY_MS = 30_000;

/**
 * A send that must wait for the user, not for the network (a member's identity changed): the
 * room's messages stay queued, in order, and other rooms go on.
 */
export function isHeld(e: unknown): boolean {
  return typeof e === 'object' && e !== null && 'hold' in e && e.hold === true;
}
/** Messages the homeserver refused for good (left the room, no such room...): kept, reported. */
const FAILED_PREFIX = 'outbox-failed/';

export interface OutboxLogger {
  warn(message: string): void;
}

export class Outbox {
  readonly #state: AppState;
  readonly #send: (entry: OutboxEntry) => Promise<string>;
  readonly #log: OutboxLogger;
  readonly #sent = new Set<(entry: OutboxEntry, eventId: string) => void>();
  readonly #failed = new Set<(failed: FailedSend) => void>();
  #pumping: Promise<void> | undefined;
  #again = false;
  #stopped = false;
  #seq = 0;
  #seqKnown = false;
  /** Failed sends being retried or discarded: a second call for one finds it gone. */
  readonly #settling = new Set<string>();
  /** Transaction ids whose acceptance failed: never sent, never counted (see enqueue). */
  readonly #refused = new Set<string>();
  #holdTimer: NodeJS.Timeout | undefined;
  readonly #abort = new AbortController();

  constructor(
    state: AppState,
    send: (entry: OutboxEntry) => Promise<string>,
    logger?: OutboxLogger,
  ) {
    this.#state = state;
    this.#send = send;
    this.#log = logger ?? { warn: () => undefined };
  }

  /** Persists the message; resolves once it is durable. Sending happens in the background. */
  async enqueue(roomId: string, body: string, options: EnqueueOptions = {}): Promise<OutboxEntry> {
    const seq = await this.#nextSeq();
    const entry: OutboxEntry = {
      txnId: `mte.${randomBytes(12).toString('hex')}`,
      roomId,
      body,
      kind: options.kind ?? 'text',
      ...(options.replyTo === undefined ? {} : { replyTo: options.replyTo }),
      ...(options.target === undefined ? {} : { target: options.target }),
      ...(options.thread === undefined ? {} : { thread: options.thread }),
      ...(options.attachment === undefined ? {} : { attachment: options.attachment }),
      acceptedAt: Date.now(),
      seq,
    };
    try {
      await this.#state.put(key(entry), entry);
    } catch (e) {
      // The caller is told the send failed, so it must never go out, nor count as pending:
      // the failed write may still be in memory (or reach the disk once a full one frees up),
      // so it is marked refused here and its deletion queued behind it.
      this.#refused.add(entry.txnId);
      this.#state.delete(key(entry)).catch(() => undefined);
      throw e;
    }
    void this.pump();
    return entry;
  }

  /** Everything accepted and not yet acknowledged, oldest first. */
  async pending(): Promise<OutboxEntry[]> {
    const keys = (await this.#state.keys()).filter((k) => k.startsWith(PREFIX)).sort();
    const entries: OutboxEntry[] = [];
    for (const k of keys) {
      try {
        const entry = await this.#state.get(k, entrySchema);
        if (entry && !this.#refused.has(entry.txnId)) entries.push(entry);
      } catch (e) {
        // Written by a different version, say: skipped and reported, never blocking the rest.
        this.#log.warn(`outbox: skipping unreadable entry ${k} (${describe(e)})`);
      }
    }
    return entries;
  }

  onSent(listener: (entry: OutboxEntry, eventId: string) => void): () => void {
    this.#sent.add(listener);
    return () => this.#sent.delete(listener);
  }

  /** Called once for each send the outbox gives up on (the homeserver refused it for good). */
  onFailed(listener: (failed: FailedSend) => void): () => void {
    this.#failed.add(listener);
    return () => this.#failed.delete(listener);
  }

  /** Messages the homeserver refused permanently, with the reason, oldest first. */
  async failed(): Promise<FailedSend[]> {
    return (await this.#failedEntries()).map(([, value]) => value);
  }

  /**
   * Queues a failed send again, last in its room, with the same transaction id (the homeserver
   * never accepted it, so nothing is sent twice). false when there is no such failed send.
   */
  async retry(txnId: string): Promise<boolean> {
    return this.#settle(txnId, async (failedKey, failed) => {
      const entry: OutboxEntry = { ...failed.entry, seq: await this.#nextSeq() };
      await this.#state.update({ delete: [failedKey], put: [[key(entry), entry]] });
      void this.pump();
    });
  }

  /** Drops a failed send for good. false when there is no such failed send. */
  async discard(txnId: string): Promise<boolean> {
    return this.#settle(txnId, async (failedKey) => {
      await this.#state.delete(failedKey);
    });
  }

  /**
   * One retry or discard of a failed send at a time: two at once (a double click, two UIs)
   * would both find it set aside, and two retries would queue it twice.
   */
  async #settle(
    txnId: string,
    work: (failedKey: string, failed: FailedSend) => Promise<void>,
  ): Promise<boolean> {
    if (this.#settling.has(txnId)) return false;
    this.#settling.add(txnId);
    try {
      const found = (await this.#failedEntries()).find(([, f]) => f.entry.txnId === txnId);
      if (found === undefined) return false;
      await work(...found);
      return true;
    } finally {
      this.#settling.delete(txnId);
    }
  }

  async #failedEntries(): Promise<[string, FailedSend][]> {
    const keys = (await this.#state.keys()).filter((k) => k.startsWith(FAILED_PREFIX)).sort();
    const out: [string, FailedSend][] = [];
    for (const k of keys) {
      const value = await this.#state.get(k, failedSchema).catch(() => undefined);
      if (value) {
        out.push([
          k,
          {
            entry: value.entry,
            reason: value.reason,
            code: value.code ?? 'ERROR',
            failedAt: value.failedAt ?? value.entry.acceptedAt,
          },
        ]);
      }
    }
    return out;
  }

  /**
   * The next sequence number. The store is read once per process (this process is the
   * outbox's only writer), not on every send: reading every pending entry made each send's
   * answer wait on as many store reads as there were sends queued. Failed sends count too:
   * their numbers order the failed list, so a restart must not hand them out again.
   */
  async #nextSeq(): Promise<number> {
    if (!this.#seqKnown) {
      const seqs = [
        ...(await this.pending()).map((p) => p.seq),
        ...(await this.#failedEntries()).map(([, f]) => f.entry.seq),
      ];
      // A loop, not Math.max(...seqs): a spread of a long queue overflows the stack.
      for (const seq of seqs) if (seq >= this.#seq) this.#seq = seq + 1;
      this.#seqKnown = true;
    }
    return this.#seq++;
  }

  /**
   * Sends what is pending, in order; one pump at a time. It never rejects: a failure is
   * logged, and the next enqueue or restart pumps again.
   */
  pump(): Promise<void> {
    if (this.#pumping) {
      this.#again = true;
      return this.#pumping;
    }
    this.#pumping = (async () => {
      try {
        do {
          this.#again = false;
          const held = new Set<string>();
          for (const entry of await this.pending()) {
            if (this.#stopped) return;
            if (held.has(entry.roomId)) continue; // keeps the room's order
            const outcome = await this.#sendWithRetry(entry);
            if (outcome === 'stopped') return;
            if (outcome === 'held') {
              held.add(entry.roomId);
              continue;
            }
            if (outcome.ok) {
              await this.#state.delete(key(entry));
              for (const l of this.#sent) l(entry, outcome.eventId);
            } else {
              // Set aside, in one transaction, so one bad message cannot block all others.
              const failed: FailedSend = {
                entry,
                reason: outcome.reason,
                code: outcome.code,
                failedAt: Date.now(),
              };
              await this.#state.update({
                delete: [key(entry)],
                put: [[`${FAILED_PREFIX}${key(entry).slice(PREFIX.length)}`, failed]],
              });
              this.#log.warn(
                `outbox: ${entry.txnId} refused for good (${outcome.code}); set aside`,
              );
              for (const l of this.#failed) l(failed);
            }
          }
          if (held.size > 0) this.#retryHeldLater();
          // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- set by enqueue during the awaits
        } while (this.#again && !this.#stopped);
      } catch (e) {
        this.#log.warn(`outbox: pump failed (${e instanceof Error ? e.message : String(e)})`);
      } finally {
        this.#pumping = undefined;
      }
    })();
    return this.#pumping;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#holdTimer);
    this.#abort.abort();
    await this.#pumping;
  }

  async #sendWithRetry(
    entry: OutboxEntry,
  ): Promise<
    { ok: true; eventId: string } | { ok: false; reason: string; code: string } | 'stopped' | 'held'
  > {
    for (let attempt = 0; !this.#stopped; attempt++) {
      try {
        return { ok: true, eventId: await this.#send(entry) };
      } catch (e) {
        if (isPermanent(e)) return { ok: false, reason: describe(e), code: errcodeOf(e) };
        if (isHeld(e)) {
          this.#log.warn(`outbox: ${entry.txnId} held (${describe(e)})`);
          return 'held';
        }
        const delay = Math.min(30_000, 250 * 2 ** Math.min(attempt, 7));
        this.#log.warn(
          `outbox: sending ${entry.txnId} failed (${describe(e)}); retrying in ${delay} ms`,
        );
        await sleep(delay, undefined, { signal: this.#abort.signal }).catch(() => undefined);
      }
    }
    return 'stopped';
  }

  #retryHeldLater(): void {
    if (this.#holdTimer !== undefined || this.#stopped) return;
    this.#holdTimer = setTimeout(() => {
      this.#holdTimer = undefined;
      void this.pump();
    }, HOLD_RETRY_MS);
    this.#holdTimer.unref();
  }
}

const failedSchema = z.object({
  entry: entrySchema,
  reason: z.string(),
  /** Absent in entries of earlier versions. */
  code: z.string().optional(),
  failedAt: z.number().optional(),
});

function errcodeOf(e: unknown): string {
  const code = (e as { errcode?: unknown } | null)?.errcode;
  return typeof code === 'string' && /^[A-Z0-9_.]{1,64}$/i.test(code) ? code : 'ERROR';
}

/** A homeserver error that retrying cannot fix (403 not in room, 404 no such room, 400). */
function isPermanent(e: unknown): boolean {
  return (
    typeof e === 'object' &&
    e !== null &&
    'retryable' in e &&
    e.retryable === false &&
    'status' in e &&
    typeof e.status === 'number' &&
    e.status >= 400 &&
    e.status < 500 &&
    e.status !== 401 // an expired session: keep the message until we are logged in again
  );
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function key(entry: OutboxEntry): string {
  return `${PREFIX}${String(entry.seq).padStart(12, '0')}-${entry.txnId}`;
}
