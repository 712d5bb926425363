import { describe, expect, it } from 'vitest';
import { EventHub } from '../../endpoint/api/index.ts';

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
});
