import { randomBytes } from 'node:crypto';
import type { StreamEvent } from '../contract.ts';

/** An event as the hub receives it, before it is numbered. */
export type HubInput = StreamEvent extends infer E
  ? E extends unknown
    ? Omit<E, 'seq'>
    : never
  : never;

export interface HubLimits {
  /** Events kept for polls that fall behind; older ones are reported as a gap. */
  capacity: number;
  /** Open subscriptions (SSE connections) per client and in all. */
  perClient: number;
  total: number;
  /** A subscription nobody polled for this long is closed. */
  idleMs: number;
}

/**
 * 4096 events cover a burst of several minutes at a busy client's pace; a UI that falls further
 * behind is told (`gap`) and refetches timelines. 8 streams per client is more tabs than a
 * person uses; 64 in all bounds what a compromised UI can pin in memory.
 */
export const DEFAULT_HUB_LIMITS: HubLimits = {
  capacity: 4096,
  perClient: 8,
  total: 64,
  idleMs: 60_000,
};

interface Subscription {
  client: string;
  lastPoll: number;
}

/**
 * Who owns a subscription: the client's name and its token's SHA-256 (hex), so a policy edit
 * that gives a client a new token ends the streams opened with the old one, as removing the
 * client does.
 */
export function streamOwner(name: string, tokenSha256: string): string {
  return `${name}\u0000${tokenSha256}`;
}

/** The owners whose streams a policy lets live: every client that may use events.stream. */
export function liveStreamOwners(
  clients: readonly { name: string; tokenSha256: string; capabilities: readonly string[] }[],
): Set<string> {
  return new Set(
    clients
      .filter((c) => c.capabilities.includes('events.stream'))
      .map((c) => streamOwner(c.name, c.tokenSha256)),
  );
}

export type SubscribeResult =
  { ok: true; subscription: string; cursor: number } | { ok: false; reason: string };

export interface PollResult {
  events: StreamEvent[];
  cursor: number;
  gap: boolean;
}

/**
 * The endpoint's recent events, numbered, for the event stream. Each subscriber polls with the
 * number of the last event it saw, so no event is lost or repeated between polls, and a UI that
 * reconnects (SSE Last-Event-ID) resumes where it stopped, or is told it missed some.
 *
 * Numbers start at the wall-clock millisecond of the endpoint's start, so a number from an
 * earlier run is (in practice) below this run's: a resuming UI gets a gap, not wrong events.
 */
export class EventHub {
  readonly #limits: HubLimits;
  readonly #buffer: StreamEvent[] = [];
  /** The UTF-8 size of each buffered event's JSON, by seq. */
  readonly #sizes = new Map<number, number>();
  readonly #subscriptions = new Map<string, Subscription>();
  readonly #waiters = new Set<() => void>();
  #head: number;
  /** Bumped when the policy changes: a waiting poll ends, so the next is authorised afresh. */
  #epoch = 0;

  constructor(limits: Partial<HubLimits> = {}, start = Date.now()) {
    this.#limits = { ...DEFAULT_HUB_LIMITS, ...limits };
    this.#head = start;
  }

  /** The number of the newest event. */
  get head(): number {
    return this.#head;
  }

