import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import {
  ATTACHMENT_CHUNK_BYTES,
  MAX_ATTACHMENT_BYTES,
  contentType,
  endpointContract,
  fileName,
} from '../../../contract.ts';
import { isRpcError } from '../../../../keyvault/common/rpc/index.ts';
import { GatewayError, internal, invalidRequest, toGatewayError } from '../errors.ts';
import { rawBodyPlugin } from '../plugins/raw-body.ts';
import { type GatewayContext, type RouteDoc, requireBearer, tokenOf } from '../route.ts';
import { parseInput, singleValuedQuery } from '../validate.ts';
import { eventPath } from './messages.ts';
import { roomPath } from './rooms.ts';

/**
 * Attachments, as bytes rather than JSON: an upload streams the request body into the endpoint
 * in chunks (uploadStart, uploadChunk..., uploadFinish), and a download streams the endpoint's
 * chunks (downloadStart, downloadChunk...) into the response. Neither ever holds more than one
 * chunk, so an 8 MiB file costs the gateway 256 KiB (and its base64), not 8 MiB.
 */

export const uploadQuery = z
  .object({
    /** The file's name as peers will see it. */
    name: fileName,
    /** A text shown with the file. */
    caption: endpointContract.uploadStart.params.shape.caption,
  })
  .strict();

export const uploadRoute: RouteDoc = {
  method: 'POST',
  url: '/v1/rooms/:roomId/attachments',
  operationId: 'uploadAttachment',
  summary:
    "Sends a file to a room, encrypted (the spec's encrypted attachment): the body is the file's bytes, Content-Type its media type, Content-Length its size. Answered once the message is durably queued.",
  description: [
    `At most ${MAX_ATTACHMENT_BYTES / (1024 * 1024)} MiB (or the homeserver's smaller upload limit): 413 ATTACHMENT_TOO_LARGE, before anything is read.`,
    'Content-Length is required (411 LENGTH_REQUIRED for a chunked body); a body that ends before it, or a client that leaves, abandons the upload.',
    'Media type parameters (`; charset=...`) are ignored; a malformed or missing Content-Type is 400.',
    '`excluded`: the members and devices that will not get the room key, as the endpoint knows them now.',
  ].join(' '),
  capability: 'messages.send',
  rpc: 'uploadStart, uploadChunk, uploadFinish',
  auth: true,
  params: roomPath,
  query: uploadQuery,
  binaryBody: true,
  status: 202,
  response: endpointContract.uploadFinish.result,
  contentType: 'application/json',
  errors: [404, 409, 507],
};

const dispositionHeader = z.string().regex(/^attachment; filename="[\x20-\x7e]*"; filename\*=/);
export const DOWNLOAD_CSP = "sandbox; default-src 'none'";

export const downloadRoute: RouteDoc = {
  method: 'GET',
  url: '/v1/rooms/:roomId/events/:eventId/attachment',
  operationId: 'downloadAttachment',
  summary:
    "An event's attachment, decrypted by the endpoint after checking it against the event's SHA-256 (a tampered file is 502 ATTACHMENT_TAMPERED, never served in part).",
  description:
    "Served as a download (Content-Disposition: attachment, with the sender's file name made safe), sandboxed and never sniffed. Content-Type is the endpoint's choice: the declared type only for images whose bytes match it. A connection that ends before Content-Length bytes means the transfer failed.",
  capability: 'messages.read',
  rpc: 'downloadStart, downloadChunk',
  auth: true,
  params: eventPath,
  status: 200,
  contentType: 'application/octet-stream',
  responseHeaders: {
    'Content-Disposition': {
      description:
        'Always `attachment`, with an ASCII `filename` and the UTF-8 name as an RFC 5987 `filename*`.',
      schema: dispositionHeader,
    },
    'Content-Length': {
      description: 'The decrypted file size.',
      schema: z.string().regex(/^[0-9]+$/),
    },
    'X-Content-Type-Options': { description: 'Never sniffed.', schema: z.literal('nosniff') },
    'Content-Security-Policy': {
      description: 'Opened by a browser, the file can run nothing and load nothing.',
      schema: z.literal(DOWNLOAD_CSP),
    },
  },
  errors: [404, 409, 502],
};

/** POST .../attachments gets every content type as a raw stream: its own parser context. */
export async function uploadPlugin(
  app: FastifyInstance,
  opts: { ctx: GatewayContext },
): Promise<void> {
  await app.register(rawBodyPlugin);
  const inputs = new WeakMap<FastifyRequest, UploadInput>();
  app.route({
    method: 'POST',
    url: uploadRoute.url,
    // Everything is checked from the headers, before a byte of the body is read (and before
    // fastify's own Content-Type check, which would answer 415 for a malformed one).
    onRequest: [
      requireBearer,
      async (request) => {
        try {
          inputs.set(request, uploadInput(request));
        } catch (e) {
          throw closingIfUnread(request, e);
        }
        return Promise.resolve();
      },
    ],
    handler: async (request, reply) => {
      const input = inputs.get(request);
      if (!input) throw internal();
      try {
        return await streamUpload(input, request, reply, opts.ctx);
      } catch (e) {
        throw closingIfUnread(request, e);
      }
    },
  });
}

