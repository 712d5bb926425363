import { request as httpRequest } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { ATTACHMENT_CHUNK_BYTES, MAX_ATTACHMENT_BYTES } from '../../endpoint/contract.ts';
import { buildGateway, listenGateway } from '../../endpoint/untrusted/gateway/index.ts';
import { contentDisposition } from '../../endpoint/untrusted/gateway/routes/attachments.ts';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import { waitUntil } from '../fixtures/process.ts';
import {
  DOWNLOAD_BYTES,
  DOWNLOAD_ID,
  EXCLUDED,
  type FakeEndpoint,
  ROOM,
  TOKEN,
  UPLOAD_ID,
  bearer,
  defaultHandlers,
  fakeEndpoint,
} from './gateway-helpers.ts';

// Attachments through the gateway: the upload streams the body into uploadChunk calls of at
// most one chunk each, the download streams downloadChunk answers into the response, and the
// limits and headers that make both safe.

const auth = { token: TOKEN };
const room = encodeURIComponent(ROOM);
const uploadUrl = (query = 'name=photo.png') => `/v1/rooms/${room}/attachments?${query}`;
const downloadUrl = `/v1/rooms/${room}/events/${encodeURIComponent('$file')}/attachment`;

let fake: FakeEndpoint | undefined;
let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  fake?.close();
  app = undefined;
  fake = undefined;
});

function start(overrides: Parameters<typeof fakeEndpoint>[0] = {}) {
  const f = fakeEndpoint(overrides);
  fake = f;
  const a = buildGateway({ endpoint: f.client });
  app = a;
  return { f, a };
}

async function listening(a: FastifyInstance): Promise<number> {
  const l = await listenGateway(a, { tcp: { host: '127.0.0.1', port: 0 } });
  if (!l.tcp) throw new Error('not on TCP');
  return l.tcp.port;
}

function errorOf(res: { json: () => unknown }) {
  return (res.json() as { error: { code: string; message: string } }).error;
}

const codeOf = (body: Buffer) =>
  (JSON.parse(body.toString()) as { error: { code: string } }).error.code;
const bytes = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31) & 0xff));
const chunkCalls = (f: FakeEndpoint) =>
  f.calls
    .filter((c) => c.method === 'uploadChunk')
    .map((c) => ({
      offset: c.params.offset as number,
      length: Buffer.from(c.params.data as string, 'base64').length,
    }));

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** The connection ended before the whole body (Content-Length) arrived. */
  aborted: boolean;
}

/** A request over real HTTP, where the body can be written (or not) as the test likes. */
function raw(
  port: number,
  options: {
    method?: string;
    path: string;
    headers?: Record<string, string>;
    write?: (req: ReturnType<typeof httpRequest>) => void;
  },
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      method: options.method ?? 'POST',
      path: options.path,
      headers: { ...bearer(), ...options.headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let aborted = false;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('aborted', () => (aborted = true));
      res.on('error', () => (aborted = true));
      res.on('close', () => {
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          aborted: aborted || !res.complete,
        });
      });
    });
    if (options.write) options.write(req);
    else req.end();
  });
}

