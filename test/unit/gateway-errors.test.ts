import { afterEach, describe, expect, it } from 'vitest';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import { MAX_TOKEN_CHARS } from '../../endpoint/contract.ts';
import { buildGateway } from '../../endpoint/untrusted/gateway/index.ts';
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
