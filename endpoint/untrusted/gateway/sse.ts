import { createHash } from 'node:crypto';
import { GatewayError } from './errors.ts';
import type { Limits } from './limits.ts';

/**
 * Server-Sent Events framing. `type` is one of our fixed names and `data` is JSON (which never
 * contains a raw newline), so a frame cannot be split or forged by what it carries.
 */
export function sseFrame(type: string, data: unknown, id?: number): string {
  const idLine = id === undefined ? '' : `id: ${id}\n`;
  return `${idLine}event: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
}

export const SSE_HEARTBEAT = ': heartbeat\n\n';

/**
 * A reader that takes none of what we queued for this many heartbeat intervals is cut off as
 * too slow (with a last frame saying so): two missed heartbeats is how long a proxy or an idle
 * timer would wait too, and a UI that is merely busy drains its socket far sooner.
 */
export const SLOW_READER_HEARTBEATS = 2;

/**
 * How long a stream's writes may make no progress before it is cut off. Below half the idle
 * timeout: a socket that moves no bytes is destroyed by the server at idleTimeoutMs, and the
 * closing frame must be queued well before, for a reader that wakes up to find it. Defaults:
 * min(2 x 15 s, 60 s / 2) = 30 s. Tests shorten it through heartbeatMs.
 */
export function slowReaderMs(limits: Pick<Limits, 'heartbeatMs' | 'idleTimeoutMs'>): number {
  return Math.max(
    1,
    Math.min(SLOW_READER_HEARTBEATS * limits.heartbeatMs, Math.floor(limits.idleTimeoutMs / 2)),
  );
}

/**
 * Counts open event streams, overall and per token, so no client (and not all of them
 * together) can hold more long polls at the endpoint than the limits allow. Tokens are kept
 * only as their SHA-256.
 */
export class Subscribers {
  readonly #limits: Limits;
  readonly #perToken = new Map<string, number>();
  #total = 0;

  constructor(limits: Limits) {
    this.#limits = limits;
  }

  get total(): number {
    return this.#total;
  }

  /** Takes a slot for `token`, or throws the 429/503 to send; the returned function frees it. */
  acquire(token: string): () => void {
    const key = createHash('sha256').update(token, 'utf8').digest('hex');
    const mine = this.#perToken.get(key) ?? 0;
    if (mine >= this.#limits.maxSubscribersPerToken) {
      throw new GatewayError(
        429,
        'TOO_MANY_STREAMS',
        `This token already has ${mine} event streams open; close one first.`,
        { 'retry-after': '5' },
      );
    }
    if (this.#total >= this.#limits.maxSubscribers) {
      throw new GatewayError(
        503,
        'STREAMS_EXHAUSTED',
        'The gateway has no event stream slots left; try again later.',
        { 'retry-after': '5' },
      );
    }
    this.#perToken.set(key, mine + 1);
    this.#total++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#total--;
      const left = (this.#perToken.get(key) ?? 1) - 1;
      if (left <= 0) this.#perToken.delete(key);
      else this.#perToken.set(key, left);
    };
  }
}
