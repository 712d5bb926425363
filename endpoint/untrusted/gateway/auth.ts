import { MAX_TOKEN_CHARS } from '../../contract.ts';
import { type GatewayError, unauthenticated } from './errors.ts';

/** RFC 6750's b64token, which the policy's tokens (base64url) are a subset of. */
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;

/**
 * The caller's bearer token from the Authorization header, as presented, or the 401 to send.
 * The gateway judges only the form: whether the token is any good is the endpoint's call. No
 * message here contains the header's value.
 */
export function bearerToken(header: string | string[] | undefined): string | GatewayError {
  if (header === undefined || header === '') {
    return unauthenticated('An Authorization: Bearer token is required.');
  }
  if (typeof header !== 'string') return unauthenticated('Give one Authorization header.');
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
