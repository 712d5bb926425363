import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventHub, apiHandlers } from '../../endpoint/api/index.ts';
import type { Endpoint } from '../../endpoint/device.ts';
import type { MessagesPage, RoomEvent } from '../../endpoint/matrix/api.ts';
import { MAX_PREFETCHED, PagePrefetch } from '../../endpoint/messages/index.ts';
import type { Outbox } from '../../endpoint/outbox.ts';
import { isRpcError } from '../../keyvault/common/rpc/index.ts';
import { Authorizer, tokenSha256, validatePolicy } from '../../policy/index.ts';

// A prefetched page is the homeserver's answer for one room, kept a few seconds for whichever
// reader asks next. It must never reach a reader of another room or one refused the room,
// never show what a fresh fetch no longer would, and never fail where nobody is listening.

const ROOM = '!private:example.org';
const OTHER = '!other:example.org';

function event(roomId: string, id: string, content: Record<string, unknown>): RoomEvent {
  return {
    event_id: id,
    type: 'm.room.encrypted',
    sender: '@bob:example.org',
    origin_server_ts: 0,
    content: { room: roomId, ...content },
  };
}

/** A homeserver whose pages name their room; `content` is what an event holds right now. */
function homeserver() {
  const calls: string[] = [];
  const content = new Map<string, Record<string, unknown>>();
  const fetch = (roomId: string, o: { from?: string; limit: number }): Promise<MessagesPage> => {
    const from = o.from ?? 't0';
    calls.push(`${roomId} ${from}`);
    const n = Number(from.slice(1));
    const id = `$${roomId}-${n}`;
    return Promise.resolve({
      chunk: [event(roomId, id, content.get(id) ?? { body: 'secret' })],
      start: from,
      end: `t${n + 1}`,
    });
  };
  return { calls, content, fetch };
}

let unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
beforeEach(() => {
  unhandled = [];
  process.on('unhandledRejection', onUnhandled);
});
afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
});
/** Long enough for Node to report a rejection nobody handled. */
const settle = () => new Promise((r) => setTimeout(r, 20));

describe('a prefetched page reaches only a reader of its own room', () => {
  it('a page prefetched for one room is never served for another, whatever the token', async () => {
    const hs = homeserver();
    const prefetch = new PagePrefetch(hs.fetch);
    await prefetch.page(ROOM, 1, 't1'); // t2 of ROOM on its way
    const other = await prefetch.page(OTHER, 1, 't2');
    expect(other.chunk.map((e) => e.content.room)).toEqual([OTHER]);
    const own = await prefetch.page(ROOM, 1, 't2');
    expect(own.chunk.map((e) => e.content.room)).toEqual([ROOM]);
    expect(hs.calls.filter((c) => c === `${ROOM} t2`)).toHaveLength(1);
  });

  it('a client refused the room gets no page and leaves the prefetched one where it was', async () => {
    const hs = homeserver();
    const prefetch = new PagePrefetch(hs.fetch);
    const READER = 'reader-token-0123456789abcdefghijklmnop';
    const OUTSIDER = 'outsider-token-0123456789abcdefghijklm';
    const client = (name: string, token: string, rooms: string[]) => ({
      name,
      tokenSha256: tokenSha256(token),
      created: '2025-01-15T09:30:00.000Z',
      capabilities: ['messages.read'],
      rooms,
      rateLimit: { requestsPerMinute: 60_000 },
    });
    const result = validatePolicy({
      version: 1,
      clients: [client('reader', READER, [ROOM]), client('outsider', OUTSIDER, [OTHER])],
    });
    if (!result.ok) throw new Error(JSON.stringify(result.problems));
    const policy = result.policy;
    const endpoint = {
      userId: '@me:example.org',
      room: (roomId: string) => ({ roomId, membership: 'join', members: [], encrypted: true }),
      timeline: async (roomId: string, o: { limit: number; from?: string }) => {
        const page = await prefetch.page(roomId, o.limit, o.from);
        return { items: [], ...(page.end ? { next: page.end } : {}) };
      },
    } as unknown as Endpoint;
    const handlers = apiHandlers({
      endpoint,
      outbox: {} as unknown as Outbox,
      authorizer: new Authorizer(() => policy),
      audit: { append: () => Promise.resolve() },
      policy: () => policy,
      hub: new EventHub(),
    });
    const ctx = { method: 'timeline', signal: new AbortController().signal };
    await handlers.timeline({ auth: { token: READER }, roomId: ROOM, limit: 1, from: 't1' }, ctx);
    expect(prefetch.held).toBe(1);
    const refused = await handlers
      .timeline({ auth: { token: OUTSIDER }, roomId: ROOM, limit: 1, from: 't2' }, ctx)
      .then(
        () => 'OK',
        (e: unknown) => (isRpcError(e) ? e.code : String(e)),
      );
    expect(refused).toBe('FORBIDDEN_ROOM');
    expect(prefetch.held).toBe(1);
    expect(hs.calls.filter((c) => c.endsWith(' t2'))).toHaveLength(1);
  });
});

