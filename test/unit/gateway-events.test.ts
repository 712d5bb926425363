import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { type StreamEvent } from '../../endpoint/contract.ts';
import {
  type Limits,
  buildGateway,
  listenGateway,
  resolveLimits,
} from '../../endpoint/untrusted/gateway/index.ts';
import { endpointCalls } from '../../endpoint/untrusted/gateway/forward.ts';
import { slowReaderMs } from '../../endpoint/untrusted/gateway/sse.ts';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import {
  type EventStream,
  type GatewayTarget,
  gatewayRequest,
  openEventStream,
} from '../fixtures/gateway-client.ts';
import { waitUntil } from '../fixtures/process.ts';
import { type FakeEndpoint, ROOM, TOKEN, bearer, fakeEndpoint } from './gateway-helpers.ts';

type Page = { events: StreamEvent[]; cursor: number; gap: boolean } | RpcError;

/** A fake endpoint whose event polls answer from a script, then hold like an idle long poll. */
function scripted(pages: Page[]) {
  const polls: { after: number; waitMs: number }[] = [];
  const fake = fakeEndpoint({
    events: async (p, ctx) => {
      polls.push({ after: p.after, waitMs: p.waitMs });
      const next = pages.shift();
      if (next instanceof RpcError) throw next;
      if (next) return next;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, p.waitMs);
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      return { events: [], cursor: p.after, gap: false };
    },
  });
  return { fake, polls };
}

const message = (seq: number, body: string): StreamEvent => ({
  seq,
  type: 'message',
  roomId: ROOM,
  item: {
    eventId: `$e${seq}`,
    sender: '@a:example.org',
    ts: seq,
    kind: 'message',
    decrypted: true,
    body,
  },
});

let app: FastifyInstance | undefined;
let fake: FakeEndpoint | undefined;
const streams: EventStream[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  await app?.close();
  fake?.close();
  app = undefined;
  fake = undefined;
});

async function start(f: FakeEndpoint, limits: Partial<Limits> = {}): Promise<GatewayTarget> {
  fake = f;
  app = buildGateway({ endpoint: f.client, limits: { eventWaitMs: 2_000, ...limits } });
  tracked.clear();
  app.server.on('connection', (socket: Socket) => {
    tracked.add(socket);
    socket.once('close', () => tracked.delete(socket));
  });
  const listening = await listenGateway(app, { tcp: { host: '127.0.0.1', port: 0 } });
  if (!listening.tcp) throw new Error('not on TCP');
  return { host: '127.0.0.1', port: listening.tcp.port };
}

async function open(target: GatewayTarget, options: { token?: string; lastEventId?: string } = {}) {
  const stream = await openEventStream(target, { token: TOKEN, ...options });
  streams.push(stream);
  return stream;
}

/** The server side of every open connection (to cut one off as a vanishing client would). */
async function connectionsOf(): Promise<Socket[]> {
  const sockets: Socket[] = [];
  await new Promise((r) => setTimeout(r, 20));
  for (const s of tracked) sockets.push(s);
  return sockets;
}
const tracked = new Set<Socket>();

const poll = { timeoutMs: 5_000, intervalMs: 10 };