describe('POST /v1/rooms/:roomId/attachments (upload)', () => {
  it('600 KiB: uploadStart, three uploadChunk calls in order, uploadFinish; 202 {txnId, excluded}', async () => {
    const { f, a } = start();
    const body = bytes(600 * 1024);
    const res = await a.inject({
      method: 'POST',
      url: uploadUrl('name=photo.png&caption=Look'),
      headers: { ...bearer(), 'content-type': 'image/png' },
      payload: body,
    });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ txnId: 'txn-upload', excluded: EXCLUDED });
    expect(f.calls[0]).toEqual({
      method: 'uploadStart',
      params: {
        auth,
        roomId: ROOM,
        name: 'photo.png',
        contentType: 'image/png',
        size: body.length,
        caption: 'Look',
      },
    });
    expect(chunkCalls(f)).toEqual([
      { offset: 0, length: ATTACHMENT_CHUNK_BYTES },
      { offset: ATTACHMENT_CHUNK_BYTES, length: ATTACHMENT_CHUNK_BYTES },
      { offset: 2 * ATTACHMENT_CHUNK_BYTES, length: body.length - 2 * ATTACHMENT_CHUNK_BYTES },
    ]);
    const sent = Buffer.concat(
      f.calls
        .filter((c) => c.method === 'uploadChunk')
        .map((c) => Buffer.from(c.params.data as string, 'base64')),
    );
    expect(sent.equals(body)).toBe(true);
    expect(f.calls.map((c) => c.method)).toEqual([
      'uploadStart',
      'uploadChunk',
      'uploadChunk',
      'uploadChunk',
      'uploadFinish',
    ]);
    expect(f.calls.at(-1)?.params).toEqual({ auth, upload: UPLOAD_ID });
  });

  it('streams: the first chunk reaches the endpoint before the rest of the body is sent', async () => {
    const { f, a } = start();
    const port = await listening(a);
    const body = bytes(3 * ATTACHMENT_CHUNK_BYTES);
    const res = await raw(port, {
      path: uploadUrl(),
      headers: { 'content-type': 'application/pdf', 'content-length': String(body.length) },
      write: (req) => {
        // One chunk and a bit, then wait: a gateway that buffered the body would never
        // call uploadChunk here, and this test would time out.
        req.write(body.subarray(0, ATTACHMENT_CHUNK_BYTES + 10));
        void waitUntil('the first chunk at the endpoint', () => chunkCalls(f).length === 1, {
          timeoutMs: 5_000,
          intervalMs: 5,
        }).then(
          () => {
            // The one chunk is out; the 10 bytes after it are all the gateway holds.
            expect(chunkCalls(f)).toEqual([{ offset: 0, length: ATTACHMENT_CHUNK_BYTES }]);
            req.end(body.subarray(ATTACHMENT_CHUNK_BYTES + 10));
          },
          (e: unknown) => req.destroy(e as Error),
        );
      },
    });
    expect(res.status).toBe(202);
    expect(chunkCalls(f).map((c) => c.offset)).toEqual([
      0,
      ATTACHMENT_CHUNK_BYTES,
      2 * ATTACHMENT_CHUNK_BYTES,
    ]);
  });

  it("the endpoint's chunk size is used, but never more than the contract's", async () => {
    const handlers = defaultHandlers();
    const small = start({
      uploadStart: async (p, ctx) => ({
        ...(await handlers.uploadStart(p, ctx)),
        chunkBytes: 1000,
      }),
      uploadChunk: handlers.uploadChunk,
    });
    let res = await small.a.inject({
      method: 'POST',
      url: uploadUrl(),
      headers: { ...bearer(), 'content-type': 'image/png' },
      payload: bytes(2500),
    });
    expect(res.statusCode).toBe(202);
    expect(chunkCalls(small.f)).toEqual([
      { offset: 0, length: 1000 },
      { offset: 1000, length: 1000 },
      { offset: 2000, length: 500 },
    ]);
    await small.a.close();
    small.f.close();

    const big = defaultHandlers();
    const large = start({
      uploadStart: async (p, ctx) => ({
        ...(await big.uploadStart(p, ctx)),
        chunkBytes: 4 * ATTACHMENT_CHUNK_BYTES,
      }),
      uploadChunk: big.uploadChunk,
    });
    res = await large.a.inject({
      method: 'POST',
      url: uploadUrl(),
      headers: { ...bearer(), 'content-type': 'image/png' },
      payload: bytes(ATTACHMENT_CHUNK_BYTES + 1),
    });
    expect(res.statusCode).toBe(202);
    expect(chunkCalls(large.f).map((c) => c.length)).toEqual([ATTACHMENT_CHUNK_BYTES, 1]);
  });

  it('without Content-Length (a chunked body): 411 LENGTH_REQUIRED, the endpoint not asked', async () => {
    const { f, a } = start();
    const port = await listening(a);
    const res = await raw(port, {
      path: uploadUrl(),
      headers: { 'content-type': 'image/png', 'transfer-encoding': 'chunked' },
      write: (req) => {
        req.write(bytes(1000));
        req.end();
      },
    });
    expect(res.status).toBe(411);
    expect(codeOf(res.body)).toBe('LENGTH_REQUIRED');
    expect(f.calls).toEqual([]);
    // And with no body at all.
    const none = await a.inject({ method: 'POST', url: uploadUrl(), headers: bearer() });
    expect(none.statusCode).toBe(400); // no Content-Type: named first
    const typed = await a.inject({
      method: 'POST',
      url: uploadUrl(),
      headers: { ...bearer(), 'content-type': 'image/png' },
    });
    expect(typed.statusCode).toBe(411);
    expect(f.calls).toEqual([]);
  });

  it('too large: 413 ATTACHMENT_TOO_LARGE at once, before the body is sent, and the connection closes', async () => {
    const { f, a } = start();
    const port = await listening(a);
    const res = await raw(port, {
      path: uploadUrl(),
      headers: {
        'content-type': 'video/mp4',
        'content-length': String(MAX_ATTACHMENT_BYTES + 1),
      },
      // Not a byte of the body: the answer must come without it.
      write: (req) => {
        req.flushHeaders();
      },
    });
    expect(res.status).toBe(413);
    expect(res.headers.connection).toBe('close');
    expect(codeOf(res.body)).toBe('ATTACHMENT_TOO_LARGE');
    expect(f.calls).toEqual([]);
  });

  it("over the endpoint's own (homeserver) limit: 413, no chunk sent", async () => {
    const handlers = defaultHandlers();
    const { f, a } = start({
      uploadStart: async (p, ctx) => ({ ...(await handlers.uploadStart(p, ctx)), maxBytes: 100 }),
    });
    const res = await a.inject({
      method: 'POST',
      url: uploadUrl(),
      headers: { ...bearer(), 'content-type': 'image/png' },
      payload: bytes(101),
    });
    expect(res.statusCode).toBe(413);
    expect(errorOf(res).code).toBe('ATTACHMENT_TOO_LARGE');
    expect(f.calls.map((c) => c.method)).toEqual(['uploadStart']);
  });

  it('a bad or missing Content-Type: 400 naming the header, the endpoint not asked', async () => {
    const { f, a } = start();
    for (const type of [
      'image',
      'image/png/x',
      'text/ plain',
      '*/*',
      'ima ge/png',
      'x'.repeat(200),
    ]) {
      const res = await a.inject({
        method: 'POST',
        url: uploadUrl(),
        headers: { ...bearer(), 'content-type': type },
        payload: bytes(10),
      });
      expect(res.statusCode, type).toBe(400);
      expect(errorOf(res).code).toBe('INVALID_REQUEST');
      expect(errorOf(res).message.startsWith('header.Content-Type')).toBe(true);
    }
    const missing = await a.inject({
      method: 'POST',
      url: uploadUrl(),
      headers: { ...bearer(), 'content-length': '10' },
      payload: bytes(10),
    });
    expect(missing.statusCode).toBe(400);
    expect(f.calls).toEqual([]);
  });

  it('media type parameters are dropped and the type lowercased, as the contract spells it', async () => {
    const { f, a } = start();
    const res = await a.inject({
      method: 'POST',
      url: uploadUrl('name=notes.txt'),
      headers: { ...bearer(), 'content-type': 'Text/Plain; charset=UTF-8' },
      payload: 'hello',
    });
    expect(res.statusCode).toBe(202);
    expect(f.calls[0]?.params.contentType).toBe('text/plain');
    // JSON is a file like any other here: not parsed, not refused.
    const json = await a.inject({
      method: 'POST',
      url: uploadUrl('name=data.json'),
      headers: { ...bearer(), 'content-type': 'application/json' },
      payload: '{"not": "parsed"',
    });
    expect(json.statusCode).toBe(202);
  });

  it('bad query: no name, a path in the name, an unknown parameter, an empty file: 400', async () => {
    const { f, a } = start();
    for (const [query, field] of [
      ['', 'query.name'],
      ['name=a%2Fb.png', 'query.name'],
      ['name=a%0Ab.png', 'query.name'],
      ['name=a.png&caption=', 'query.caption'],
      ['name=a.png&x=1', 'query: unexpected field "x"'],
      ['name=a.png&name=b.png', 'query.name'],
    ] as const) {
      const res = await a.inject({
        method: 'POST',
        url: uploadUrl(query),
        headers: { ...bearer(), 'content-type': 'image/png' },
        payload: bytes(10),
      });
      expect(res.statusCode, query).toBe(400);
      expect(errorOf(res).message.startsWith(field), errorOf(res).message).toBe(true);
    }
    const empty = await a.inject({
      method: 'POST',
      url: uploadUrl(),
      headers: { ...bearer(), 'content-type': 'image/png', 'content-length': '0' },
    });
    expect(empty.statusCode).toBe(400);
    expect(f.calls).toEqual([]);
  });

  it('a client that leaves half-way: no uploadFinish, the upload is cancelled, the gateway carries on', async () => {
    const { f, a } = start();
    const port = await listening(a);
    const body = bytes(600 * 1024);
    await raw(port, {
      path: uploadUrl(),
      headers: { 'content-type': 'image/png', 'content-length': String(body.length) },
      write: (req) => {
        req.write(body.subarray(0, ATTACHMENT_CHUNK_BYTES + 100));
        void waitUntil('a chunk', () => chunkCalls(f).length === 1, {
          timeoutMs: 5_000,
          intervalMs: 5,
        }).finally(() => req.destroy());
      },
    }).catch(() => undefined);
    await waitUntil('the cancel', () => f.calls.some((c) => c.method === 'transferCancel'), {
      timeoutMs: 5_000,
      intervalMs: 5,
    });
    expect(f.calls.map((c) => c.method)).toEqual(['uploadStart', 'uploadChunk', 'transferCancel']);
    const after = await a.inject({ url: '/v1/status', headers: bearer() });
    expect(after.statusCode).toBe(200);
  });

  it('endpoint refusals keep their status: 403, 413, 415, 409', async () => {
    for (const [code, status, method] of [
      ['FORBIDDEN_ROOM', 403, 'uploadStart'],
      ['ATTACHMENT_TOO_LARGE', 413, 'uploadStart'],
      ['CONTENT_TYPE_MISMATCH', 415, 'uploadFinish'],
      ['UPLOAD_INCOMPLETE', 409, 'uploadChunk'],
      ['ROOM_NOT_ENCRYPTED', 409, 'uploadStart'],
    ] as const) {
      const { a, f } = start({ [method]: () => Promise.reject(new RpcError(code, 'No.')) });
      const res = await a.inject({
        method: 'POST',
        url: uploadUrl(),
        headers: { ...bearer(), 'content-type': 'image/png' },
        payload: bytes(10),
      });
      expect(res.statusCode, code).toBe(status);
      expect(errorOf(res).code).toBe(code);
      await a.close();
      f.close();
      app = undefined;
      fake = undefined;
    }
  });
});

