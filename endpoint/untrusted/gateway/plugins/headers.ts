import type { FastifyInstance } from 'fastify';
import { invalidRequest } from '../errors.ts';
import { global } from './global.ts';

/**
 * Headers on every answer: nothing here may be cached (answers are per token), sniffed as
 * something else, framed, or read cross-origin by a browser (no CORS headers are ever sent).
 * Also sent on the answers written below fastify (plugins/errors.ts, clientErrorHandler).
 */
export const RESPONSE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
});

/**
 * Request headers that must appear at most once. Node keeps only the first of a repeated
 * Host or Content-Type (request.headers), so a second one would be silently ignored while
 * something in front of the gateway might have honoured it: refuse the request instead.
 * Authorization is counted the same way, in auth.ts.
 */
const SINGLE = new Set(['host', 'content-type']);

/** How often each of `names` appears in Node's rawHeaders ([name, value, name, value...]). */
export function countRawHeaders(
  rawHeaders: readonly string[],
  names: ReadonlySet<string>,
): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]?.toLowerCase();
    if (name !== undefined && names.has(name)) counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  return counts;
}

export const headersPlugin = global(async (app: FastifyInstance) => {
  app.addHook('onRequest', async (request, reply) => {
    reply.headers(RESPONSE_HEADERS);
    const counts = countRawHeaders(request.raw.rawHeaders, SINGLE);
    for (const [name, count] of counts) {
      if (count > 1) throw invalidRequest(`Give one ${headerName(name)} header.`);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400. Node would answer it itself,
    // with an empty body (requireHostHeader); it is turned off in app.ts so the answer here
    // has the API's error shape.
    if (request.raw.httpVersion === '1.1' && !counts.has('host')) {
      throw invalidRequest('A Host header is required.');
    }
    return Promise.resolve();
  });
  return Promise.resolve();
});

function headerName(lower: string): string {
  return lower.replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase());
}
