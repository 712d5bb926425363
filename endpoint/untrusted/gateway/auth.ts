import type { FastifyInstance } from 'fastify';
import { MAX_TOKEN_CHARS } from '../../contract.ts';
import { type GatewayError, invalidRequest, unauthenticated } from './errors.ts';
import { countRawHeaders } from './plugins/headers.ts';
import { global } from './plugins/global.ts';

/** RFC 6750's b64token, which the policy's tokens (base64url) are a subset of. */
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;

const AUTHORIZATION = new Set(['authorization']);

/** Two sets of credentials in one request: which one the caller meant is not ours to guess. */
export function ambiguousCredentials(): GatewayError {
  return invalidRequest('Give one Authorization header with one bearer token.');
}

/**
 * The caller's bearer token from the Authorization header, as presented, or the error to send:
 * 401 for a missing or malformed one, 400 for two of them in one header (a comma, or a second
 * "Bearer"). The gateway judges only the form: whether the token is any good is the endpoint's
 * call. No message here contains the header's value.
 */
export function bearerToken(header: string | string[] | undefined): string | GatewayError {
  if (header === undefined || header === '') {
    return unauthenticated('An Authorization: Bearer token is required.');
  }
  if (typeof header !== 'string' || twoCredentials(header)) return ambiguousCredentials();
  // Bound the work before matching: anything this long is refused whatever it holds.
  if (header.length > MAX_TOKEN_CHARS + 16) {
    return unauthenticated(`The bearer token is longer than ${MAX_TOKEN_CHARS} characters.`);
  }
  const match = BEARER.exec(header);
  const token = match?.[1];
  if (token === undefined) {
    return unauthenticated('The Authorization header must be "Bearer <token>".');
  }
  if (token.length > MAX_TOKEN_CHARS) {
    return unauthenticated(`The bearer token is longer than ${MAX_TOKEN_CHARS} characters.`);
  }
  return token;
}

/**
 * A comma never occurs in a b64token, so it can only join two credentials (which is how a
 * proxy folds repeated headers); a second "Bearer" word is the same without the comma. Node
 * bounds the header (16 KiB of headers in all), so the scan is bounded too.
 */
function twoCredentials(header: string): boolean {
  if (header.includes(',')) return true;
  return header.split(/[ \t]+/).filter((w) => w.toLowerCase() === 'bearer').length > 1;
}

/**
 * Node keeps only the first of repeated Authorization headers (request.headers), so the token
 * a route sees would be whichever came first: they are counted in the raw headers instead. On
 * every request, before any route's own hooks, and on routes without auth too (a caller
 * sending two credentials has a bug worth hearing about, whatever the route).
 */
export const singleCredentialsPlugin = global(async (app: FastifyInstance) => {
  app.addHook('onRequest', async (request) => {
    const count = countRawHeaders(request.raw.rawHeaders, AUTHORIZATION).get('authorization');
    const header = request.headers.authorization;
    if ((count ?? 0) > 1 || (typeof header === 'string' && twoCredentials(header))) {
      throw ambiguousCredentials();
    }
    return Promise.resolve();
  });
  return Promise.resolve();
});