describe('a prefetched page shows nothing a fresh fetch would not', () => {
  // A page fetched ahead and read seconds later would show an event the room has since
  // redacted (or an edit's older text): the endpoint drops the room's pages when it sees one.
  it('a redaction seen in the room drops its held pages, and the reader gets the redacted event', async () => {
    const hs = homeserver();
    const prefetch = new PagePrefetch(hs.fetch);
    await prefetch.page(ROOM, 1, 't1');
    await prefetch.page(OTHER, 1, 't1');
    hs.content.set(`$${ROOM}-2`, {}); // redacted: the homeserver now serves it pruned
    prefetch.forget(ROOM);
    expect(prefetch.held).toBe(1); // the other room's page is not touched
    const page = await prefetch.page(ROOM, 1, 't2');
    expect(page.chunk[0]?.content).toEqual({ room: ROOM });
  });
});

describe('a prefetch fails quietly', () => {
  it('a failed prefetch that nobody takes (evicted, expired or forgotten) is no unhandled rejection', async () => {
    let fail = false;
    const hs = homeserver();
    const prefetch = new PagePrefetch((roomId, o) =>
      fail ? Promise.reject(new Error('homeserver down')) : hs.fetch(roomId, o),
    );
    const first = await prefetch.page(ROOM, 1, 't1');
    fail = true; // every prefetch from here on fails, asynchronously
    expect(first.end).toBe('t2');
    await prefetch.page(ROOM, 1, 'x1').catch(() => undefined);
    fail = false;
    for (let i = 0; i < MAX_PREFETCHED + 2; i++) await prefetch.page(`!r${i}:x`, 1, 't1');
    prefetch.forget(ROOM);
    await settle();
    expect(unhandled).toEqual([]);
  });

  it('a prefetch and its fresh retry both failing reach the reader as its own error only', async () => {
    let calls = 0;
    const prefetch = new PagePrefetch((_roomId, o) => {
      calls++;
      if (calls === 1)
        return Promise.resolve({
          chunk: [event(ROOM, '$a', {})],
          start: 't1',
          end: o.from === 't1' ? 't2' : 't9',
        });
      return Promise.reject(new Error(`down ${calls}`));
    });
    await prefetch.page(ROOM, 1, 't1');
    await expect(prefetch.page(ROOM, 1, 't2')).rejects.toThrow('down 3');
    await settle();
    expect(unhandled).toEqual([]);
  });

  it('a reader that takes a page still on its way waits for it instead of asking again', async () => {
    let release = (): void => undefined;
    const calls: string[] = [];
    const prefetch = new PagePrefetch((roomId, o) => {
      calls.push(o.from ?? '');
      const page = {
        chunk: [event(roomId, `$${o.from ?? ''}`, {})],
        start: o.from ?? '',
        end: `${o.from ?? ''}+`,
      };
      if (o.from === 't1') return Promise.resolve(page);
      return new Promise((r) => {
        release = () => {
          r(page);
        };
      });
    });
    await prefetch.page(ROOM, 1, 't1');
    const second = prefetch.page(ROOM, 1, 't1+');
    release();
    expect((await second).start).toBe('t1+');
    expect(calls.filter((c) => c === 't1+')).toHaveLength(1);
  });
});