export async function downloadPlugin(
  app: FastifyInstance,
  opts: { ctx: GatewayContext },
): Promise<void> {
  app.route({
    method: 'GET',
    url: downloadRoute.url,
    onRequest: requireBearer,
    handler: async (request, reply) => download(request, reply, opts.ctx),
  });
  return Promise.resolve();
}

// --- upload ---------------------------------------------------------------------------------

/** The body's media type, without parameters, as the contract spells it (lowercase). */
function mediaType(header: string | undefined): string {
  const bare = (header ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  return parseInput(contentType, bare, 'header.Content-Type');
}

/** Content-Length, checked before a byte of the body is read. */
function declaredLength(headers: IncomingHttpHeaders): number {
  const header = headers['content-length'];
  if (header === undefined) {
    throw new GatewayError(
      411,
      'LENGTH_REQUIRED',
      'An upload needs a Content-Length (the file size); a chunked body is not accepted.',
    );
  }
  if (!/^[0-9]{1,16}$/.test(header)) {
    throw invalidRequest('header.Content-Length: expected the body size in bytes.');
  }
  const size = Number(header);
  if (size > MAX_ATTACHMENT_BYTES) throw tooLarge(MAX_ATTACHMENT_BYTES);
  if (size < 1) throw invalidRequest('The file is empty: there is nothing to send.');
  return size;
}

function tooLarge(max: number): GatewayError {
  const MiB = 1024 * 1024;
  const limit = max % MiB === 0 ? `${max / MiB} MiB` : `${max} bytes`;
  return new GatewayError(413, 'ATTACHMENT_TOO_LARGE', `Attachments may be at most ${limit} here.`);
}

function truncated(): GatewayError {
  return invalidRequest('The body did not match its Content-Length; nothing was sent.');
}

interface UploadInput {
  token: string;
  roomId: string;
  name: string;
  caption: string | undefined;
  contentType: string;
  size: number;
}

function uploadInput(request: FastifyRequest): UploadInput {
  const token = tokenOf(request);
  const { roomId } = parseInput(roomPath, request.params, 'path');
  const query = parseInput(uploadQuery, singleValuedQuery(request.query), 'query');
  const type = mediaType(request.headers['content-type']);
  const size = declaredLength(request.headers);
  return { token, roomId, name: query.name, caption: query.caption, contentType: type, size };
}

/** Below this, an unread rest of the body is cheaper to read and drop than the connection. */
const DRAIN_BYTES = 64 * 1024;

/**
 * The error to answer, with the connection closed after it when much of the body is still
 * unread: better dropped than read (up to 8 MiB nobody wants, or a chunked body of any size).
 * A small rest is read and dropped by Node instead, so the client keeps its connection and
 * surely reads the answer (closing under a client still sending can reset it first).
 */
function closingIfUnread(request: FastifyRequest, e: unknown): GatewayError {
  const error = toGatewayError(e);
  if (request.raw.complete) return error;
  const declared = Number(request.headers['content-length'] ?? Number.NaN);
  if (Number.isFinite(declared) && declared <= DRAIN_BYTES) return error;
  return new GatewayError(error.status, error.code, error.message, {
    ...error.headers,
    connection: 'close',
  });
}

async function streamUpload(
  input: UploadInput,
  request: FastifyRequest,
  reply: FastifyReply,
  ctx: GatewayContext,
): Promise<FastifyReply> {
  const { calls } = ctx;
  const { token, size } = input;
  const auth = { token };
  const started = await calls.call('uploadStart', {
    auth,
    roomId: input.roomId,
    name: input.name,
    contentType: input.contentType,
    size,
    ...(input.caption === undefined ? {} : { caption: input.caption }),
  });
  if (size > started.maxBytes) throw tooLarge(started.maxBytes);
  // Never more than the contract's chunk bound, whatever the endpoint says.
  const chunkBytes = Math.min(started.chunkBytes, ATTACHMENT_CHUNK_BYTES);
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) throw internal();

  // The one chunk held: filled as bytes arrive, sent when full (and the rest at the end).
  const chunk = Buffer.allocUnsafe(Math.min(chunkBytes, size));
  let filled = 0;
  let offset = 0;
  const flush = async (): Promise<void> => {
    const data = chunk.subarray(0, filled).toString('base64');
    const { received } = await calls.call('uploadChunk', {
      auth,
      upload: started.upload,
      offset,
      data,
    });
    offset += filled;
    filled = 0;
    // The endpoint counts what it holds; if that is not what we sent, stop here.
    if (received !== offset) throw internal();
  };
  try {
    // Async iteration pauses the socket while a chunk is with the endpoint: backpressure.
    for await (const piece of request.raw as AsyncIterable<Buffer>) {
      if (offset + filled + piece.length > size) throw truncated();
      let at = 0;
      while (at < piece.length) {
        const n = Math.min(piece.length - at, chunk.length - filled);
        piece.copy(chunk, filled, at, at + n);
        filled += n;
        at += n;
        if (filled === chunk.length) await flush();
      }
    }
  } catch (e) {
    // Whatever stopped the upload, the endpoint can drop what it holds of it now.
    cancel(calls, token, started.upload);
    if (e instanceof GatewayError || isRpcError(e)) throw e;
    // The request stream broke off (the client went away, the connection was reset).
    throw truncated();
  }
  if (filled > 0) await flush();
  if (offset !== size) {
    cancel(calls, token, started.upload);
    throw truncated();
  }
  const result = await calls.call('uploadFinish', { auth, upload: started.upload });
  const out = endpointContract.uploadFinish.result.safeParse(result);
  if (!out.success) throw internal();
  return reply
    .code(uploadRoute.status)
    .type('application/json; charset=utf-8')
    .send(JSON.stringify(out.data));
}

