import type { FastifyInstance } from 'fastify';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_BODY_CHARS, MAX_INVITES, MAX_PAGE } from '../../endpoint/contract.ts';
import { buildGateway } from '../../endpoint/untrusted/gateway/index.ts';
import {
  EXCLUDED,
  FAILED,
  type FakeEndpoint,
  ROOM,
  TOKEN,
  bearer,
  fakeEndpoint,
} from './gateway-helpers.ts';

let fake: FakeEndpoint;
let app: FastifyInstance;
beforeEach(() => {
  fake = fakeEndpoint();
  app = buildGateway({ endpoint: fake.client });
});
afterEach(async () => {
  await app.close();
  fake.close();
});

const auth = { token: TOKEN };
const room = encodeURIComponent(ROOM);

function errorOf(res: { json: () => unknown }) {
  return (res.json() as { error: { code: string; message: string } }).error;
}

describe('gateway routes forward one call each, with the token as presented', () => {
  it('GET /v1/status → status', async () => {
    const res = await app.inject({ url: '/v1/status', headers: bearer() });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ userId: '@bot:example.org', deviceId: 'DEVICE' });
    expect(fake.calls).toEqual([{ method: 'status', params: { auth } }]);
  });

  it('GET /v1/rooms → rooms', async () => {
    const res = await app.inject({ url: '/v1/rooms', headers: bearer() });
    expect(res.statusCode).toBe(200);
    expect(res.json<{ rooms: unknown[] }>().rooms).toHaveLength(1);
    expect(fake.calls).toEqual([{ method: 'rooms', params: { auth } }]);
  });

  it('POST /v1/rooms → createRoom, 201; invite defaults to []', async () => {
    let res = await app.inject({
      method: 'POST',
      url: '/v1/rooms',
      headers: bearer(),
      payload: {},
    });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toEqual({ roomId: '!new:example.org' });
    res = await app.inject({
      method: 'POST',
      url: '/v1/rooms',
      headers: bearer(),
      payload: { invite: ['@a:example.org'], isDirect: true, name: 'Team' },
    });
    expect(res.statusCode).toBe(201);
    expect(fake.calls).toEqual([
      { method: 'createRoom', params: { auth, invite: [] } },
      {
        method: 'createRoom',
        params: { auth, invite: ['@a:example.org'], isDirect: true, name: 'Team' },
      },
    ]);
  });

  it('GET /v1/rooms/:roomId/timeline → timeline (limit default 50)', async () => {
    let res = await app.inject({ url: `/v1/rooms/${room}/timeline`, headers: bearer() });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ next: 'tok1' });
    res = await app.inject({
      url: `/v1/rooms/${ROOM}/timeline?limit=${MAX_PAGE}&from=tok1`,
      headers: bearer(),
    });
    expect(res.statusCode).toBe(200);
    expect(fake.calls).toEqual([
      { method: 'timeline', params: { auth, roomId: ROOM, limit: 50 } },
      { method: 'timeline', params: { auth, roomId: ROOM, limit: MAX_PAGE, from: 'tok1' } },
    ]);
  });

  it('POST /v1/rooms/:roomId/messages → send, 202 {txnId, excluded}', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: bearer(),
      payload: { body: 'hello', replyTo: '$e1' },
    });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ txnId: 'txn1', excluded: EXCLUDED });
    expect(fake.calls).toEqual([
      { method: 'send', params: { auth, roomId: ROOM, body: 'hello', replyTo: '$e1' } },
    ]);
  });

  it('POST /v1/rooms/:roomId/messages with edit and thread → send with both', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: bearer(),
      payload: { body: 'fixed', edit: '$e1', thread: '$root' },
    });
    expect(res.statusCode).toBe(202);
    expect(fake.calls).toEqual([
      {
        method: 'send',
        params: { auth, roomId: ROOM, body: 'fixed', edit: '$e1', thread: '$root' },
      },
    ]);
  });

  it('POST /v1/rooms/:roomId/reactions → react, 202 {txnId, excluded}', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/reactions`,
      headers: bearer(),
      payload: { eventId: '$e1', key: '👍' },
    });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ txnId: 'txn-react', excluded: [] });
    expect(fake.calls).toEqual([
      { method: 'react', params: { auth, roomId: ROOM, eventId: '$e1', key: '👍' } },
    ]);
  });

  it('POST /v1/rooms/:roomId/events/:eventId/redact → redact, with or without a reason', async () => {
    const url = `/v1/rooms/${room}/events/${encodeURIComponent('$e1')}/redact`;
    let res = await app.inject({ method: 'POST', url, headers: bearer() });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ txnId: 'txn-redact' });
    res = await app.inject({ method: 'POST', url, headers: bearer(), payload: { reason: 'spam' } });
    expect(res.statusCode).toBe(202);
    expect(fake.calls).toEqual([
      { method: 'redact', params: { auth, roomId: ROOM, eventId: '$e1' } },
      { method: 'redact', params: { auth, roomId: ROOM, eventId: '$e1', reason: 'spam' } },
    ]);
  });

  for (const rpc of ['join', 'decline'] as const) {
    it(`POST /v1/rooms/:roomId/${rpc} → ${rpc}, 200 {}, with no body or {}`, async () => {
      for (const extra of [{}, { payload: {} }]) {
        const res = await app.inject({
          method: 'POST',
          url: `/v1/rooms/${room}/${rpc}`,
          headers: bearer(),
          ...extra,
        });
        expect(res.statusCode).toBe(200);
        expect(res.json()).toEqual({});
      }
      expect(fake.calls).toEqual([
        { method: rpc, params: { auth, roomId: ROOM } },
        { method: rpc, params: { auth, roomId: ROOM } },
      ]);
    });
  }

  it('GET /v1/outbox/failed → failedSends', async () => {
    const res = await app.inject({ url: '/v1/outbox/failed', headers: bearer() });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ failed: [FAILED] });
    expect(fake.calls).toEqual([{ method: 'failedSends', params: { auth } }]);
  });

  it('POST /v1/outbox/failed/:txnId/retry|discard → retrySend 202, discardSend 200', async () => {
    const base = `/v1/outbox/failed/${FAILED.txnId}`;
    const retry = await app.inject({ method: 'POST', url: `${base}/retry`, headers: bearer() });
    expect(retry.statusCode).toBe(202);
    expect(retry.json()).toEqual({ txnId: FAILED.txnId });
    const discard = await app.inject({
      method: 'POST',
      url: `${base}/discard`,
      headers: bearer(),
      payload: {},
    });
    expect(discard.statusCode).toBe(200);
    expect(discard.json()).toEqual({});
    expect(fake.calls).toEqual([
      { method: 'retrySend', params: { auth, txnId: FAILED.txnId } },
      { method: 'discardSend', params: { auth, txnId: FAILED.txnId } },
    ]);
  });

  it('a message of MAX_BODY_CHARS three-byte characters fits the body limit', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: bearer(),
      payload: { body: '€'.repeat(MAX_BODY_CHARS) },
    });
    expect(res.statusCode).toBe(202);
  });

  it('POST /v1/rooms/:roomId/invite → invite', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/invite`,
      headers: bearer(),
      payload: { userId: '@b:example.org' },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({});
    expect(fake.calls).toEqual([
      { method: 'invite', params: { auth, roomId: ROOM, userId: '@b:example.org' } },
    ]);
  });

  it('POST /v1/rooms/:roomId/leave → leave, with no body, an empty body or {}', async () => {
    for (const extra of [
      {},
      { headers: { ...bearer(), 'content-type': 'application/json' }, payload: '' },
      { payload: {} },
    ]) {
      const res = await app.inject({
        method: 'POST',
        url: `/v1/rooms/${room}/leave`,
        headers: bearer(),
        ...extra,
      });
      expect(res.statusCode).toBe(200);
    }
    expect(fake.calls.map((c) => c.method)).toEqual(['leave', 'leave', 'leave']);
    expect(fake.calls[0]?.params).toEqual({ auth, roomId: ROOM });
  });

  it('GET /v1/contacts and /v1/contacts/:userId → contacts, contact', async () => {
    expect((await app.inject({ url: '/v1/contacts', headers: bearer() })).statusCode).toBe(200);
    const res = await app.inject({
      url: `/v1/contacts/${encodeURIComponent('@a:example.org')}`,
      headers: bearer(),
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({
      userId: '@a:example.org',
      rooms: [ROOM],
      identity: { state: 'none', wasVerified: false },
      devices: [],
    });
    expect(fake.calls).toEqual([
      { method: 'contacts', params: { auth } },
      { method: 'contact', params: { auth, userId: '@a:example.org' } },
    ]);
  });

  it('every answer is JSON, uncacheable and not sniffable', async () => {
    for (const url of ['/v1/status', '/nowhere', '/v1/openapi.json']) {
      const res = await app.inject({ url, headers: bearer() });
      expect(res.headers['content-type']).toMatch(/^application\/json; charset=utf-8$/);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.headers['access-control-allow-origin']).toBeUndefined();
    }
  });
});

