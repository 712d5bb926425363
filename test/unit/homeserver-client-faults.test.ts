import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import {
  HomeserverClient,
  type HomeserverClientOptions,
  MatrixApiError,
  type RetryTiming,
} from '../../endpoint/matrix/index.ts';

// The homeserver misbehaving in every way we can script: a node:http server per test that
// answers each request from a list of handlers, so the client's retries, bounds and error
// mapping are tested against real sockets and real fetch.

const token = 'syt_c2VjcmV0_TOKENabcdef123456';
const session = { userId: '@me:hs', deviceId: 'DEV', accessToken: token };

interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface FakeServer {
  url: string;
  port: number;
  seen: Seen[];
  close(): Promise<void>;
}

const servers: FakeServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

/** Answers request n with handlers[n], and every later request with the last handler. */
async function serve(handlers: Handler[], port = 0): Promise<FakeServer> {
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    req.resume();
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
    });
    const handler = handlers[Math.min(seen.length - 1, handlers.length - 1)];
    handler?.(req, res);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const actual = (server.address() as AddressInfo).port;
  const fake: FakeServer = {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          resolve();
        });
      }),
  };
  servers.push(fake);
  return fake;
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Handler {
  return (_req, res) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
}

const okSync = json(200, { next_batch: 's1' });

/** Records every backoff the client asks for and waits only a millisecond. */
function fastTiming(): { timing: Partial<RetryTiming>; delays: number[] } {
  const delays: number[] = [];
  return {
    delays,
    timing: {
      baseDelayMs: 100,
      maxDelayMs: 1_000,
      random: () => 0.5,
      sleep: async (ms, signal) => {
        delays.push(ms);
        await sleep(1, undefined, signal ? { signal } : {});
      },
    },
  };
}

function client(url: string, options: Partial<HomeserverClientOptions> = {}): HomeserverClient {
  return new HomeserverClient({ baseUrl: url, session, ...options });
}

async function failure(promise: Promise<unknown>): Promise<MatrixApiError> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof MatrixApiError) return e;
    throw e;
  }
  throw new Error('expected a MatrixApiError');
}

function expectClean(error: MatrixApiError): void {
  expect(error.message).not.toContain(token);
  expect(JSON.stringify(error)).not.toContain(token);
}

