import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import { MAX_TOKEN_CHARS } from '../../endpoint/contract.ts';
import {
  buildGateway,
  errorBody,
  listenGateway,
  type Limits,
} from '../../endpoint/untrusted/gateway/index.ts';
import { type FakeEndpoint, TOKEN, bearer, fakeEndpoint } from './gateway-helpers.ts';

let fake: FakeEndpoint | undefined;
afterEach(() => {
  fake?.close();
  fake = undefined;
});

function failing(error: Error) {
  fake = fakeEndpoint({
    status: () => Promise.reject(error),
  });
  return buildGateway({ endpoint: fake.client });
}

describe('gateway: RPC errors become HTTP errors', () => {
  const cases: [string, number][] = [
    ['UNAUTHENTICATED', 401],
    ['FORBIDDEN_CAPABILITY', 403],
    ['FORBIDDEN_ROOM', 403],
    ['RATE_LIMITED', 429],
    ['INVALID_REQUEST', 400],
    ['INVALID_PARAMS', 400],
    ['NOT_FOUND', 404],
    ['UPSTREAM_FAILED', 502],
    ['AUDIT_UNAVAILABLE', 503],
    ['BUSY', 503],
    ['DISCONNECTED', 503],
    ['VAULT_UNAVAILABLE', 503],
    ['STORE_UNAVAILABLE', 503],
    ['TIMEOUT', 504],
    ['STORAGE_FULL', 507],
    ['CONFLICT', 409],
    ['IDENTITY_CHANGED', 409],
    ['MESSAGE_TOO_LARGE', 413],
    ['ATTACHMENT_TOO_LARGE', 413],
    ['ROOM_NOT_ENCRYPTED', 409],
    ['NOT_OWN_MESSAGE', 409],
    ['UPLOAD_INCOMPLETE', 409],
    ['CONTENT_TYPE_MISMATCH', 415],
    ['ATTACHMENT_TAMPERED', 502],
    ['ATTACHMENT_INVALID', 502],
    ['NOT_INVITED', 404],
  ];
  for (const [code, status] of cases) {
    it(`${code} → ${status}`, async () => {
      const app = failing(new RpcError(code, 'the endpoint says no'));
      const res = await app.inject({ url: '/v1/status', headers: bearer() });
      expect(res.statusCode).toBe(status);
      const body = res.json<{ error: { code: string; message: string } }>();
      expect(body.error.code).toBe(code === 'INVALID_PARAMS' ? 'INVALID_REQUEST' : code);
      expect(body.error.message).toMatch(/^[A-Z].*[.!?]$/);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      await app.close();
    });
  }

  it('401 carries WWW-Authenticate: Bearer', async () => {
    const app = failing(new RpcError('UNAUTHENTICATED', 'revoked'));
    const res = await app.inject({ url: '/v1/status', headers: bearer() });
    expect(res.headers['www-authenticate']).toBe('Bearer');
    await app.close();
  });

  it('429 carries Retry-After in whole seconds, rounded up', async () => {
    const app = failing(new RpcError('RATE_LIMITED', 'slow down', { retryAfterMs: 1_200 }));
    const res = await app.inject({ url: '/v1/status', headers: bearer() });
    expect(res.statusCode).toBe(429);
    expect(res.headers['retry-after']).toBe('2');
    await app.close();
  });

  it('an unknown RPC code, or any other failure, is a generic 500 INTERNAL without details', async () => {
    for (const error of [
      new RpcError('SOMETHING_NEW', 'secret detail /home/x'),
      new Error('stack me /home/x'),
      new RpcError('INTERNAL', 'boom'),
    ]) {
      const app = failing(error);
      const res = await app.inject({ url: '/v1/status', headers: bearer() });
      expect(res.statusCode).toBe(500);
      expect(res.json()).toEqual({
        error: { code: 'INTERNAL', message: expect.any(String) as string },
      });
      expect(res.body).not.toMatch(/secret|stack|home|boom|at /);
      await app.close();
    }
  });

  it('a result that breaks the response schema never reaches the client', async () => {
    fake = fakeEndpoint();
    const app = buildGateway({ endpoint: fake.client });
    // The RPC client validates results on receipt, so this arrives as INVALID_RESULT: a 500.
    fake.close();
    fake = fakeEndpoint({
      status: () => Promise.resolve({ userId: 1 } as never),
    });
    const app2 = buildGateway({ endpoint: fake.client });
    const res = await app2.inject({ url: '/v1/status', headers: bearer() });
    expect(res.statusCode).toBe(500);
    expect(res.json<{ error: { code: string } }>().error.code).toBe('INTERNAL');
    await app.close();
    await app2.close();
  });
});

