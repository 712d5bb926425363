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
  body: z.string(),
  acceptedAt: z.number(),
  seq: z.number().int().nonnegative(),
});
export type OutboxEntry = z.infer<typeof entrySchema>;

const PREFIX = 'outbox/';

export interface OutboxLogger {
  warn(message: string): void;
}

export class Outbox {
  readonly #state: AppState;
  readonly #send: (entry: OutboxEntry) => Promise<string>;
  readonly #log: OutboxLogger;
  readonly #sent = new Set<(entry: OutboxEntry, eventId: string) => void>();
  #pumping: Promise<void> | undefined;
  #again = false;
  #stopped = false;
  #seq = 0;

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
  async enqueue(roomId: string, body: string): Promise<OutboxEntry> {
    const pending = await this.pending();
    this.#seq = Math.max(this.#seq, ...pending.map((p) => p.seq + 1));
    const entry: OutboxEntry = {
      txnId: `mte.${randomBytes(12).toString('hex')}`,
      roomId,
      body,
      acceptedAt: Date.now(),
      seq: this.#seq++,
    };
    await this.#state.put(key(entry), entry);
    void this.pump();
    return entry;
  }

  /** Everything accepted and not yet acknowledged, oldest first. */
  async pending(): Promise<OutboxEntry[]> {
    const keys = (await this.#state.keys()).filter((k) => k.startsWith(PREFIX)).sort();
    const entries: OutboxEntry[] = [];
    for (const k of keys) {
      const entry = await this.#state.get(k, entrySchema);
      if (entry) entries.push(entry);
    }
    return entries;
  }

  onSent(listener: (entry: OutboxEntry, eventId: string) => void): () => void {
    this.#sent.add(listener);
    return () => this.#sent.delete(listener);
  }

  /** Sends what is pending, in order; one pump at a time. */
  pump(): Promise<void> {
    if (this.#pumping) {
      this.#again = true;
      return this.#pumping;
    }
    this.#pumping = (async () => {
      try {
        do {
          this.#again = false;
          for (const entry of await this.pending()) {
            if (this.#stopped) return;
            const eventId = await this.#sendWithRetry(entry);
            if (eventId === undefined) return;
            await this.#state.delete(key(entry));
            for (const l of this.#sent) l(entry, eventId);
          }
          // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- set by enqueue during the awaits
        } while (this.#again && !this.#stopped);
      } finally {
        this.#pumping = undefined;
      }
    })();
    return this.#pumping;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#pumping?.catch(() => undefined);
  }

  async #sendWithRetry(entry: OutboxEntry): Promise<string | undefined> {
    for (let attempt = 0; !this.#stopped; attempt++) {
      try {
        return await this.#send(entry);
      } catch (e) {
        const delay = Math.min(30_000, 250 * 2 ** Math.min(attempt, 7));
        this.#log.warn(
          `outbox: sending ${entry.txnId} failed (${e instanceof Error ? e.message : String(e)}); retrying in ${delay} ms`,
        );
        await sleep(delay);
      }
    }
    return undefined;
  }
}

function key(entry: OutboxEntry): string {
  return `${PREFIX}${String(entry.seq).padStart(12, '0')}-${entry.txnId}`;
}