describe('gateway: GET /v1/events (Server-Sent Events)', () => {
  it('frames each event as id/event/data, polling from the subscription cursor', async () => {
    const { fake: f, polls } = scripted([
      { events: [message(11, 'one'), message(12, 'two')], cursor: 12, gap: false },
      {
        events: [{ seq: 13, type: 'room', roomId: ROOM, membership: 'leave' }],
        cursor: 13,
        gap: false,
      },
    ]);
    const target = await start(f);
    const stream = await open(target);
    expect(stream.status).toBe(200);
    expect(stream.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(stream.headers['cache-control']).toBe('no-store');
    const first = await stream.next();
    expect(first).toEqual({ id: '11', event: 'message', data: JSON.stringify(message(11, 'one')) });
    expect((await stream.next())?.id).toBe('12');
    const third = await stream.next();
    expect(third?.event).toBe('room');
    expect(JSON.parse(third?.data ?? '')).toEqual({
      seq: 13,
      type: 'room',
      roomId: ROOM,
      membership: 'leave',
    });
    // subscribe answered cursor 10: the first poll is after 10, then after each page's cursor.
    await waitUntil('three polls', () => polls.length >= 3, poll);
    expect(polls.slice(0, 3).map((p) => p.after)).toEqual([10, 12, 13]);
    expect(polls[0]?.waitMs).toBe(2_000);
    expect(f.calls[0]).toEqual({ method: 'subscribe', params: { auth: { token: TOKEN } } });
  });

  it('edits, reactions, redactions, room gaps and send outcomes go out under their type', async () => {
    const events: StreamEvent[] = [
      {
        seq: 11,
        type: 'edit',
        roomId: ROOM,
        target: '$e1',
        eventId: '$e2',
        body: 'fixed',
        ts: 5,
      },
      {
        seq: 12,
        type: 'reaction',
        roomId: ROOM,
        target: '$e1',
        eventId: '$r1',
        key: '👍',
        sender: '@a:example.org',
      },
      { seq: 13, type: 'redaction', roomId: ROOM, target: '$r1', sender: '@a:example.org' },
      { seq: 14, type: 'gap', roomId: ROOM },
      {
        seq: 15,
        type: 'sent',
        roomId: ROOM,
        txnId: 'mte.0123456789abcdef01234567',
        eventId: '$mine',
        excluded: [{ userId: '@eve:example.org', reason: 'no-cross-signing' }],
      },
      {
        seq: 16,
        type: 'send-failed',
        failed: {
          txnId: 'mte.0123456789abcdef01234567',
          roomId: ROOM,
          kind: 'text',
          preview: 'hello',
          acceptedAt: 1,
          failedAt: 2,
          code: 'M_FORBIDDEN',
          reason: 'No.',
        },
      },
    ];
    const { fake: f } = scripted([{ events, cursor: 16, gap: false }]);
    const stream = await open(await start(f));
    for (const event of events) {
      expect(await stream.next()).toEqual({
        id: String(event.seq),
        event: event.type,
        data: JSON.stringify(event),
      });
    }
  });

  it('resumes after Last-Event-ID', async () => {
    const { fake: f, polls } = scripted([]);
    const target = await start(f);
    await open(target, { lastEventId: '7' });
    await waitUntil('a poll', () => polls.length > 0, poll);
    expect(polls[0]?.after).toBe(7);
  });

  it('a Last-Event-ID beyond the cursor: event gap, then from the cursor', async () => {
    const { fake: f, polls } = scripted([]);
    const target = await start(f);
    const stream = await open(target, { lastEventId: '99' });
    const gap = await stream.next();
    expect(gap).toEqual({
      id: '10',
      event: 'gap',
      data: JSON.stringify({ after: 99, cursor: 10 }),
    });
    await waitUntil('a poll', () => polls.length > 0, poll);
    expect(polls[0]?.after).toBe(10);
  });

  it('a malformed Last-Event-ID: 400 naming the header, before subscribing', async () => {
    const { fake: f } = scripted([]);
    const target = await start(f);
    for (const bad of ['abc', '-2', '1.5', '01', '9'.repeat(30)]) {
      const res = await gatewayRequest(target, '/v1/events', {
        token: TOKEN,
        headers: { 'last-event-id': bad },
      });
      expect(res.status).toBe(400);
      expect(res.text).toContain('header.Last-Event-ID');
      expect(res.text).not.toContain(bad);
    }
    expect(f.calls).toEqual([]);
  });

  it('passes on the endpoint gap as event: gap, then the events it still has', async () => {
    const { fake: f } = scripted([
      { events: [message(50, 'late')], cursor: 50, gap: true },
      { events: [], cursor: 60, gap: true },
    ]);
    const target = await start(f);
    const stream = await open(target, { lastEventId: '3' });
    expect(await stream.next()).toEqual({
      event: 'gap',
      data: JSON.stringify({ after: 3, cursor: 50 }),
    });
    expect((await stream.next())?.id).toBe('50');
    // A gap with no events carries the cursor as its id, so a reconnect does not repeat it.
    expect(await stream.next()).toEqual({
      id: '60',
      event: 'gap',
      data: JSON.stringify({ after: 50, cursor: 60 }),
    });
  });

  it('sends heartbeat comments', async () => {
    const { fake: f } = scripted([]);
    const target = await start(f, { heartbeatMs: 50 });
    const stream = await open(target);
    await waitUntil(
      'two heartbeats',
      () => stream.comments.filter((c) => c === 'heartbeat').length >= 2,
      poll,
    );
  });

  it('on client disconnect: stops polling and unsubscribes', async () => {
    const { fake: f, polls } = scripted([]);
    const target = await start(f);
    const stream = await open(target);
    await waitUntil('the first poll', () => polls.length === 1, poll);
    stream.close();
    await waitUntil('an unsubscribe', () => f.calls.some((c) => c.method === 'unsubscribe'), poll);
    expect(f.calls.find((c) => c.method === 'unsubscribe')?.params).toEqual({
      auth: { token: TOKEN },
      subscription: 'sub_0123456789abcdefghijkl',
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(polls).toHaveLength(1);
  });

  it('a client that leaves while subscribing: unsubscribed, never polled', async () => {
    let subscribed: () => void = () => undefined;
    const gate = new Promise<void>((r) => (subscribed = r));
    const polls: number[] = [];
    const f = fakeEndpoint({
      subscribe: async () => {
        await gate;
        return { subscription: 'sub_0123456789abcdefghijkl', cursor: 1 };
      },
      events: (p) => {
        polls.push(p.after);
        return Promise.resolve({ events: [], cursor: p.after, gap: false });
      },
    });
    const target = await start(f, { maxSubscribers: 1 });
    const request = openEventStream(target, { token: TOKEN });
    request.catch(() => undefined);
    await waitUntil('a subscribe', () => f.calls.some((c) => c.method === 'subscribe'), poll);
    // Leave: the gateway has not answered yet, so drop the connection under the request.
    for (const socket of await connectionsOf()) socket.destroy();
    subscribed();
    await waitUntil('an unsubscribe', () => f.calls.some((c) => c.method === 'unsubscribe'), poll);
    expect(polls).toEqual([]);
    // Its slot is free again.
    expect((await open(target)).status).toBe(200);
  });

  it('a stream outlives the request and header timeouts', async () => {
    const { fake: f } = scripted([]);
    const target = await start(f, {
      requestTimeoutMs: 300,
      headersTimeoutMs: 300,
      heartbeatMs: 100,
      idleTimeoutMs: 1_000,
    });
    const stream = await open(target);
    await new Promise((r) => setTimeout(r, 1_500));
    let ended = false;
    void stream.ended.then(() => (ended = true));
    await new Promise((r) => setTimeout(r, 10));
    expect(ended).toBe(false);
  });

  for (const code of ['UNAUTHENTICATED', 'FORBIDDEN_CAPABILITY']) {
    it(`a poll failing with ${code} (token revoked): event: error, then the stream ends`, async () => {
      const { fake: f } = scripted([
        { events: [message(11, 'one')], cursor: 11, gap: false },
        new RpcError(code, 'revoked'),
      ]);
      const target = await start(f);
      const stream = await open(target);
      expect((await stream.next())?.id).toBe('11');
      const error = await stream.next();
      expect(error?.event).toBe('error');
      // It carries the last event's id, so a reconnect would resume exactly after it.
      expect(error?.id).toBe('11');
      expect(JSON.parse(error?.data ?? '')).toMatchObject({ error: { code }, lastEventId: 11 });
      expect(await stream.next()).toBeUndefined();
      await stream.ended;
      await waitUntil(
        'an unsubscribe',
        () => f.calls.some((c) => c.method === 'unsubscribe'),
        poll,
      );
    });
  }

  it('a poll that times out is retried, not fatal', async () => {
    const { fake: f, polls } = scripted([
      new RpcError('TIMEOUT', 'slow'),
      { events: [message(11, 'after retry')], cursor: 11, gap: false },
    ]);
    const target = await start(f);
    const stream = await open(target);
    expect((await stream.next(5_000))?.id).toBe('11');
    expect(polls.length).toBeGreaterThanOrEqual(2);
  });

  it('subscribe refused: a JSON error, no stream', async () => {
    const f = fakeEndpoint({
      subscribe: () => Promise.reject(new RpcError('FORBIDDEN_CAPABILITY', 'no events.stream')),
    });
    const target = await start(f);
    const res = await gatewayRequest(target, '/v1/events', { token: TOKEN });
    expect(res.status).toBe(403);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
  });

  it('limits streams per token (429) and overall (503), and frees slots on disconnect', async () => {
    const { fake: f } = scripted([]);
    const target = await start(f, { maxSubscribers: 3, maxSubscribersPerToken: 2 });
    const a = await open(target);
    await open(target);
    const third = await gatewayRequest(target, '/v1/events', { token: TOKEN });
    expect(third.status).toBe(429);
    expect(third.json()).toMatchObject({ error: { code: 'TOO_MANY_STREAMS' } });
    expect(third.headers['retry-after']).toBeDefined();

    // A token the endpoint refuses at subscribe does not keep the slot it took.
    for (let i = 0; i < 3; i++) {
      const refused = await gatewayRequest(target, '/v1/events', { token: `other-${i}` });
      expect(refused.status).toBe(401);
    }
    expect((await open(target, { token: 'other' })).status).toBe(401);

    a.close();
    await waitUntil(
      'one unsubscribe',
      () => f.calls.filter((c) => c.method === 'unsubscribe').length === 1,
      poll,
    );
    const again = await open(target);
    expect(again.status).toBe(200);
    expect((await gatewayRequest(target, '/v1/events', { token: TOKEN })).status).toBe(429);
  });

  it('overall limit: 503 STREAMS_EXHAUSTED', async () => {
    const { fake: f } = scripted([]);
    await open(await start(f, { maxSubscribers: 1, maxSubscribersPerToken: 1 }));
    const res = await app?.inject({ url: '/v1/events', headers: bearer('another') });
    expect(res?.statusCode).toBe(503);
    expect(res?.json()).toMatchObject({ error: { code: 'STREAMS_EXHAUSTED' } });
  });

  it('closing the gateway ends open streams', async () => {
    const { fake: f } = scripted([]);
    const target = await start(f);
    const stream = await open(target);
    await app?.close();
    app = undefined;
    await stream.ended;
  });

  it('a slow reader is cut off with a last frame (SLOW_READER, the last id) and resumes after it', async () => {
    // An endpoint with an endless supply of large events: the socket fills at once.
    const polls: number[] = [];
    let head = 10;
    const f = fakeEndpoint({
      subscribe: () =>
        Promise.resolve({ subscription: 'sub_0123456789abcdefghijkl', cursor: head }),
      events: (p) => {
        polls.push(p.after);
        const events = Array.from({ length: 20 }, (_, i) =>
          message(p.after + 1 + i, 'x'.repeat(30_000)),
        );
        head = Math.max(head, p.after + 20);
        return Promise.resolve({ events, cursor: p.after + 20, gap: false });
      },
    });
    const limits = { heartbeatMs: 100 };
    const cutoff = slowReaderMs(resolveLimits(limits));
    expect(cutoff).toBe(200);
    // The default: two 15 s heartbeats, below half of the 60 s idle timeout.
    expect(slowReaderMs(resolveLimits())).toBe(30_000);
    const target = await start(f, limits);
    const reader = await rawStream(target);
    reader.res.pause();
    const paused = Date.now();
    await waitUntil(
      'the gateway gives up on the reader',
      () => f.calls.some((c) => c.method === 'unsubscribe'),
      poll,
    );
    const cutAfter = Date.now() - paused;
    expect(cutAfter).toBeGreaterThanOrEqual(cutoff);
    expect(cutAfter).toBeLessThan(cutoff + 2_000);
    // The reader wakes up and reads what was queued: events, then the closing frame.
    const frames = await reader.readAll();
    const last = frames.at(-1);
    expect(last?.event).toBe('error');
    const data = JSON.parse(last?.data ?? '') as { error: { code: string }; lastEventId: number };
    expect(data.error.code).toBe('SLOW_READER');
    const events = frames.filter((e) => e.event === 'message');
    expect(events.length).toBeGreaterThan(0);
    const lastSeen = Number(events.at(-1)?.id);
    expect(data.lastEventId).toBe(lastSeen);
    expect(last?.id).toBe(String(lastSeen));
    // In order, none skipped: everything up to lastEventId arrived.
    expect(events.map((e) => Number(e.id))).toEqual(events.map((_, i) => 11 + i));
    // Resuming polls from exactly there.
    const before = polls.length;
    const resumed = await open(target, { lastEventId: String(lastSeen) });
    expect((await resumed.next())?.id).toBe(String(lastSeen + 1));
    expect(polls[before]).toBe(lastSeen);
  });

  it('a reader that keeps reading is not cut off, however much flows', async () => {
    const f = fakeEndpoint({
      events: (p) => {
        const events = Array.from({ length: 20 }, (_, i) =>
          message(p.after + 1 + i, 'y'.repeat(30_000)),
        );
        return Promise.resolve({ events, cursor: p.after + 20, gap: false });
      },
    });
    const target = await start(f, { heartbeatMs: 100 });
    const stream = await open(target);
    const deadline = Date.now() + 1_500;
    let seen = 0;
    while (Date.now() < deadline) {
      const event = await stream.next();
      expect(event?.event).toBe('message');
      seen++;
    }
    expect(seen).toBeGreaterThan(100);
  });

  it('an idle stream whose reader takes nothing is not cut off by heartbeats alone', async () => {
    const { fake: f } = scripted([]);
    const target = await start(f, { heartbeatMs: 50 });
    const reader = await rawStream(target);
    reader.res.pause();
    await new Promise((r) => setTimeout(r, 600));
    expect(f.calls.some((c) => c.method === 'unsubscribe')).toBe(false);
    reader.res.destroy();
  });
});

describe('gateway: calls in flight are shared between tokens', () => {
  /** A fake endpoint whose `rooms` answers any token, once `open()` is called. */
  function gated() {
    let open: () => void = () => undefined;
    const gate = new Promise<void>((r) => (open = r));
    const f = fakeEndpoint({
      rooms: async () => {
        await gate;
        return { rooms: [] };
      },
    });
    return { f, open };
  }
  const outcome = (p: Promise<unknown>) =>
    p.then(
      () => 'ok',
      (e: unknown) => (e instanceof Error && 'code' in e ? String(e.code) : 'error'),
    );
  const count = (results: string[], what: string) => results.filter((r) => r === what).length;

  it("one token flooding 1,000 calls: 503 for its surplus only; another token's 50 all succeed", async () => {
    const { f, open } = gated();
    fake = f;
    const limits = resolveLimits({ queueTimeoutMs: 5_000 });
    const calls = endpointCalls(f.client, limits);
    const flood = Array.from({ length: 1_000 }, () =>
      outcome(calls.call('rooms', { auth: { token: 'flooding-token' } })),
    );
    await new Promise((r) => setTimeout(r, 20));
    // Its share of the slots and the whole (otherwise idle) queue; the rest refused at once.
    expect(calls.inFlight).toBe(limits.maxInFlight / 2);
    expect(calls.queued).toBe(limits.maxQueued);
    const other = Array.from({ length: 50 }, () =>
      outcome(calls.call('rooms', { auth: { token: 'polite-token' } })),
    );
    await new Promise((r) => setTimeout(r, 20));
    // The other token got the free half of the slots at once, and queued the rest in place of
    // the flood's newest.
    expect(calls.inFlight).toBe(limits.maxInFlight);
    expect(calls.tokens).toBe(2);
    open();
    const theirs = await Promise.all(other);
    expect(count(theirs, 'ok')).toBe(50);
    const mine = await Promise.all(flood);
    expect(count(mine, 'ok') + count(mine, 'BUSY')).toBe(1_000);
    expect(count(mine, 'ok')).toBe(
      limits.maxInFlight / 2 + limits.maxQueued - (50 - limits.maxInFlight / 2),
    );
    expect(calls.inFlight).toBe(0);
    expect(calls.queued).toBe(0);
    // Nothing is kept per token once its calls are done (and the key is a hash, not the token).
    expect(calls.tokens).toBe(0);
  });

  it('a send has slots of its own: it reaches the endpoint while 50 slow reads hold every read slot', async () => {
    const { f, open } = gated();
    fake = f;
    const limits = resolveLimits({ queueTimeoutMs: 5_000 });
    const calls = endpointCalls(f.client, limits);
    // 50 slow readers (each its own token, as 50 UIs would be): every read slot taken, the rest queued.
    const reads = Array.from({ length: 50 }, (_, i) =>
      outcome(calls.call('rooms', { auth: { token: `reader-${String(i)}` } })),
    );
    await new Promise((r) => setTimeout(r, 20));
    expect(calls.inFlight).toBe(limits.maxInFlight);
    const sent = await calls.call('send', { auth: { token: TOKEN }, roomId: ROOM, body: 'hi' });
    expect(sent.txnId).toBeTruthy();
    // The send was answered while every read still waited on the endpoint.
    expect(f.calls.filter((c) => c.method === 'send')).toHaveLength(1);
    open();
    expect(count(await Promise.all(reads), 'ok')).toBe(50);
  });

  it('freed slots go to the waiting tokens in turn', async () => {
    const order: string[] = [];
    const releases: (() => void)[] = [];
    const f = fakeEndpoint({
      rooms: async (p) => {
        order.push(p.auth.token);
        await new Promise<void>((r) => releases.push(r));
        return { rooms: [] };
      },
    });
    fake = f;
    const calls = endpointCalls(f.client, resolveLimits({ maxInFlight: 2, maxQueued: 10 }));
    const all = [
      ...Array.from({ length: 4 }, () => calls.call('rooms', { auth: { token: 'a' } })),
      ...Array.from({ length: 2 }, () => calls.call('rooms', { auth: { token: 'b' } })),
      ...Array.from({ length: 2 }, () => calls.call('rooms', { auth: { token: 'c' } })),
    ];
    // The share is one slot each (half of 2): a and b run, a, b and c wait.
    await waitUntil('two running', () => order.length === 2, poll);
    for (let i = 0; i < 6; i++) {
      releases.shift()?.();
      await waitUntil(`call ${i + 3}`, () => order.length === i + 3, poll);
    }
    expect(order).toEqual(['a', 'b', 'a', 'b', 'c', 'a', 'c', 'a']);
    for (const r of releases.splice(0)) r();
    await Promise.all(all);
  });

  it('a full queue refuses the token with the longest queue, not a newcomer', async () => {
    const { f, open } = gated();
    fake = f;
    const calls = endpointCalls(f.client, resolveLimits({ maxInFlight: 2, maxQueued: 3 }));
    const a = Array.from({ length: 4 }, () =>
      outcome(calls.call('rooms', { auth: { token: 'a' } })),
    );
    const b = Array.from({ length: 3 }, () =>
      outcome(calls.call('rooms', { auth: { token: 'b' } })),
    );
    // b: one in flight, two queued, each displacing one of a's (a had 3 queued, then 2, then 1).
    await new Promise((r) => setTimeout(r, 20));
    // A fourth of b's while b now has the longest queue (2 against a's 1): refused itself.
    const refused = await outcome(calls.call('rooms', { auth: { token: 'b' } }));
    expect(refused).toBe('BUSY');
    open();
    expect(await Promise.all(b)).toEqual(['ok', 'ok', 'ok']);
    expect(await Promise.all(a)).toEqual(['ok', 'ok', 'BUSY', 'BUSY']);
  });
});

interface RawStream {
  res: IncomingMessage;
  /** Resumes reading and resolves with every frame once the server ends the stream. */
  readAll(): Promise<{ id?: string; event: string; data: string }[]>;
}

/** GET /v1/events read by hand, so a test can stop reading (res.pause()) as a stuck UI would. */
function rawStream(
  target: GatewayTarget,
  headers: Record<string, string> = {},
): Promise<RawStream> {
  if (!('host' in target)) throw new Error('TCP only');
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: target.host,
      port: target.port,
      path: '/v1/events',
      headers: { ...bearer(), accept: 'text/event-stream', ...headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      const ended = new Promise<void>((r) => {
        res.on('end', r);
        res.on('close', r);
      });
      resolve({
        res,
        async readAll() {
          res.resume();
          await ended;
          return parseFrames(Buffer.concat(chunks).toString('utf8'));
        },
      });
    });
    req.end();
  });
}

function parseFrames(text: string): { id?: string; event: string; data: string }[] {
  const frames: { id?: string; event: string; data: string }[] = [];
  for (const block of text.split('\n\n')) {
    const frame: { id?: string; event: string; data: string } = { event: 'message', data: '' };
    let fields = 0;
    for (const line of block.split('\n')) {
      if (line.startsWith(':') || line === '') continue;
      const colon = line.indexOf(':');
      const field = line.slice(0, colon);
      const value = line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') frame.id = value;
      else if (field === 'event') frame.event = value;
      else if (field === 'data') frame.data = value;
      else continue;
      fields++;
    }
    if (fields > 0) frames.push(frame);
  }
  return frames;
}
