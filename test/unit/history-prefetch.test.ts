import { describe, expect, it } from 'vitest';
import type { MessagesPage } from '../../endpoint/matrix/api.ts';
import { MAX_PREFETCHED, PREFETCH_TTL_MS, PagePrefetch } from '../../endpoint/messages/index.ts';

const ROOM = '!r:example.org';

/** A homeserver whose history pages are t0 -> t1 -> t2 ... (the token names the page). */
function homeserver(options: { failing?: Set<string> } = {}) {
  const calls: string[] = [];
  const fetch = (roomId: string, o: { from?: string; limit: number }): Promise<MessagesPage> => {
    const from = o.from ?? 't0';
    calls.push(`${roomId} ${from} ${o.limit}`);
    if (options.failing?.delete(from)) return Promise.reject(new Error('homeserver down'));
    const n = Number(from.slice(1));
    const chunk = Array.from({ length: Math.min(o.limit, 3) }, (_, i) => ({
      event_id: `$${n}-${i}`,
      type: 'm.room.encrypted',
      sender: '@bob:example.org',
      origin_server_ts: 0,
      content: {},
    }));
    return Promise.resolve({ chunk, start: from, end: `t${n + 1}` });
  };
  return { calls, fetch };
}

describe('history pages are fetched ahead while a reader pages back', () => {
  it('the first page fetches only itself; paging on, each next page is already on its way', async () => {
    const hs = homeserver();
    const prefetch = new PagePrefetch(hs.fetch);
    const first = await prefetch.page(ROOM, 3);
    expect(hs.calls).toEqual([`${ROOM} t0 3`]);
    expect(prefetch.held).toBe(0); // a UI opening a room reads one page: nothing wasted
    const second = await prefetch.page(ROOM, 3, first.end);
    expect(second.start).toBe('t1');
    expect(hs.calls).toEqual([`${ROOM} t0 3`, `${ROOM} t1 3`, `${ROOM} t2 3`]);
    const third = await prefetch.page(ROOM, 3, second.end);
    // t2 came from the prefetch (asked once); t3 is now on its way.
    expect(third.start).toBe('t2');
    expect(hs.calls.filter((c) => c.includes(' t2 '))).toHaveLength(1);
    expect(hs.calls.at(-1)).toBe(`${ROOM} t3 3`);
  });

  it('a prefetched page is used once, and only for the same room, token and size', async () => {
    const hs = homeserver();
    const prefetch = new PagePrefetch(hs.fetch);
    await prefetch.page(ROOM, 3, 't1'); // prefetches t2 for size 3
    await prefetch.page('!other:example.org', 3, 't2');
    await prefetch.page(ROOM, 2, 't2');
    expect(hs.calls.filter((c) => c === `${ROOM} t2 3`)).toHaveLength(1);
    await prefetch.page(ROOM, 3, 't2'); // taken
    await prefetch.page(ROOM, 3, 't2'); // gone: fetched again
    expect(hs.calls.filter((c) => c === `${ROOM} t2 3`)).toHaveLength(2);
  });

  it('an old prefetch is not served: after the TTL the page is fetched fresh', async () => {
    const hs = homeserver();
    let now = 1_000_000;
    const prefetch = new PagePrefetch(hs.fetch, () => now);
    await prefetch.page(ROOM, 3, 't1');
    now += PREFETCH_TTL_MS + 1;
    await prefetch.page(ROOM, 3, 't2');
    expect(hs.calls.filter((c) => c === `${ROOM} t2 3`)).toHaveLength(2);
  });

  it('a failed prefetch is fetched again for the reader, who sees no error', async () => {
    const hs = homeserver({ failing: new Set(['t2']) });
    const prefetch = new PagePrefetch(hs.fetch);
    await prefetch.page(ROOM, 3, 't1');
    const page = await prefetch.page(ROOM, 3, 't2');
    expect(page.start).toBe('t2');
    expect(hs.calls.filter((c) => c === `${ROOM} t2 3`)).toHaveLength(2);
  });

  it('holds at most a few pages, however many readers page at once', async () => {
    const hs = homeserver();
    const prefetch = new PagePrefetch(hs.fetch);
    for (let i = 0; i < 50; i++) await prefetch.page(`!r${i}:example.org`, 3, 't1');
    expect(prefetch.held).toBe(MAX_PREFETCHED);
  });

  it('stops at the start of the room (no end token, or an empty page)', async () => {
    const prefetch = new PagePrefetch((_roomId, o) =>
      Promise.resolve({ chunk: [], start: o.from ?? 't0' }),
    );
    await prefetch.page(ROOM, 3, 't9');
    expect(prefetch.held).toBe(0);
  });
});