describe('gateway: bad input is a 4xx naming the field, never echoing the value', () => {
  const SECRET = 'SeCrEt-VaLuE';
  const cases: {
    what: string;
    method?: 'GET' | 'POST';
    url: string;
    payload?: unknown;
    field: string;
  }[] = [
    { what: 'a bad room id', url: `/v1/rooms/${SECRET}/timeline`, field: 'path.roomId' },
    { what: 'a bad user id', url: `/v1/contacts/${SECRET}`, field: 'path.userId' },
    { what: 'limit 0', url: `/v1/rooms/${room}/timeline?limit=0`, field: 'query.limit' },
    {
      what: 'limit too big',
      url: `/v1/rooms/${room}/timeline?limit=${MAX_PAGE + 1}`,
      field: 'query.limit',
    },
    {
      what: 'limit not a number',
      url: `/v1/rooms/${room}/timeline?limit=${SECRET}`,
      field: 'query.limit',
    },
    {
      what: 'a repeated limit',
      url: `/v1/rooms/${room}/timeline?limit=1&limit=2`,
      field: 'query.limit',
    },
    {
      what: 'a bad from token',
      url: `/v1/rooms/${room}/timeline?from=${SECRET}%20x`,
      field: 'query.from',
    },
    { what: 'an unknown query field', url: `/v1/rooms?x=${SECRET}`, field: 'query' },
    {
      what: 'an empty message',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: { body: '' },
      field: 'body.body',
    },
    {
      what: 'a message too long',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: { body: SECRET.repeat(Math.ceil((MAX_BODY_CHARS + 1) / SECRET.length)) },
      field: 'body.body',
    },
    {
      what: 'a message that is not a string',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: { body: { text: SECRET } },
      field: 'body.body',
    },
    {
      what: 'a bad replyTo',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: { body: 'x', replyTo: SECRET },
      field: 'body.replyTo',
    },
    {
      what: 'no body where one is needed',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      field: 'body',
    },
    {
      what: 'an array body',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: [SECRET],
      field: 'body',
    },
    {
      what: 'an unknown body field with a safe name',
      method: 'POST',
      url: `/v1/rooms/${room}/invite`,
      payload: { userId: '@a:b.c', role: SECRET },
      field: 'body: unexpected field "role"',
    },
    {
      what: 'an unknown body field whose name is the secret',
      method: 'POST',
      url: `/v1/rooms/${room}/invite`,
      payload: { userId: '@a:b.c', [`${SECRET}!`]: 1 },
      field: 'body: unexpected fields',
    },
    {
      what: 'too many invites',
      method: 'POST',
      url: '/v1/rooms',
      payload: { invite: Array.from({ length: MAX_INVITES + 1 }, (_, i) => `@u${i}:x.y`) },
      field: 'body.invite',
    },
    {
      what: 'a bad invitee',
      method: 'POST',
      url: '/v1/rooms',
      payload: { invite: ['@a:b.c', SECRET] },
      field: 'body.invite[1]',
    },
    {
      what: 'a room name too long',
      method: 'POST',
      url: '/v1/rooms',
      payload: { name: SECRET.repeat(30) },
      field: 'body.name',
    },
    {
      what: 'a bad edit target',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: { body: 'x', edit: SECRET },
      field: 'body.edit',
    },
    {
      what: 'a bad thread root',
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      payload: { body: 'x', thread: SECRET },
      field: 'body.thread',
    },
    {
      what: 'a reaction key too long',
      method: 'POST',
      url: `/v1/rooms/${room}/reactions`,
      payload: { eventId: '$e1', key: SECRET.repeat(10) },
      field: 'body.key',
    },
    {
      what: 'a reaction without an event',
      method: 'POST',
      url: `/v1/rooms/${room}/reactions`,
      payload: { key: 'x' },
      field: 'body.eventId',
    },
    {
      what: 'a bad event id to redact',
      method: 'POST',
      url: `/v1/rooms/${room}/events/${SECRET}/redact`,
      field: 'path.eventId',
    },
    {
      what: 'an empty redaction reason',
      method: 'POST',
      url: `/v1/rooms/${room}/events/%24e1/redact`,
      payload: { reason: '' },
      field: 'body.reason',
    },
    {
      what: 'a made-up transaction id to retry',
      method: 'POST',
      url: `/v1/outbox/failed/${SECRET}/retry`,
      field: 'path.txnId',
    },
    {
      what: 'a body on join',
      method: 'POST',
      url: `/v1/rooms/${room}/join`,
      payload: { reason: SECRET },
      field: 'body: unexpected field "reason"',
    },
    {
      what: 'a body on leave',
      method: 'POST',
      url: `/v1/rooms/${room}/leave`,
      payload: { reason: SECRET },
      field: 'body: unexpected field "reason"',
    },
  ];
  for (const c of cases) {
    it(`${c.what}: 400 INVALID_REQUEST naming ${c.field}`, async () => {
      const res = await app.inject({
        method: c.method ?? 'GET',
        url: c.url,
        headers: bearer(),
        ...(c.payload === undefined ? {} : { payload: c.payload as object }),
      });
      expect(res.statusCode).toBe(400);
      const error = errorOf(res);
      expect(error.code).toBe('INVALID_REQUEST');
      expect(error.message.startsWith(c.field)).toBe(true);
      expect(res.body.toLowerCase()).not.toContain(SECRET.toLowerCase());
      expect(fake.calls).toEqual([]);
    });
  }

  it('malformed JSON: 400 INVALID_JSON', async () => {
    for (const payload of ['{', '{"body": "x",}', 'nul', `"${SECRET}`]) {
      const res = await app.inject({
        method: 'POST',
        url: `/v1/rooms/${room}/messages`,
        headers: { ...bearer(), 'content-type': 'application/json' },
        payload,
      });
      expect(res.statusCode).toBe(400);
      expect(errorOf(res).code).toBe('INVALID_JSON');
      expect(res.body).not.toContain(SECRET);
    }
  });

  it('prototype keys in a body are refused, not merged', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: { ...bearer(), 'content-type': 'application/json' },
      payload: '{"body":"x","__proto__":{"admin":true}}',
    });
    expect(res.statusCode).toBe(400);
    expect(fake.calls).toEqual([]);
  });

  it('a body over the limit: 413 BODY_TOO_LARGE', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: bearer(),
      payload: { body: 'x'.repeat(200 * 1024) },
    });
    expect(res.statusCode).toBe(413);
    expect(errorOf(res).code).toBe('BODY_TOO_LARGE');
  });

  it('the body limit is configurable', async () => {
    const small = buildGateway({ endpoint: fake.client, limits: { bodyLimitBytes: 100 } });
    const res = await small.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: bearer(),
      payload: { body: 'x'.repeat(200) },
    });
    expect(res.statusCode).toBe(413);
    await small.close();
  });

  it('another content type (or a non-UTF-8 charset): 415', async () => {
    for (const type of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/json; charset=latin1',
    ]) {
      const res = await app.inject({
        method: 'POST',
        url: `/v1/rooms/${room}/messages`,
        headers: { ...bearer(), 'content-type': type },
        payload: 'body=x',
      });
      expect(res.statusCode).toBe(415);
      expect(errorOf(res).code).toBe('UNSUPPORTED_MEDIA_TYPE');
    }
    const ok = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${room}/messages`,
      headers: { ...bearer(), 'content-type': 'application/json; charset=UTF-8' },
      payload: '{"body":"x"}',
    });
    expect(ok.statusCode).toBe(202);
  });

  it('an unknown route: 404 NOT_FOUND', async () => {
    for (const url of ['/', '/v2/status', '/v1/rooms/x/y/z', '/v1/status/', '/v1/keys']) {
      const res = await app.inject({ url, headers: bearer() });
      expect(res.statusCode).toBe(404);
      expect(errorOf(res).code).toBe('NOT_FOUND');
    }
  });

  it('a known route with the wrong method: 405 with Allow', async () => {
    const res = await app.inject({ method: 'DELETE', url: `/v1/rooms/${room}/timeline` });
    expect(res.statusCode).toBe(405);
    expect(res.headers.allow).toBe('GET');
    expect(errorOf(res).code).toBe('METHOD_NOT_ALLOWED');
    const rooms = await app.inject({ method: 'PUT', url: '/v1/rooms' });
    expect(rooms.statusCode).toBe(405);
    expect(rooms.headers.allow).toBe('GET, POST');
    for (const method of ['HEAD', 'OPTIONS', 'PATCH', 'TRACE'] as const) {
      expect((await app.inject({ method, url: '/v1/status' })).statusCode).toBe(405);
    }
    // Whatever the body: a wrong method is 405, never 415 for a body nobody would read.
    for (const type of ['application/octet-stream', 'text/plain', 'image']) {
      const put = await app.inject({
        method: 'PUT',
        url: `/v1/rooms/${room}/attachments?name=a.png`,
        headers: { ...bearer(), 'content-type': type },
        payload: 'bytes',
      });
      expect(put.statusCode, type).toBe(405);
      expect(put.headers.allow).toBe('POST');
    }
    expect(fake.calls).toEqual([]);
  });

  it('a malformed URL encoding: 400', async () => {
    const res = await app.inject({ url: '/v1/rooms/%E0%A4%A/timeline', headers: bearer() });
    expect(res.statusCode).toBe(400);
    expect(errorOf(res).code).toBe('INVALID_REQUEST');
  });

  it('a 255-character room id, percent-encoded, is still routed', async () => {
    const long = `!${'%'.repeat(200)}:${'a'.repeat(52)}`;
    expect(long).toHaveLength(254);
    const res = await app.inject({
      url: `/v1/rooms/${encodeURIComponent(long)}/timeline`,
      headers: bearer(),
    });
    expect(res.statusCode).toBe(200);
    expect(fake.calls[0]?.params.roomId).toBe(long);
  });
});