describe('GET /v1/rooms/:roomId/events/:eventId/attachment (download)', () => {
  it('streams the chunks into the body, with safe headers', async () => {
    const { f, a } = start();
    const res = await a.inject({ url: downloadUrl, headers: bearer() });
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(DOWNLOAD_BYTES)).toBe(true);
    expect(res.headers['content-type']).toBe('application/pdf');
    expect(res.headers['content-length']).toBe(String(DOWNLOAD_BYTES.length));
    expect(res.headers['content-disposition']).toBe(
      `attachment; filename="report.pdf"; filename*=UTF-8''report.pdf`,
    );
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['content-security-policy']).toBe("sandbox; default-src 'none'");
    expect(res.headers['cache-control']).toBe('no-store');
    expect(f.calls).toEqual([
      { method: 'downloadStart', params: { auth, roomId: ROOM, eventId: '$file' } },
      { method: 'downloadChunk', params: { auth, download: DOWNLOAD_ID, offset: 0 } },
      {
        method: 'downloadChunk',
        params: { auth, download: DOWNLOAD_ID, offset: ATTACHMENT_CHUNK_BYTES },
      },
    ]);
  });

  it('a hostile file name stays one safe header: no injected header, no CR/LF', async () => {
    const evil = 'a"\r\nSet-Cookie: x.html';
    const handlers = defaultHandlers();
    const { a } = start({
      downloadStart: async (p, ctx) => {
        const s = await handlers.downloadStart(p, ctx);
        return { ...s, attachment: { ...s.attachment, name: evil } };
      },
    });
    const port = await listening(a);
    const res = await raw(port, { method: 'GET', path: downloadUrl });
    expect(res.status).toBe(200);
    expect(res.headers['set-cookie']).toBeUndefined();
    const disposition = res.headers['content-disposition'];
    expect(typeof disposition).toBe('string');
    expect(disposition).not.toMatch(/[\r\n]/);
    expect(disposition).toBe(
      `attachment; filename="a___Set-Cookie: x.html"; filename*=UTF-8''a%22__Set-Cookie%3A%20x.html`,
    );
    expect(res.body.equals(DOWNLOAD_BYTES)).toBe(true);
  });

  it('Content-Disposition: ASCII fallback and an RFC 5987 filename* that decodes to the name', () => {
    const cases: [string, string, string][] = [
      ['report.pdf', 'report.pdf', 'report.pdf'],
      ['Größe €.pdf', 'Gr__e _.pdf', 'Größe €.pdf'],
      ["it's (1)*.txt", "it's (1)*.txt", "it's (1)*.txt"],
      ['50%\\off;.txt', '50__off;.txt', '50%_off;.txt'],
      ['\u202egnp.exe', '_gnp.exe', '_gnp.exe'],
      ['..', 'attachment', 'attachment'],
      ['   ', 'attachment', 'attachment'],
      ['a\ud800b', 'a_b', 'a\ufffdb'],
    ];
    for (const [name, ascii, decoded] of cases) {
      const header = contentDisposition(name);
      const m =
        /^attachment; filename="([^"]*)"; filename\*=UTF-8''([A-Za-z0-9!#$&+\-.^_`|~%]*)$/.exec(
          header,
        );
      expect(m, header).not.toBeNull();
      expect(m?.[1]).toBe(ascii);
      expect(decodeURIComponent(m?.[2] ?? '')).toBe(decoded);
    }
  });

  it('refusals before the first byte are JSON errors: 404, 403, 502 ATTACHMENT_TAMPERED', async () => {
    for (const [code, status, method] of [
      ['NOT_FOUND', 404, 'downloadStart'],
      ['FORBIDDEN_ROOM', 403, 'downloadStart'],
      ['ATTACHMENT_TAMPERED', 502, 'downloadStart'],
      ['ATTACHMENT_INVALID', 502, 'downloadStart'],
      ['UPSTREAM_FAILED', 502, 'downloadChunk'],
    ] as const) {
      const { a, f } = start({ [method]: () => Promise.reject(new RpcError(code, 'No.')) });
      const res = await a.inject({ url: downloadUrl, headers: bearer() });
      expect(res.statusCode, code).toBe(status);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.headers['content-disposition']).toBeUndefined();
      expect(errorOf(res).code).toBe(code);
      await a.close();
      f.close();
      app = undefined;
      fake = undefined;
    }
  });

  it('a failure after the first chunk ends the connection short of Content-Length', async () => {
    let calls = 0;
    const handlers = defaultHandlers();
    const { a } = start({
      downloadChunk: async (p, ctx) => {
        if (++calls > 1) throw new RpcError('UPSTREAM_FAILED', 'gone');
        return handlers.downloadChunk(p, ctx);
      },
    });
    const port = await listening(a);
    const res = await raw(port, { method: 'GET', path: downloadUrl });
    expect(res.status).toBe(200);
    expect(res.aborted).toBe(true);
    expect(res.body.length).toBeLessThan(DOWNLOAD_BYTES.length);
  });

  it('an endpoint that sends more than it announced: the connection ends short', async () => {
    const handlers = defaultHandlers();
    const { a } = start({
      downloadStart: async (p, ctx) => ({
        ...(await handlers.downloadStart(p, ctx)),
        size: ATTACHMENT_CHUNK_BYTES + 5,
      }),
    });
    const port = await listening(a);
    const res = await raw(port, { method: 'GET', path: downloadUrl });
    expect(res.aborted).toBe(true);
    expect(res.body.length).toBeLessThanOrEqual(ATTACHMENT_CHUNK_BYTES + 5);
  });

  it('a bad event id: 400 naming path.eventId; a query: 400', async () => {
    const { f, a } = start();
    let res = await a.inject({
      url: `/v1/rooms/${room}/events/nope/attachment`,
      headers: bearer(),
    });
    expect(res.statusCode).toBe(400);
    expect(errorOf(res).message.startsWith('path.eventId')).toBe(true);
    res = await a.inject({ url: `${downloadUrl}?x=1`, headers: bearer() });
    expect(res.statusCode).toBe(400);
    expect(f.calls).toEqual([]);
  });
});