// --- download -------------------------------------------------------------------------------

/** C0, C1, bidirectional overrides, line separators, and path separators. */
// eslint-disable-next-line no-control-regex -- control characters are what is replaced
const UNSAFE_IN_NAME = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069/\\]/g;

/**
 * Content-Disposition for a file name a peer chose (RFC 6266): always `attachment`; an ASCII
 * fallback in a quoted string with nothing that could end it (no quote, backslash or control
 * character), and the name itself as RFC 5987 `filename*` (UTF-8, percent-encoded down to
 * attr-char). Neither part can carry a CR or LF, so the header cannot be split.
 */
export function contentDisposition(name: string): string {
  let safe = name.toWellFormed().replace(UNSAFE_IN_NAME, '_').trim();
  if (safe === '' || /^\.+$/.test(safe)) safe = 'attachment';
  const ascii = safe.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  const encoded = encodeURIComponent(safe).replace(
    /['()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

async function download(
  request: FastifyRequest,
  reply: FastifyReply,
  ctx: GatewayContext,
): Promise<FastifyReply> {
  const { calls } = ctx;
  const token = tokenOf(request);
  const params = parseInput(eventPath, request.params, 'path');
  // No query here: anything given is refused, as on every other route.
  parseInput(z.object({}).strict(), singleValuedQuery(request.query), 'query');
  const auth = { token };
  const start = await calls.call('downloadStart', {
    auth,
    roomId: params.roomId,
    eventId: params.eventId,
  });
  const { size, download: id } = start;
  if (!Number.isSafeInteger(size) || size < 0) throw internal();
  // The first chunk before any header: an early failure is still a proper JSON error.
  let page = await calls.call('downloadChunk', { auth, download: id, offset: 0 });
  let first: Buffer | undefined = Buffer.from(page.data, 'base64');
  if (first.length > size || (first.length === 0 && !page.done)) throw internal();

  async function* bytes(): AsyncGenerator<Buffer> {
    let sent = 0;
    for (;;) {
      const data = first ?? Buffer.from(page.data, 'base64');
      first = undefined;
      sent += data.length;
      // Past this point the status is out: a wrong count can only end the connection, so
      // the client sees a short body rather than a different file.
      if (sent > size) throw new Error('the endpoint sent more bytes than it announced');
      if (data.length > 0) yield data;
      if (page.done) break;
      if (data.length === 0) throw new Error('the endpoint sent an empty chunk');
      page = await calls.call('downloadChunk', { auth, download: id, offset: sent });
    }
    if (sent !== size) throw new Error('the endpoint sent fewer bytes than it announced');
  }

  // A client that goes away mid-download: the endpoint drops the decrypted file at once.
  let finished = false;
  reply.raw.once('close', () => {
    if (!finished) cancel(calls, token, id);
  });
  const counted = async function* (): AsyncGenerator<Buffer> {
    yield* bytes();
    finished = true;
  };
  return reply
    .code(downloadRoute.status)
    .headers({
      'content-type': start.contentType,
      'content-length': String(size),
      'content-disposition': contentDisposition(start.attachment.name),
      'x-content-type-options': 'nosniff',
      'content-security-policy': DOWNLOAD_CSP,
      'cache-control': 'no-store',
    })
    .send(Readable.from(counted(), { objectMode: false }));
}

/** Best effort: an unfinished transfer is dropped by the endpoint after a minute anyway. */
function cancel(calls: GatewayContext['calls'], token: string, transfer: string): void {
  calls.call('transferCancel', { auth: { token }, transfer }).catch(() => undefined);
}