describe('gateway: the bearer token', () => {
  const bad: [string, Record<string, string>][] = [
    ['no Authorization header', {}],
    ['an empty header', { authorization: '' }],
    ['another scheme', { authorization: `Basic ${TOKEN}` }],
    ['Bearer without a token', { authorization: 'Bearer ' }],
    ['a token with spaces', { authorization: 'Bearer a b' }],
    ['a token with non-token characters', { authorization: 'Bearer abc"def' }],
    [
      'a token one character too long',
      { authorization: `Bearer ${'a'.repeat(MAX_TOKEN_CHARS + 1)}` },
    ],
    ['a huge header', { authorization: `Bearer ${'a'.repeat(8000)}` }],
  ];
  for (const [what, headers] of bad) {
    it(`${what}: 401 without calling the endpoint`, async () => {
      fake = fakeEndpoint();
      const app = buildGateway({ endpoint: fake.client });
      for (const [method, url] of [
        ['GET', '/v1/status'],
        ['GET', '/v1/rooms'],
        ['POST', '/v1/rooms/!r:x/messages'],
        ['GET', '/v1/events'],
        ['POST', '/v1/rooms/!r:x/attachments?name=a.txt'],
        ['GET', '/v1/rooms/!r:x/events/$e/attachment'],
      ] as const) {
        const res = await app.inject({
          method,
          url,
          headers,
          ...(method === 'POST' ? { payload: { body: 'x' } } : {}),
        });
        expect(res.statusCode).toBe(401);
        expect(res.headers['www-authenticate']).toBe('Bearer');
        expect(res.json<{ error: { code: string } }>().error.code).toBe('UNAUTHENTICATED');
        expect(res.body).not.toContain('aaaa');
      }
      expect(fake.calls).toEqual([]);
      await app.close();
    });
  }

  it('a token of exactly the maximum length is forwarded as presented', async () => {
    const long = 'A'.repeat(MAX_TOKEN_CHARS);
    fake = fakeEndpoint();
    const app = buildGateway({ endpoint: fake.client });
    const res = await app.inject({
      url: '/v1/status',
      headers: { authorization: `bearer ${long}` },
    });
    expect(res.statusCode).toBe(401); // the fake does not know it
    expect(fake.calls).toEqual([{ method: 'status', params: { auth: { token: long } } }]);
    expect(res.body).not.toContain(long);
    await app.close();
  });

  it('the token is never echoed, even when the endpoint refuses it', async () => {
    fake = fakeEndpoint();
    const app = buildGateway({ endpoint: fake.client });
    const res = await app.inject({ url: '/v1/rooms', headers: bearer('wrong-token-xyz') });
    expect(res.statusCode).toBe(401);
    expect(JSON.stringify(res.headers) + res.body).not.toContain('wrong-token-xyz');
    await app.close();
  });
});

