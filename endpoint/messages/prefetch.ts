/**
 * Reading back through history, the next page is fetched while this one is decrypted and
 * answered: the homeserver's time (about a third of a page's, measured against Synapse)
 * overlaps ours instead of adding to it. Only once a reader is already paging (it asked with
 * a `from` token): a UI opening a room reads one page, and would leave every prefetch unused.
 *
 * What is kept is the homeserver's own answer (still encrypted), one use each, for
 * PREFETCH_TTL_MS, at most MAX_PREFETCHED pages, dropped when the room gets a redaction or an
 * edit (forget): nothing a fresh fetch would not have given, and a reader asking for it is
 * authorised for the room before the page is used.
 */
import type { MessagesPage } from '../matrix/api.ts';

export const PREFETCH_TTL_MS = 10_000;
export const MAX_PREFETCHED = 8;

export type FetchPage = (
  roomId: string,
  options: { from?: string; dir: 'b'; limit: number },
) => Promise<MessagesPage>;

interface Prefetched {
  roomId: string;
  page: Promise<MessagesPage>;
  at: number;
}

export class PagePrefetch {
  readonly #fetch: FetchPage;
  readonly #now: () => number;
  readonly #pages = new Map<string, Prefetched>();

  constructor(fetch: FetchPage, now: () => number = Date.now) {
    this.#fetch = fetch;
    this.#now = now;
  }

  /** A page going back from `from` (the newest when absent): prefetched if it was, else fetched. */
  async page(roomId: string, limit: number, from?: string): Promise<MessagesPage> {
    const page = await this.#take(roomId, limit, from);
    if (
      from !== undefined &&
      page.end !== undefined &&
      page.end !== from &&
      page.chunk.length > 0
    ) {
      this.#start(roomId, limit, page.end);
    }
    return page;
  }

  /**
   * Drops what is held for a room: a redaction or an edit changes the homeserver's answer for
   * older pages, and a held one would show what a fresh fetch no longer gives.
   */
  forget(roomId: string): void {
    for (const [key, held] of this.#pages) {
      if (held.roomId === roomId) this.#pages.delete(key);
    }
  }

  /** How many pages are held (for tests). */
  get held(): number {
    return this.#pages.size;
  }

  async #take(roomId: string, limit: number, from?: string): Promise<MessagesPage> {
    const fresh = () => this.#fetch(roomId, { dir: 'b', limit, ...(from ? { from } : {}) });
    if (from === undefined) return fresh();
    const key = keyOf(roomId, limit, from);
    const held = this.#pages.get(key);
    this.#pages.delete(key);
    if (held === undefined || this.#now() - held.at > PREFETCH_TTL_MS) return fresh();
    // A prefetch that failed (the homeserver was down a moment) is not the reader's error.
    return held.page.catch(fresh);
  }

  #start(roomId: string, limit: number, from: string): void {
    const now = this.#now();
    for (const [key, held] of this.#pages) {
      if (now - held.at > PREFETCH_TTL_MS) this.#pages.delete(key);
    }
    while (this.#pages.size >= MAX_PREFETCHED) {
      const oldest = this.#pages.keys().next().value;
      if (oldest === undefined) break;
      this.#pages.delete(oldest);
    }
    const page = this.#fetch(roomId, { dir: 'b', limit, from });
    page.catch(() => undefined); // unhandled until taken, and maybe never taken
    this.#pages.set(keyOf(roomId, limit, from), { roomId, page, at: now });
  }
}

function keyOf(roomId: string, limit: number, from: string): string {
  return JSON.stringify([roomId, limit, from]);
}
