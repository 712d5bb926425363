import { describe, expect, it } from 'vitest';
import { EventHub, apiHandlers } from '../../endpoint/api/index.ts';
import { liveStreamOwners, streamOwner } from '../../endpoint/api/events.ts';
import type { Endpoint } from '../../endpoint/device.ts';
import type { Outbox } from '../../endpoint/outbox.ts';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import {
  Authorizer,
  type Capability,
  type Policy,
  generateToken,
  tokenSha256,
  validatePolicy,
} from '../../policy/index.ts';

const message = (roomId: string, body: string) =>
  ({
    type: 'message',
    roomId,
    item: {
      eventId: `$${body.slice(0, 8)}`,
      sender: '@b:x',
      ts: 1,
      kind: 'message',
      decrypted: true,
      body,
    },
  }) as const;
const all = () => true;

describe('EventHub', () => {
  it('numbers events, and a poll from a cursor returns each once, in order', async () => {
    const hub = new EventHub({}, 1000);
    const sub = hub.subscribe('ui');
    if (!sub.ok) throw new Error('subscribe failed');
    expect(sub.cursor).toBe(1000);
    hub.push(message('!a:x', 'one'));
    hub.push(message('!a:x', 'two'));
    const first = await hub.poll(sub.cursor, all, { waitMs: 0, max: 100 });
    expect(first.events.map((e) => e.seq)).toEqual([1001, 1002]);
    expect(first.cursor).toBe(1002);
    hub.push(message('!a:x', 'three'));
    const second = await hub.poll(first.cursor, all, { waitMs: 0, max: 100 });
    expect(second.events.map((e) => e.seq)).toEqual([1003]);
    expect(second.gap).toBe(false);
  });

  it('cuts a page by size but always returns at least one event, without skipping any', async () => {
    const hub = new EventHub({}, 0);
    for (let i = 0; i < 5; i++) hub.push(message('!a:x', `${i}`.repeat(40_000)));
    const seen: number[] = [];
    let cursor = 0;
    for (let round = 0; round < 10 && seen.length < 5; round++) {
      const page = await hub.poll(cursor, all, { waitMs: 0, max: 100, maxBytes: 100_000 });
      expect(page.events.length).toBeGreaterThanOrEqual(1);
      expect(page.events.length).toBeLessThanOrEqual(2);
      seen.push(...page.events.map((e) => e.seq));
      cursor = page.cursor;
    }
    expect(seen).toEqual([1, 2, 3, 4, 5]);
  });

  it('skips what the caller may not see, and reports a gap when the buffer moved on', async () => {
    const hub = new EventHub({ capacity: 3 }, 0);
    for (let i = 0; i < 6; i++) hub.push(message(i % 2 ? '!b:x' : '!a:x', `m${i}`));
    const page = await hub.poll(0, (e) => e.type === 'message' && e.roomId === '!a:x', {
      waitMs: 0,
      max: 100,
    });
    expect(page.gap).toBe(true);
    expect(page.events.map((e) => e.seq)).toEqual([5]);
    expect(page.cursor).toBe(6);
    // A cursor from another run (ahead of this one) is a gap too.
    expect((await hub.poll(10_000, all, { waitMs: 0, max: 100 })).gap).toBe(true);
  });

  it('bounds streams per client and in all; closing one ends its waiting poll at once', async () => {
    const hub = new EventHub({ perClient: 2, total: 3 });
    const a = hub.subscribe('a');
    hub.subscribe('a');
    expect(hub.subscribe('a').ok).toBe(false);
    hub.subscribe('b');
    expect(hub.subscribe('c').ok).toBe(false);
    if (!a.ok) throw new Error('subscribe failed');
    expect(hub.owns('b', a.subscription)).toBe(false);
    const started = Date.now();
    const waiting = hub.poll(a.cursor, all, {
      waitMs: 10_000,
      max: 100,
      isOpen: () => hub.isOpen(a.subscription),
    });
    expect(hub.unsubscribe('a', a.subscription)).toBe(true);
    expect((await waiting).events).toEqual([]);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('a policy change ends the waiting polls: those of dropped owners close, the rest re-poll', async () => {
    const hub = new EventHub({}, 0);
    const gone = hub.subscribe(streamOwner('gone', 'a'.repeat(64)));
    const kept = hub.subscribe(streamOwner('kept', 'b'.repeat(64)));
    if (!gone.ok || !kept.ok) throw new Error('subscribe failed');
    const wait = (id: string) =>
      hub.poll(0, all, { waitMs: 10_000, max: 100, isOpen: () => hub.isOpen(id) });
    const started = Date.now();
    const polls = [wait(gone.subscription), wait(kept.subscription)];
    hub.dropClientsExcept(new Set([streamOwner('kept', 'b'.repeat(64))]));
    const [a, b] = await Promise.all(polls);
    expect(Date.now() - started).toBeLessThan(500);
    expect(a?.events).toEqual([]);
    expect(b?.events).toEqual([]);
    expect(hub.isOpen(gone.subscription)).toBe(false);
    expect(hub.isOpen(kept.subscription)).toBe(true);
    // A poll begun after the change waits as usual and gets what comes.
    const next = wait(kept.subscription);
    hub.push(message('!a:x', 'after'));
    expect((await next).events.map((e) => e.seq)).toEqual([1]);
  });

  it('the owners a policy keeps: clients with events.stream, by name and token hash', () => {
    const live = liveStreamOwners([
      { name: 'ui', tokenSha256: 'a'.repeat(64), capabilities: ['events.stream'] },
      { name: 'cli', tokenSha256: 'b'.repeat(64), capabilities: ['rooms.read'] },
    ]);
    expect([...live]).toEqual([streamOwner('ui', 'a'.repeat(64))]);
    // The same name with another token is another owner.
    expect(live.has(streamOwner('ui', 'c'.repeat(64)))).toBe(false);
  });
});

describe('events handler: a policy reload ends the streams it revokes at once', () => {
  const ROOM_A = '!a:example.org';
  const ROOM_B = '!b:example.org';
  const entry = (name: string, token: string, capabilities: Capability[], extra = {}) => ({
    name,
    tokenSha256: tokenSha256(token),
    created: '2025-01-15T09:30:00.000Z',
    capabilities,
    rateLimit: { requestsPerMinute: 60_000 },
    ...extra,
  });
  const policyOf = (clients: Record<string, unknown>[]): Policy => {
    const result = validatePolicy({ version: 1, clients });
    if (!result.ok) throw new Error(JSON.stringify(result.problems));
    return result.policy;
  };
  const STREAM: Capability[] = ['events.stream', 'messages.read'];

  function setup(initial: Policy) {
    let current = initial;
    const hub = new EventHub({}, 0);
    const audited: unknown[] = [];
    const handlers = apiHandlers({
      // The events handlers touch neither: only the hub, the policy and the audit log.
      endpoint: { userId: '@me:example.org' } as unknown as Endpoint,
      outbox: {} as unknown as Outbox,
      authorizer: new Authorizer(() => current),
      audit: {
        append: (r: unknown) => {
          audited.push(r);
          return Promise.resolve();
        },
      },
      policy: () => current,
      hub,
    });
    const ctx = { method: 'events', signal: new AbortController().signal };
    /** As endpoint/main.ts does on a valid reload. */
    const reload = (next: Policy): void => {
      current = next;
      hub.dropClientsExcept(liveStreamOwners(next.clients));
    };
    const open = async (token: string) => {
      const { subscription, cursor } = await handlers.subscribe({ auth: { token } }, ctx);
      const poll = (after = cursor) =>
        handlers.events({ auth: { token }, subscription, after, waitMs: 20_000 }, ctx);
      return { subscription, cursor, poll };
    };
    return { hub, handlers, reload, open, audited };
  }

  /** Lets the polls begin waiting in the hub. */
  const settle = () => new Promise((r) => setTimeout(r, 20));

  const refusal = async (p: Promise<unknown>): Promise<{ code: string; ms: number }> => {
    const started = Date.now();
    try {
      await p;
    } catch (e) {
      if (e instanceof RpcError) return { code: e.code, ms: Date.now() - started };
      throw e;
    }
    throw new Error('the poll was not refused');
  };

  it('revoked: the waiting poll fails UNAUTHENTICATED at once (not after its 20 s wait)', async () => {
    const ui = generateToken();
    const other = generateToken();
    const { reload, open } = setup(
      policyOf([entry('ui', ui, STREAM), entry('other', other, STREAM)]),
    );
    const mine = await open(ui);
    const theirs = await open(other);
    const waiting = refusal(mine.poll());
    const untouched = theirs.poll();
    await settle();
    reload(policyOf([entry('other', other, STREAM)]));
    const result = await waiting;
    expect(result.code).toBe('UNAUTHENTICATED');
    expect(result.ms).toBeLessThan(200);
    // The other client's poll ends too (empty), to be authorised afresh; its stream lives on.
    expect((await untouched).events).toEqual([]);
  });

  it('revoked between authorising a poll and finding its stream: still UNAUTHENTICATED', async () => {
    const ui = generateToken();
    const { reload, open } = setup(policyOf([entry('ui', ui, STREAM)]));
    const stream = await open(ui);
    const racing = refusal(stream.poll());
    reload(policyOf([]));
    expect((await racing).code).toBe('UNAUTHENTICATED');
  });

  it("a new token for the same client: the old token's poll fails UNAUTHENTICATED", async () => {
    const old = generateToken();
    const { reload, open } = setup(policyOf([entry('ui', old, STREAM)]));
    const stream = await open(old);
    const waiting = refusal(stream.poll());
    await settle();
    reload(policyOf([entry('ui', generateToken(), STREAM)]));
    expect((await waiting).code).toBe('UNAUTHENTICATED');
  });

  it('events.stream taken away: FORBIDDEN_CAPABILITY at once', async () => {
    const ui = generateToken();
    const { reload, open } = setup(policyOf([entry('ui', ui, STREAM)]));
    const stream = await open(ui);
    const waiting = refusal(stream.poll());
    await settle();
    reload(policyOf([entry('ui', ui, ['messages.read'])]));
    const result = await waiting;
    expect(result.code).toBe('FORBIDDEN_CAPABILITY');
    expect(result.ms).toBeLessThan(200);
  });

  it('rooms narrowed: the next poll no longer passes the room it lost', async () => {
    const ui = generateToken();
    const { hub, reload, open } = setup(policyOf([entry('ui', ui, STREAM)]));
    const stream = await open(ui);
    const waiting = stream.poll();
    await settle();
    reload(policyOf([entry('ui', ui, STREAM, { rooms: [ROOM_A] })]));
    const first = await waiting;
    expect(first.events).toEqual([]);
    hub.push(message(ROOM_B, 'hidden'));
    hub.push(message(ROOM_A, 'shown'));
    const second = await stream.poll(first.cursor);
    expect(second.events.map((e) => (e.type === 'message' ? e.roomId : e.type))).toEqual([ROOM_A]);
  });
});
