import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { Outbox } from '../../endpoint/outbox.ts';
import type { AppState, AppStateChanges } from '../../endpoint/store/index.ts';

/** The app-state interface over a Map: enough to exercise the outbox's ordering and removal. */
function memoryState(): AppState & { map: Map<string, unknown> } {
  const map = new Map<string, unknown>();
  const update = (c: AppStateChanges): Promise<void> => {
    for (const k of c.delete ?? []) map.delete(k);
    for (const [k, v] of c.put ?? []) map.set(k, structuredClone(v));
    return Promise.resolve();
  };
  return {
    map,
    get: <T>(key: string, schema: z.ZodType<T>) =>
      Promise.resolve(map.has(key) ? schema.parse(map.get(key)) : undefined),
    put: (key, value) => update({ put: [[key, value]] }),
    delete: (key) => update({ delete: [key] }),
    keys: () => Promise.resolve([...map.keys()]),
    update,
    close: () => undefined,
  };
}

class HomeserverRefusal extends Error {
  readonly status = 403;
  readonly retryable = false;
}

describe('the outbox', () => {
  it('a send whose write failed (a full disk) is neither counted as pending nor sent later', async () => {
    const state = memoryState();
    const sent: string[] = [];
    const outbox = new Outbox(state, (entry) => {
      sent.push(entry.body);
      return Promise.resolve(`$${entry.txnId}`);
    });
    // The durable store fails the commit after its in-memory database took it, as it does when
    // the journal write hits ENOSPC: the value is readable, the caller gets the error.
    const realPut = (k: string, v: unknown) => state.update({ put: [[k, v]] });
    state.put = async (k, v) => {
      await realPut(k, v);
      throw Object.assign(new Error('the disk is full'), { code: 'STORAGE_FULL' });
    };
    await expect(outbox.enqueue('!r:example', 'refused')).rejects.toThrow('the disk is full');
    state.put = (k, v) => realPut(k, v);
    expect(await outbox.pending()).toEqual([]);
    await outbox.enqueue('!r:example', 'accepted');
    await outbox.pump();
    expect(sent).toEqual(['accepted']);
    expect([...state.map.keys()].filter((k) => k.startsWith('outbox/'))).toEqual([]);
  });

  it('sets aside a message the homeserver refuses for good, and the ones after it still go out', async () => {
    const state = memoryState();
    const sent: string[] = [];
    const warnings: string[] = [];
    const outbox = new Outbox(
      state,
      (entry) => {
        if (entry.roomId === '!left:example')
          return Promise.reject(new HomeserverRefusal('M_FORBIDDEN: not in room'));
        sent.push(entry.body);
        return Promise.resolve(`$${entry.txnId}`);
      },
      { warn: (m) => warnings.push(m) },
    );
    await outbox.enqueue('!left:example', 'to a room we left');
    await outbox.enqueue('!ok:example', 'after it');
    await outbox.pump();
    await expect.poll(() => sent).toEqual(['after it']);
    expect(await outbox.pending()).toEqual([]);
    const failed = await outbox.failed();
    expect(failed.map((f) => f.entry.body)).toEqual(['to a room we left']);
    expect(failed[0]?.reason).toMatch(/not in room/);
    await outbox.stop();
  });

  it('keeps retrying a transient failure with the same transaction id, and stops promptly', async () => {
    const state = memoryState();
    const txnIds: string[] = [];
    let fail = 2;
    const outbox = new Outbox(state, (entry) => {
      txnIds.push(entry.txnId);
      if (fail-- > 0) return Promise.reject(new Error('ECONNREFUSED'));
      return Promise.resolve('$event');
    });
    await outbox.enqueue('!r:example', 'hello');
    await expect.poll(() => txnIds.length, { timeout: 5000 }).toBe(3);
    expect(new Set(txnIds).size).toBe(1);
    expect(await outbox.pending()).toEqual([]);

    const stuck = new Outbox(memoryState(), () => Promise.reject(new Error('down')));
    await stuck.enqueue('!r:example', 'never');
    const started = Date.now();
    await stuck.stop();
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('skips an unreadable entry with a warning instead of blocking or crashing', async () => {
    const state = memoryState();
    const warnings: string[] = [];
    const sent: string[] = [];
    const outbox = new Outbox(
      state,
      (e) => {
        sent.push(e.body);
        return Promise.resolve('$e');
      },
      { warn: (m) => warnings.push(m) },
    );
    state.map.set('outbox/000000000000-bad', { not: 'an entry' });
    await outbox.enqueue('!r:example', 'fine');
    await expect(outbox.pump()).resolves.toBeUndefined();
    await expect.poll(() => sent).toEqual(['fine']);
    expect(warnings.some((w) => w.includes('skipping unreadable entry'))).toBe(true);
    await outbox.stop();
  });
});