  push(event: HubInput): void {
    this.#head += 1;
    const numbered: StreamEvent = { ...event, seq: this.#head };
    this.#buffer.push(numbered);
    this.#sizes.set(numbered.seq, Buffer.byteLength(JSON.stringify(numbered), 'utf8'));
    if (this.#buffer.length > this.#limits.capacity) {
      const dropped = this.#buffer.shift();
      if (dropped) this.#sizes.delete(dropped.seq);
    }
    for (const wake of [...this.#waiters]) wake();
  }

  subscribe(client: string, now = Date.now()): SubscribeResult {
    this.#sweep(now);
    let mine = 0;
    for (const s of this.#subscriptions.values()) if (s.client === client) mine++;
    if (mine >= this.#limits.perClient) {
      return {
        ok: false,
        reason: `at most ${this.#limits.perClient} open event streams per client`,
      };
    }
    if (this.#subscriptions.size >= this.#limits.total) {
      return { ok: false, reason: `at most ${this.#limits.total} open event streams in all` };
    }
    const id = randomBytes(24).toString('base64url');
    this.#subscriptions.set(id, { client, lastPoll: now });
    return { ok: true, subscription: id, cursor: this.#head };
  }

  /** Whether `id` is an open subscription of `client` (marks it as used). */
  owns(client: string, id: string, now = Date.now()): boolean {
    const s = this.#subscriptions.get(id);
    if (s?.client !== client) return false;
    s.lastPoll = now;
    return true;
  }

  unsubscribe(client: string, id: string): boolean {
    if (this.#subscriptions.get(id)?.client !== client) return false;
    this.#subscriptions.delete(id);
    // A poll still waiting for this subscription ends now instead of at its deadline.
    for (const wake of [...this.#waiters]) wake();
    return true;
  }

  isOpen(id: string): boolean {
    return this.#subscriptions.has(id);
  }

  /**
   * After a policy change: closes every subscription whose owner (streamOwner) is not in
   * `live` (revoked, new token, or no longer allowed events.stream), and ends every waiting
   * poll at once, closed or not. A poll checked its client's rooms and capabilities when it
   * began; the one that follows is checked against the new policy, so a revocation or a
   * narrowed room list takes effect within the policy watcher's interval, not a poll's wait.
   */
  dropClientsExcept(live: ReadonlySet<string>): void {
    for (const [id, s] of this.#subscriptions)
      if (!live.has(s.client)) this.#subscriptions.delete(id);
    this.#epoch++;
    for (const wake of [...this.#waiters]) wake();
  }

  /**
   * The events after `after` that `visible` lets through, at most `max`, waiting up to `waitMs`
   * for the first one.
   */
  async poll(
    after: number,
    visible: (event: StreamEvent) => boolean,
    options: {
      waitMs: number;
      max: number;
      maxBytes?: number;
      signal?: AbortSignal;
      /** Polling stops (empty) once this turns false: the subscription was closed. */
      isOpen?: () => boolean;
    },
  ): Promise<PollResult> {
    const deadline = Date.now() + options.waitMs;
    const epoch = this.#epoch;
    let cursor = after;
    let gap = false;
    for (;;) {
      // `visible` was made under the old policy: pass nothing more through it.
      if (this.#epoch !== epoch) return { events: [], cursor, gap };
      const page = this.#since(cursor, visible, options.max, options.maxBytes ?? Infinity);
      gap ||= page.gap;
      cursor = page.cursor;
      if (page.events.length > 0 || gap) return { events: page.events, cursor, gap };
      const remaining = deadline - Date.now();
      if (remaining <= 0 || options.signal?.aborted || options.isOpen?.() === false) {
        return { events: [], cursor, gap };
      }
      await this.#next(remaining, options.signal);
    }
  }

  #since(
    after: number,
    visible: (event: StreamEvent) => boolean,
    max: number,
    maxBytes: number,
  ): PollResult {
    const oldest = this.#buffer[0]?.seq ?? this.#head + 1;
    // A cursor from the future (another run) or from before what we still hold: say so.
    const gap = after > this.#head || after < oldest - 1;
    const from = gap ? oldest - 1 : after;
    const events: StreamEvent[] = [];
    let cursor = from;
    let bytes = 0;
    let full = false;
    for (const event of this.#buffer) {
      if (event.seq <= from) continue;
      if (!visible(event)) {
        cursor = event.seq;
        continue;
      }
      const size = this.#sizes.get(event.seq) ?? 0;
      // Always at least one event, so a single large one still goes out.
      if (events.length >= max || (events.length > 0 && bytes + size > maxBytes)) {
        full = true;
        break;
      }
      bytes += size;
      cursor = event.seq;
      events.push(event);
    }
    if (!full) cursor = Math.max(cursor, this.#head);
    return { events, cursor, gap };
  }

  #next(timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.#waiters.add(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  #sweep(now: number): void {
    for (const [id, s] of this.#subscriptions) {
      if (now - s.lastPoll > this.#limits.idleMs) this.#subscriptions.delete(id);
    }
  }
}