describe('HomeserverClient under faults', () => {
  it('honours 429 retry_after_ms from the body, then succeeds', async () => {
    const hs = await serve([
      json(429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', retry_after_ms: 1234 }),
      okSync,
    ]);
    const { timing, delays } = fastTiming();
    const warnings: string[] = [];
    const c = client(hs.url, { timing, logger: { warn: (m) => warnings.push(m), info() {} } });
    await expect(c.sync({})).resolves.toEqual({ next_batch: 's1' });
    expect(delays).toEqual([1234]);
    expect(hs.seen).toHaveLength(2);
    expect(hs.seen[0]?.authorization).toBe(`Bearer ${token}`);
    expect(warnings.join('\n')).toMatch(/GET \/sync: 429 M_LIMIT_EXCEEDED.*retrying in 1234 ms/);
    expect(warnings.join('\n')).not.toContain(token);
  });

  it('honours a Retry-After header when the body has no retry_after_ms', async () => {
    const hs = await serve([
      json(429, { errcode: 'M_LIMIT_EXCEEDED' }, { 'retry-after': '2' }),
      json(200, { room_id: '!r:hs' }),
    ]);
    const { timing, delays } = fastTiming();
    // createRoom is not idempotent, but a 429 means the server did nothing: safe to repeat.
    await expect(client(hs.url, { timing }).createRoom({})).resolves.toBe('!r:hs');
    expect(delays).toEqual([2000]);
  });

  it('retries 503 with exponential backoff and full jitter, then succeeds', async () => {
    const unavailable = json(503, { errcode: 'M_UNKNOWN', error: 'down' });
    const hs = await serve([unavailable, unavailable, unavailable, okSync]);
    const { timing, delays } = fastTiming();
    await expect(client(hs.url, { timing }).sync({})).resolves.toEqual({ next_batch: 's1' });
    // random() = 0.5 of a ceiling of 100, 200, 400 ms.
    expect(delays).toEqual([50, 100, 200]);
    expect(hs.seen).toHaveLength(4);
  });

  it('caps the backoff and gives up on bounded calls after the configured attempts', async () => {
    const hs = await serve([json(502, 'Bad Gateway')]);
    const { timing, delays } = fastTiming();
    const error = await failure(client(hs.url, { timing, attempts: 6 }).members('!r:hs'));
    expect(error).toMatchObject({ status: 502, errcode: 'HTTP_ERROR', retryable: true });
    expect(error.message).toMatch(/GET \/rooms\/\{roomId\}\/members: 502 .*gave up after 6/);
    expect(hs.seen).toHaveLength(6);
    expect(delays).toEqual([50, 100, 200, 400, 500]);
  });

  it('does not repeat a createRoom the server may have acted on', async () => {
    const hs = await serve([json(503, { errcode: 'M_UNKNOWN' }), json(200, { room_id: '!r:hs' })]);
    const { timing } = fastTiming();
    const error = await failure(client(hs.url, { timing }).createRoom({}));
    expect(error).toMatchObject({ status: 503, errcode: 'M_UNKNOWN' });
    expect(hs.seen).toHaveLength(1);
  });

  it('never retries faster than its own backoff, whatever retry_after_ms says', async () => {
    const hs = await serve([json(429, { errcode: 'M_LIMIT_EXCEEDED', retry_after_ms: 0 }), okSync]);
    const { timing, delays } = fastTiming();
    await client(hs.url, { timing }).sync({});
    expect(delays).toEqual([50]);
  });

  it('does not retry 400 M_UNKNOWN', async () => {
    const hs = await serve([json(400, { errcode: 'M_UNKNOWN', error: 'nope' }), okSync]);
    const { timing, delays } = fastTiming();
    const error = await failure(client(hs.url, { timing }).sync({}));
    expect(error).toMatchObject({ status: 400, errcode: 'M_UNKNOWN', retryable: false });
    expect(error.message).toBe('GET /sync: 400 M_UNKNOWN: nope');
    expect(hs.seen).toHaveLength(1);
    expect(delays).toEqual([]);
  });

  it('resumes a sync when a refused connection comes up later on the same port', async () => {
    const placeholder = await serve([okSync]);
    const port = placeholder.port;
    await placeholder.close();
    servers.length = 0;
    const warnings: string[] = [];
    const c = client(`http://127.0.0.1:${port}`, {
      timing: { baseDelayMs: 10, maxDelayMs: 40 },
      logger: { warn: (m) => warnings.push(m), info() {} },
    });
    const syncing = c.sync({ since: 's0', timeoutMs: 0 });
    await sleep(300);
    const hs = await serve([okSync], port);
    await expect(syncing).resolves.toEqual({ next_batch: 's1' });
    expect(hs.seen[0]?.url).toContain('since=s0');
    expect(warnings.some((w) => w.includes('network error (ECONNREFUSED)'))).toBe(true);
  });

  it('retries a request that times out, with sync allowed its long-poll plus a margin', async () => {
    let answered = 0;
    const hs = await serve([
      () => undefined, // never answers
      (_req, res) => {
        answered++;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ next_batch: 's2' }));
      },
    ]);
    const { timing } = fastTiming();
    const c = client(hs.url, { timing, syncTimeoutMarginMs: 200 });
    const started = Date.now();
    await expect(c.sync({ timeoutMs: 100 })).resolves.toEqual({ next_batch: 's2' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(answered).toBe(1);
    expect(hs.seen[0]?.url).toContain('timeout=100');
  });

  it('stops a retrying sync promptly when its signal aborts', async () => {
    const hs = await serve([json(503, { errcode: 'M_UNKNOWN' })]);
    const c = client(hs.url, { timing: { baseDelayMs: 5_000, maxDelayMs: 30_000 } });
    const controller = new AbortController();
    const syncing = c.sync({ signal: controller.signal });
    await sleep(100);
    const abortedAt = Date.now();
    controller.abort();
    const error = await failure(syncing);
    expect(Date.now() - abortedAt).toBeLessThan(1_000);
    expect(error).toMatchObject({ status: 0, errcode: 'ABORTED', retryable: false });
  });

  it('stops an in-flight long-poll promptly when the client is shut down', async () => {
    const hs = await serve([() => undefined]);
    const lifetime = new AbortController();
    const c = client(hs.url, { signal: lifetime.signal });
    const syncing = c.sync({ timeoutMs: 30_000 });
    await sleep(100);
    const abortedAt = Date.now();
    lifetime.abort();
    await expect(failure(syncing)).resolves.toMatchObject({ errcode: 'ABORTED' });
    expect(Date.now() - abortedAt).toBeLessThan(1_000);
    await expect(failure(c.members('!r:hs'))).resolves.toMatchObject({ errcode: 'ABORTED' });
  });

  it('sends retry until their signal aborts', async () => {
    const hs = await serve([json(500, { errcode: 'M_UNKNOWN' })]);
    const { timing } = fastTiming();
    const controller = new AbortController();
    const sending = client(hs.url, { timing, attempts: 2 }).sendEvent(
      '!r:hs',
      'm.room.message',
      't1',
      { body: 'x' },
      { signal: controller.signal },
    );
    await sleep(150);
    controller.abort();
    await expect(failure(sending)).resolves.toMatchObject({ errcode: 'ABORTED' });
    // Far more than the bounded calls' 2 attempts: sends do not give up on their own.
    expect(hs.seen.length).toBeGreaterThan(5);
    expect(new Set(hs.seen.map((s) => s.url)).size).toBe(1);
  });
});