describe('gateway: calls in flight to the endpoint are bounded', () => {
  it('queues up to maxQueued, then answers 503 BUSY', async () => {
    let releaseAll: () => void = () => undefined;
    const gate = new Promise<void>((r) => (releaseAll = r));
    fake = fakeEndpoint({
      rooms: async () => {
        await gate;
        return { rooms: [] };
      },
    });
    const app = buildGateway({
      endpoint: fake.client,
      limits: { maxInFlight: 1, maxQueued: 1, queueTimeoutMs: 5_000 },
    });
    await app.ready();
    const first = app.inject({ url: '/v1/rooms', headers: bearer() });
    const second = app.inject({ url: '/v1/rooms', headers: bearer() });
    await new Promise((r) => setTimeout(r, 50));
    const third = await app.inject({ url: '/v1/rooms', headers: bearer() });
    expect(third.statusCode).toBe(503);
    expect(third.json<{ error: { code: string } }>().error.code).toBe('BUSY');
    expect(third.headers['retry-after']).toBe('1');
    releaseAll();
    expect((await first).statusCode).toBe(200);
    expect((await second).statusCode).toBe(200);
    await app.close();
  });

  it('a call that waits in the queue too long gets 503 BUSY', async () => {
    let releaseAll: () => void = () => undefined;
    const gate = new Promise<void>((r) => (releaseAll = r));
    fake = fakeEndpoint({
      rooms: async () => {
        await gate;
        return { rooms: [] };
      },
    });
    const app = buildGateway({
      endpoint: fake.client,
      limits: { maxInFlight: 1, maxQueued: 4, queueTimeoutMs: 50 },
    });
    await app.ready();
    const first = app.inject({ url: '/v1/rooms', headers: bearer() });
    await new Promise((r) => setTimeout(r, 20));
    const second = await app.inject({ url: '/v1/rooms', headers: bearer() });
    expect(second.statusCode).toBe(503);
    releaseAll();
    expect((await first).statusCode).toBe(200);
    await app.close();
  });
});

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The connection was closed by the gateway after this answer. */
  closed: boolean;
}

/** Bytes as given over a real socket: the parser and framework paths inject() cannot reach. */
function raw(socketPath: string, bytes: string | Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let data = Buffer.alloc(0);
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      const text = data.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) {
        if (closed) {
          done = true;
          reject(new Error(`no answer, only ${JSON.stringify(text.slice(0, 200))}`));
        }
        return;
      }
      const [statusLine = '', ...lines] = text.slice(0, end).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      const length = Number(headers['content-length'] ?? NaN);
      const body = data.subarray(end + 4);
      if (!closed && !(body.length >= length)) return;
      done = true;
      socket.destroy();
      resolve({
        status: Number(statusLine.split(' ')[1]),
        headers,
        body: body.toString('utf8'),
        closed,
      });
    };
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      finish(false);
    });
    socket.on('error', () => undefined);
    socket.once('close', () => {
      finish(true);
    });
    socket.once('connect', () => {
      socket.write(bytes);
    });
    setTimeout(() => {
      if (!done) reject(new Error('no answer in 5 s'));
      socket.destroy();
    }, 5_000).unref();
  });
}

/** Every 4xx: the API's error shape (strict: nothing else in it), JSON, no stack, our headers. */
function expectApiError(res: RawResponse, status: number, code: string): void {
  expect({ status: res.status, body: res.body }).toMatchObject({ status });
  expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
  expect(res.headers['x-content-type-options']).toBe('nosniff');
  expect(res.headers['cache-control']).toBe('no-store');
  const parsed = errorBody.safeParse(JSON.parse(res.body));
  expect(parsed.success, res.body).toBe(true);
  expect(parsed.data?.error.code).toBe(code);
  // One line ending in a full stop (a field-naming INVALID_REQUEST starts with the field).
  expect(parsed.data?.error.message).toMatch(/^[^\n]+[.!?]$/);
  expect(res.body).not.toMatch(/statusCode|FST_|HPE_|\bat .*:\d+|Error:/);
}

function listening(limits: Partial<Limits> = {}) {
  let dir = '';
  let app: FastifyInstance | undefined;
  const state = { socketPath: '', fake: undefined as FakeEndpoint | undefined };
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gateway-errors-'));
    state.socketPath = join(dir, 'gw.sock');
    state.fake = fakeEndpoint();
    app = buildGateway({ endpoint: state.fake.client, limits });
    await listenGateway(app, { socket: state.socketPath });
  });
  afterAll(async () => {
    await app?.close();
    state.fake?.close();
    await rm(dir, { recursive: true, force: true });
  });
  return state;
}

const H = 'Host: gateway\r\n';
const auth = `Authorization: Bearer ${TOKEN}\r\n`;

