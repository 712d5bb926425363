import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { Outbox } from '../../endpoint/outbox.ts';
import type { AppState, AppStateChanges } from '../../endpoint/store/index.ts';

// The outbox reads its sequence numbers from the store once per process and counts on from
// there. An entry's number is its place in its room's order and in the list of failed sends:
// no two may share one, and none may come before an entry accepted earlier.

/** The app-state interface over a Map, each call a turn of its own like a real store's. */
function memoryState(): AppState & { map: Map<string, unknown> } {
  const map = new Map<string, unknown>();
  const turn = () => new Promise((r) => setImmediate(r));
  const update = async (c: AppStateChanges): Promise<void> => {
    await turn();
    for (const k of c.delete ?? []) map.delete(k);
    for (const [k, v] of c.put ?? []) map.set(k, structuredClone(v));
  };
  return {
    map,
    get: async <T>(key: string, schema: z.ZodType<T>) => {
      await turn();
      return map.has(key) ? schema.parse(map.get(key)) : undefined;
    },
    put: (key, value) => update({ put: [[key, value]] }),
    delete: (key) => update({ delete: [key] }),
    keys: async () => {
      await turn();
      return [...map.keys()];
    },
    update,
    close: () => undefined,
  };
}

class Refusal extends Error {
  readonly status = 403;
  readonly retryable = false;
}

/** An outbox whose sends never leave (its pump is not run), for the numbers alone. */
const idle = (state: AppState) =>
  new Outbox(state, () => new Promise<string>(() => undefined), { warn: () => undefined });

const queued = (state: { map: Map<string, unknown> }, prefix = 'outbox/') =>
  [...state.map.keys()].filter((k) => k.startsWith(prefix)).sort();

describe('outbox sequence numbers', () => {
  it('concurrent first sends of a process get distinct numbers, in the order they were accepted', async () => {
    const state = memoryState();
    const first = idle(state);
    await first.enqueue('!r:x', 'before the restart');
    const outbox = idle(state);
    const entries = await Promise.all(
      Array.from({ length: 20 }, (_, i) => outbox.enqueue('!r:x', `m${i}`)),
    );
    const seqs = entries.map((e) => e.seq);
    expect(new Set(seqs).size).toBe(20);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(Math.min(...seqs)).toBeGreaterThan(0);
    expect((await outbox.pending()).map((p) => p.body)).toEqual([
      'before the restart',
      ...entries.map((e) => e.body),
    ]);
  });

  it('a restart counts on after the last queued send, and a failed write never reuses its number', async () => {
    const state = memoryState();
    const before = idle(state);
    const a = await before.enqueue('!r:x', 'a');
    const realPut = (k: string, v: unknown) => state.update({ put: [[k, v]] });
    state.put = () => Promise.reject(new Error('the disk is full'));
    await expect(before.enqueue('!r:x', 'refused')).rejects.toThrow('the disk is full');
    state.put = realPut;
    const b = await before.enqueue('!r:x', 'b');
    expect(b.seq).toBe(a.seq + 2);
    const after = idle(state);
    const c = await after.enqueue('!r:x', 'c');
    expect(c.seq).toBeGreaterThan(b.seq);
    expect((await after.pending()).map((p) => p.body)).toEqual(['a', 'b', 'c']);
  });

  it('a retried send goes last, after everything queued since it failed', async () => {
    const state = memoryState();
    const outbox = new Outbox(
      state,
      (entry) =>
        entry.body === 'refused'
          ? Promise.reject(new Refusal('M_FORBIDDEN'))
          : Promise.resolve('$sent'),
      { warn: () => undefined },
    );
    const failing = await outbox.enqueue('!r:x', 'refused');
    await expect.poll(async () => (await outbox.failed()).length).toBe(1);
    const since = await outbox.enqueue('!r:x', 'queued since');
    expect(await outbox.retry(failing.txnId)).toBe(true);
    const key = queued(state).find((k) => k.endsWith(failing.txnId)) ?? '';
    expect(Number(key.slice('outbox/'.length, 'outbox/'.length + 12))).toBeGreaterThan(since.seq);
    await outbox.stop();
  });

  // Fixed, and kept so: the numbers start again from what is queued, not from what was set aside. After a
  // restart with nothing queued, new sends reuse the numbers of failed ones, so a send that
  // fails now is listed before one that failed yesterday, and failedSends (the newest 100
  // by that order) can leave it out.
  it('after a restart, a newly failed send is listed after the ones that failed before', async () => {
    const state = memoryState();
    const refusing = () =>
      new Outbox(state, () => Promise.reject(new Refusal('M_FORBIDDEN')), {
        warn: () => undefined,
      });
    const before = refusing();
    await before.enqueue('!r:x', 'yesterday 1');
    await before.enqueue('!r:x', 'yesterday 2');
    await expect.poll(async () => (await before.failed()).length).toBe(2);
    await before.stop();
    const after = refusing();
    await after.enqueue('!r:x', 'today');
    await expect.poll(async () => (await after.failed()).length).toBe(3);
    expect((await after.failed()).map((f) => f.entry.body)).toEqual([
      'yesterday 1',
      'yesterday 2',
      'today',
    ]);
    await after.stop();
  });

  // Fixed, and kept so: two retries of the same failed send at once (a double click, two UIs) both find it
  // set aside and both queue it: two entries with one transaction id, each encrypted and sent.
  it('two retries of one failed send at once queue it once', async () => {
    const state = memoryState();
    const outbox = new Outbox(
      state,
      (entry) =>
        entry.body === 'refused'
          ? Promise.reject(new Refusal('M_FORBIDDEN'))
          : new Promise<string>(() => undefined),
      { warn: () => undefined },
    );
    const entry = await outbox.enqueue('!r:x', 'refused');
    await expect.poll(async () => (await outbox.failed()).length).toBe(1);
    const results = await Promise.all([outbox.retry(entry.txnId), outbox.retry(entry.txnId)]);
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(queued(state).filter((k) => k.endsWith(entry.txnId))).toHaveLength(1);
    await outbox.stop();
  });

  // Fixed, and kept so: the first send of a process reads the queue's numbers with Math.max(...all): past
  // about 120,000 queued sends (an outage, a client allowed 60,000 a minute) that throws a
  // RangeError, and every send is refused until the queue drains.
  it('a long queue does not stop the outbox from taking sends', async () => {
    const state = memoryState();
    for (let seq = 0; seq < 150_000; seq++) {
      const txnId = `mte.${String(seq).padStart(24, '0')}`;
      state.map.set(`outbox/${String(seq).padStart(12, '0')}-${txnId}`, {
        txnId,
        roomId: '!r:x',
        body: '',
        kind: 'text',
        acceptedAt: 0,
        seq,
      });
    }
    const entry = await idle(state).enqueue('!r:x', 'after a long outage');
    expect(entry.seq).toBe(150_000);
  }, 60_000);
});