describe('HomeserverClient with malformed responses', () => {
  it('names the endpoint and the field for wrong types and missing fields', async () => {
    const hs = await serve([
      json(200, { next_batch: 5 }),
      json(200, { nothing: true }),
      json(200, { chunk: 'no', start: 't' }),
      json(200, [1, 2]),
    ]);
    const c = client(hs.url);
    const wrongType = await failure(c.sync({}));
    expect(wrongType).toMatchObject({ errcode: 'BAD_RESPONSE', status: 200, retryable: false });
    expect(wrongType.message).toBe(
      'GET /sync: response violates its schema: next_batch: Invalid input: expected string, received number',
    );
    const missing = await failure(c.join('#a:hs'));
    expect(missing.message).toMatch(
      /^POST \/join\/\{roomIdOrAlias\}: .*room_id: .*received undefined/,
    );
    const list = await failure(c.messages('!r:hs', { dir: 'b', limit: 10 }));
    expect(list.message).toMatch(/^GET \/rooms\/\{roomId\}\/messages: .*chunk: /);
    const array = await failure(c.keysQuery('{}'));
    expect(array.message).toMatch(/^POST \/keys\/query: .*\(top level\): .*expected object/);
    for (const e of [wrongType, missing, list, array]) expectClean(e);
  });

  it('refuses non-JSON and non-UTF-8 bodies', async () => {
    const hs = await serve([
      (_req, res) => res.end('<html>hello</html>'),
      (_req, res) => res.end(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])),
    ]);
    const c = client(hs.url);
    await expect(failure(c.sync({}))).resolves.toMatchObject({
      errcode: 'BAD_RESPONSE',
      message: 'GET /sync: response is not JSON',
    });
    await expect(failure(c.keysUpload('{}'))).resolves.toMatchObject({
      errcode: 'BAD_RESPONSE',
      message: 'POST /keys/upload: response is not valid UTF-8',
    });
  });

  it('stops reading a body beyond its bound, declared or streamed, and stays usable', async () => {
    let written = 0;
    let closed = false;
    const streamForever: Handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      res.write('{"next_batch":"s","pad":"');
      const pump = (): void => {
        while (!closed && written < 256 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
      };
      res.on('close', () => {
        closed = true;
      });
      pump();
    };
    const declared: Handler = (_req, res) => {
      // Member lists are read with the large bound (big rooms): announce more than that.
      res.writeHead(200, { 'content-length': String(32 * 1024 * 1024) });
      res.write('{');
    };
    const hs = await serve([streamForever, declared, okSync]);
    const c = client(hs.url);
    const streamed = await failure(c.sync({}));
    expect(streamed).toMatchObject({ errcode: 'RESPONSE_TOO_LARGE', retryable: false });
    expect(streamed.message).toBe(`GET /sync: response body exceeds ${16 * 1024 * 1024} bytes`);
    await sleep(50);
    expect(closed).toBe(true);
    expect(written).toBeLessThan(64 * 1024 * 1024);
    const announced = await failure(c.members('!r:hs'));
    expect(announced.message).toBe(
      `GET /rooms/{roomId}/members: response body exceeds ${16 * 1024 * 1024} bytes`,
    );
    await expect(c.sync({})).resolves.toEqual({ next_batch: 's1' });
  });

  it('keeps the token out of errors even when the server echoes it', async () => {
    const hs = await serve([
      json(403, { errcode: 'M_FORBIDDEN', error: `token ${token} is not welcome` }),
      json(200, { next_batch: 's', rooms: { join: { [token]: 'not an object' } } }),
    ]);
    const c = client(hs.url);
    const echoed = await failure(c.sync({}));
    expect(echoed.message).toBe('GET /sync: 403 M_FORBIDDEN: token [redacted] is not welcome');
    const keyed = await failure(c.sync({}));
    expect(keyed.message).toContain('rooms.join.[redacted]: ');
    for (const e of [echoed, keyed]) expectClean(e);
  });

  it('drops a malformed event from a list and reports it, keeping the rest', async () => {
    const good = {
      type: 'm.room.message',
      event_id: '$a',
      sender: '@a:hs',
      origin_server_ts: 1,
      content: { body: 'hi' },
    };
    const hs = await serve([
      json(200, {
        next_batch: 's',
        rooms: { join: { '!r:hs': { timeline: { events: [good, { type: 5 }, good] } } } },
        to_device: { events: [{ type: 'x', sender: '@a:hs', content: {} }, null] },
      }),
    ]);
    const warnings: string[] = [];
    const c = client(hs.url, { logger: { warn: (m) => warnings.push(m), info() {} } });
    const sync = await c.sync({});
    expect(sync.rooms?.join?.['!r:hs']?.timeline?.events).toEqual([good, good]);
    expect(sync.to_device?.events).toHaveLength(1);
    expect(warnings).toEqual([
      'dropped 1 malformed timeline event(s) from the homeserver',
      'dropped 1 malformed to-device event(s) from the homeserver',
    ]);
  });
});