describe('gateway: framework-level 4xx have the API error shape (over a real socket)', () => {
  const gw = listening({ headersTimeoutMs: 300, requestTimeoutMs: 600 });
  const json = (body: string) =>
    `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}Content-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;

  const cases: [string, () => string | Buffer, number, string][] = [
    ['bad JSON', () => json('{"body": '), 400, 'INVALID_JSON'],
    ['an empty JSON body where one is needed', () => json(''), 400, 'INVALID_REQUEST'],
    [
      'a malformed percent-encoding in the path',
      () => `GET /v1/rooms/%E0%A4%A/timeline HTTP/1.1\r\n${H}${auth}Connection: close\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'a path parameter over maxParamLength',
      () => `GET /v1/contacts/${'a'.repeat(2000)} HTTP/1.1\r\n${H}${auth}Connection: close\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'an unknown route',
      () => `GET /v2/nothing HTTP/1.1\r\n${H}Connection: close\r\n\r\n`,
      404,
      'NOT_FOUND',
    ],
    ['OPTIONS *', () => `OPTIONS * HTTP/1.1\r\n${H}Connection: close\r\n\r\n`, 404, 'NOT_FOUND'],
    [
      'a wrong method',
      () => `DELETE /v1/status HTTP/1.1\r\n${H}${auth}Connection: close\r\n\r\n`,
      405,
      'METHOD_NOT_ALLOWED',
    ],
    [
      'a method fastify does not route',
      () => `PROPFIND /v1/status HTTP/1.1\r\n${H}${auth}Connection: close\r\n\r\n`,
      404,
      'NOT_FOUND',
    ],
    [
      'a body over the limit',
      () => json(JSON.stringify({ body: 'x'.repeat(200 * 1024) })),
      413,
      'BODY_TOO_LARGE',
    ],
    [
      'a non-JSON content type',
      () =>
        `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}Content-Type: text/plain\r\n` +
        `Content-Length: 2\r\nConnection: close\r\n\r\nhi`,
      415,
      'UNSUPPORTED_MEDIA_TYPE',
    ],
    [
      'a JSON body in another charset',
      () =>
        `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}` +
        `Content-Type: application/json; charset=latin1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
      415,
      'UNSUPPORTED_MEDIA_TYPE',
    ],
    [
      'no Host header',
      () => `GET /v1/openapi.json HTTP/1.1\r\nConnection: close\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'two Host headers',
      () => `GET /v1/openapi.json HTTP/1.1\r\n${H}Host: other\r\nConnection: close\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'two Content-Type headers',
      () =>
        `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}Content-Type: application/json\r\n` +
        `Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'a header with a control character',
      () => `GET /v1/status HTTP/1.1\r\n${H}X-Bad: a\x01b\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'a header line without a colon',
      () => `GET /v1/status HTTP/1.1\r\n${H}nocolon\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'Content-Length and Transfer-Encoding together',
      () =>
        `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}Content-Type: application/json\r\n` +
        `Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'broken chunked framing',
      () =>
        `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}Content-Type: application/json\r\n` +
        `Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
      400,
      'INVALID_REQUEST',
    ],
    [
      'headers over 16 KiB',
      () => `GET /v1/status HTTP/1.1\r\n${H}X-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      431,
      'HEADERS_TOO_LARGE',
    ],
    ['not HTTP at all', () => 'HELLO THERE\r\n\r\n', 400, 'INVALID_REQUEST'],
    ['an HTTP/2 preface', () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400, 'INVALID_REQUEST'],
    [
      'an Expect other than 100-continue',
      () => `GET /v1/status HTTP/1.1\r\n${H}${auth}Expect: magic\r\nConnection: close\r\n\r\n`,
      417,
      'EXPECTATION_FAILED',
    ],
    [
      'headers that stop coming (the cut-off)',
      () => `GET /v1/status HTTP/1.1\r\n${H}`,
      408,
      'REQUEST_TIMEOUT',
    ],
    ['a connection that sends nothing (the cut-off)', () => '', 408, 'REQUEST_TIMEOUT'],
    [
      'a body that stops coming (the request cut-off)',
      () =>
        `POST /v1/rooms/!r:x/messages HTTP/1.1\r\n${H}${auth}Content-Type: application/json\r\n` +
        `Content-Length: 100\r\n\r\n{"body":`,
      408,
      'REQUEST_TIMEOUT',
    ],
  ];
  for (const [what, bytes, status, code] of cases) {
    it(`${what}: ${status} ${code}`, async () => {
      expectApiError(await raw(gw.socketPath, bytes()), status, code);
    });
  }

  it('the parser errors and cut-offs close the connection', async () => {
    for (const bytes of ['HELLO\r\n\r\n', `GET /v1/status HTTP/1.1\r\n${H}`]) {
      const res = await raw(gw.socketPath, bytes);
      expect(res.headers.connection).toBe('close');
    }
  });
});

