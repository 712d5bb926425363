import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { outgoingOfEntry } from '../../endpoint/messages/index.ts';
import { type FailedSend, Outbox, type OutboxEntry } from '../../endpoint/outbox.ts';
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

/** What the homeserver answers when it refuses for good (MatrixApiError's shape). */
function refusal(errcode: string, status = 403): Error {
  return Object.assign(new Error(`${errcode}: refused`), { status, retryable: false, errcode });
}

/** An outbox over a memory store whose send the test decides; every call is recorded. */
function harness(answer: (entry: OutboxEntry, call: number) => Promise<string>) {
  const state = memoryState();
  const calls: OutboxEntry[] = [];
  const outbox = new Outbox(state, (entry) => {
    calls.push(entry);
    return answer(entry, calls.length);
  });
  const failures: FailedSend[] = [];
  outbox.onFailed((f) => failures.push(f));
  return { state, calls, outbox, failures };
}

describe('the outbox: sends refused for good', () => {
  it('reports a permanent refusal once, with its errcode, and lists it apart from pending', async () => {
    const { calls, outbox, failures } = harness(() => Promise.reject(refusal('M_FORBIDDEN')));
    const before = Date.now();
    const entry = await outbox.enqueue('!r:example', '👍', { kind: 'reaction', target: '$m' });
    await outbox.pump();
    expect(calls).toHaveLength(1); // not retried: retrying cannot fix it
    expect(calls[0]).toMatchObject({ kind: 'reaction', target: '$m', body: '👍' });
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatchObject({ code: 'M_FORBIDDEN', entry: { txnId: entry.txnId } });
    const failed = await outbox.failed();
    expect(failed).toHaveLength(1);
    expect(failed[0]?.code).toBe('M_FORBIDDEN');
    expect(failed[0]?.failedAt).toBeGreaterThanOrEqual(before);
    expect(failed[0]?.entry).toEqual(entry);
    expect(await outbox.pending()).toEqual([]);
    await outbox.stop();
  });

  it('retry re-queues it with the same transaction id and sends it again; it leaves failed()', async () => {
    const { calls, outbox, failures } = harness((_, call) =>
      call === 1 ? Promise.reject(refusal('M_FORBIDDEN')) : Promise.resolve('$sent'),
    );
    const sent: string[] = [];
    outbox.onSent((e, eventId) => sent.push(`${e.txnId} ${eventId}`));
    const thread = { kind: 'text' as const, thread: '$root', replyTo: '$q' };
    const entry = await outbox.enqueue('!r:example', 'in a thread', thread);
    await outbox.pump();
    expect(await outbox.retry(entry.txnId)).toBe(true);
    await outbox.pump();
    expect(calls.map((c) => c.txnId)).toEqual([entry.txnId, entry.txnId]);
    expect(calls[1]).toMatchObject({ thread: '$root', replyTo: '$q', body: 'in a thread' });
    expect(sent).toEqual([`${entry.txnId} $sent`]);
    expect(await outbox.failed()).toEqual([]);
    expect(await outbox.pending()).toEqual([]);
    expect(failures).toHaveLength(1);
    expect(await outbox.retry(entry.txnId)).toBe(false); // gone: nothing to retry twice
    await outbox.stop();
  });

  it('discard drops it for good; retry and discard of an unknown id return false', async () => {
    const { state, calls, outbox } = harness(() => Promise.reject(refusal('M_TOO_LARGE', 413)));
    const entry = await outbox.enqueue('!r:example', 'big');
    await outbox.pump();
    expect((await outbox.failed()).map((f) => f.code)).toEqual(['M_TOO_LARGE']);
    expect(await outbox.retry('mte.unknown')).toBe(false);
    expect(await outbox.discard('mte.unknown')).toBe(false);
    expect(await outbox.discard(entry.txnId)).toBe(true);
    expect(await outbox.failed()).toEqual([]);
    expect(await outbox.discard(entry.txnId)).toBe(false);
    expect(await outbox.retry(entry.txnId)).toBe(false);
    await outbox.pump();
    expect(calls).toHaveLength(1);
    expect([...state.map.keys()]).toEqual([]);
    await outbox.stop();
  });

  it('an entry missing what its kind needs is set aside as MALFORMED_ENTRY, not sent', async () => {
    const { calls, outbox, failures } = harness((entry) => {
      outgoingOfEntry(entry);
      return Promise.resolve('$sent');
    });
    await outbox.enqueue('!r:example', 'an edit of nothing', { kind: 'edit' });
    await outbox.pump();
    expect(calls).toHaveLength(1);
    expect(failures.map((f) => f.code)).toEqual(['MALFORMED_ENTRY']);
    await outbox.stop();
  });

  it('a 401 (an expired session) is not a refusal for good, and an odd errcode is not echoed', async () => {
    const { calls, outbox, failures } = harness((_, call) => {
      if (call === 1) return Promise.reject(refusal('M_UNKNOWN_TOKEN', 401));
      return Promise.reject(refusal('M_FORBIDDEN <script>'));
    });
    await outbox.enqueue('!r:example', 'later');
    await expect.poll(() => failures.length, { timeout: 5000 }).toBe(1);
    expect(calls).toHaveLength(2);
    expect(failures[0]?.code).toBe('ERROR');
    await outbox.stop();
  });

  it('entries written by an older version (no kind, code or failedAt) still load', async () => {
    const { state, calls, outbox } = harness((_, call) =>
      call === 1 ? Promise.resolve('$old') : Promise.resolve('$retried'),
    );
    const old = { txnId: 'mte.old', roomId: '!r:example', body: 'from v1', acceptedAt: 5, seq: 0 };
    state.map.set('outbox/000000000000-mte.old', old);
    const oldFailed = { ...old, txnId: 'mte.oldfail', body: 'refused in v1', seq: 1 };
    state.map.set('outbox-failed/000000000001-mte.oldfail', { entry: oldFailed, reason: 'gone' });
    expect(await outbox.pending()).toEqual([{ ...old, kind: 'text' }]);
    expect(await outbox.failed()).toEqual([
      { entry: { ...oldFailed, kind: 'text' }, reason: 'gone', code: 'ERROR', failedAt: 5 },
    ]);
    await outbox.pump();
    expect(calls.map((c) => [c.txnId, c.kind])).toEqual([['mte.old', 'text']]);
    expect(await outbox.retry('mte.oldfail')).toBe(true);
    await outbox.pump();
    expect(calls.map((c) => c.txnId)).toEqual(['mte.old', 'mte.oldfail']);
    expect([...state.map.keys()]).toEqual([]);
    await outbox.stop();
  });
});