describe('HomeserverClient requests', () => {
  it('encodes every path parameter and refuses dot segments before sending', async () => {
    const hs = await serve([json(200, { event_id: '$e' })]);
    const c = client(hs.url);
    await c.sendEvent('!a/b?c#d:hs', 'm.x/../y', 'txn/1 2', {});
    expect(hs.seen[0]?.url).toBe(
      '/_matrix/client/v3/rooms/!a%2Fb%3Fc%23d%3Ahs/send/m.x%2F..%2Fy/txn%2F1%202',
    );
    await expect(failure(c.sendEvent('..', 'm.x', 't', {}))).resolves.toMatchObject({
      errcode: 'BAD_REQUEST',
      status: 0,
    });
    expect(hs.seen).toHaveLength(1);
    const prefixed = client(`${hs.url}/matrix/`);
    await prefixed.sendEvent('!r:hs', 'm.x', 't', {});
    expect(hs.seen[1]?.url).toBe('/matrix/_matrix/client/v3/rooms/!r%3Ahs/send/m.x/t');
  });

  it('checks pass-through bodies are JSON objects and returns the raw response text', async () => {
    const raw = '{"one_time_key_counts": {"signed_curve25519": 3}, "extra": [1]}';
    const hs = await serve([
      (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(raw);
      },
    ]);
    const c = client(hs.url);
    await expect(c.keysUpload('{"one_time_keys": {}}')).resolves.toBe(raw);
    await expect(failure(c.keysUpload('[1]'))).resolves.toMatchObject({ errcode: 'BAD_REQUEST' });
    await expect(failure(c.keysUpload('nope'))).resolves.toMatchObject({ errcode: 'BAD_REQUEST' });
    expect(hs.seen).toHaveLength(1);
  });

  it('refuses calls before login and does not follow redirects', async () => {
    const hs = await serve([json(302, {}, { location: 'http://127.0.0.1:1/elsewhere' })]);
    const anonymous = new HomeserverClient({ baseUrl: hs.url });
    await expect(failure(anonymous.sync({}))).resolves.toMatchObject({ errcode: 'NOT_LOGGED_IN' });
    expect(hs.seen).toHaveLength(0);
    const error = await failure(client(hs.url).members('!r:hs'));
    expect(error).toMatchObject({ status: 302, errcode: 'HTTP_ERROR', retryable: false });
    expect(hs.seen).toHaveLength(1);
  });
});