describe('gateway: two sets of credentials are refused, not "first one wins"', () => {
  const gw = listening();
  const other = 'other-token_0123456789abcdefghijklmnopqrstu';
  const request = (path: string, authorization: string[], method = 'GET') =>
    `${method} ${path} HTTP/1.1\r\n${H}${authorization.map((a) => `Authorization: ${a}\r\n`).join('')}` +
    (method === 'POST' ? 'Content-Type: application/json\r\nContent-Length: 2\r\n' : '') +
    `Connection: close\r\n\r\n${method === 'POST' ? '{}' : ''}`;

  const ambiguous: [string, string[]][] = [
    ['two Authorization headers, the good one first', [`Bearer ${TOKEN}`, `Bearer ${other}`]],
    ['two Authorization headers, the good one second', [`Bearer ${other}`, `Bearer ${TOKEN}`]],
    ['the same Authorization header twice', [`Bearer ${TOKEN}`, `Bearer ${TOKEN}`]],
    ['an empty Authorization header and a good one', ['', `Bearer ${TOKEN}`]],
    ['two tokens joined by a comma', [`Bearer ${TOKEN}, Bearer ${other}`]],
    ['a token and a trailing comma', [`Bearer ${TOKEN},`]],
    ['two Bearer values without a comma', [`Bearer ${TOKEN} Bearer ${other}`]],
  ];
  for (const [what, authorization] of ambiguous) {
    it(`${what}: 400 INVALID_REQUEST on every route, the endpoint not called`, async () => {
      const before = gw.fake?.calls.length ?? 0;
      for (const [method, path] of [
        ['GET', '/v1/status'],
        ['GET', '/v1/rooms'],
        ['POST', '/v1/rooms/!r:x/join'],
        ['GET', '/v1/events'],
        ['GET', '/v1/rooms/!r:x/events/$e/attachment'],
        ['GET', '/v1/openapi.json'],
        ['GET', '/v1/nothing'],
        ['DELETE', '/v1/status'],
      ] as const) {
        const res = await raw(gw.socketPath, request(path, authorization, method));
        expectApiError(res, 400, 'INVALID_REQUEST');
        expect(JSON.parse(res.body)).toEqual({
          error: {
            code: 'INVALID_REQUEST',
            message: 'Give one Authorization header with one bearer token.',
          },
        });
        expect(res.body).not.toContain(TOKEN);
      }
      expect(gw.fake?.calls.length).toBe(before);
    });
  }

  it('one good Authorization header still works, and a token merely containing "bearer" too', async () => {
    const ok = await raw(gw.socketPath, request('/v1/status', [`Bearer ${TOKEN}`]));
    expect(ok.status).toBe(200);
    const odd = await raw(gw.socketPath, request('/v1/status', ['Bearer abc-bearer-def']));
    expectApiError(odd, 401, 'UNAUTHENTICATED'); // unknown to the fake, but forwarded
    expect(gw.fake?.calls.at(-1)).toEqual({
      method: 'status',
      params: { auth: { token: 'abc-bearer-def' } },
    });
  });

  it('inject() with an array of Authorization values is refused the same way', async () => {
    fake = fakeEndpoint();
    const app = buildGateway({ endpoint: fake.client });
    const res = await app.inject({
      url: '/v1/status',
      headers: { authorization: [`Bearer ${TOKEN}`, `Bearer ${TOKEN}`] as unknown as string },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json<{ error: { code: string } }>().error.code).toBe('INVALID_REQUEST');
    expect(fake.calls).toEqual([]);
    await app.close();
  });
});
