/**
 * Calls to the gateway: same origin, the token in the Authorization header only (never a
 * cookie, never a URL), no cache, no referrer. The token lives in sessionStorage (this tab, and
 * a reload of it) and is never logged.
 */
import { ApiError, errorFromBody } from './errors.ts';

const TOKEN_KEY = 'mte.token';
/** The gateway's limit on a token. */
export const MAX_TOKEN_CHARS = 512;

export function loadToken(): string | undefined {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
  } catch {
    return undefined;
  }
}

export function saveToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken(): void {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage unavailable: nothing was kept
  }
}

/** A token the Authorization header can carry: printable ASCII, at most 512 characters. */
export function validToken(token: string): boolean {
  return token.length > 0 && token.length <= MAX_TOKEN_CHARS && /^[\x21-\x7e]+$/.test(token);
}

let unauthenticated: (error: ApiError) => void = () => undefined;

/** What to do when the gateway answers 401 (log out). */
export function onUnauthenticated(handler: (error: ApiError) => void): void {
  unauthenticated = handler;
}

export interface CallOptions {
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** A POST whose body is these bytes (an upload), sent with this Content-Type, not JSON. */
  bytes?: { body: Blob; type: string };
}

/** One call; resolves with the response when it is 2xx, else throws an ApiError. */
export async function call(
  method: 'GET' | 'POST',
  path: string,
  options: CallOptions = {},
): Promise<Response> {
  const token = loadToken();
  if (token === undefined) {
    const error = new ApiError(401, 'UNAUTHENTICATED', 'Not logged in.');
    unauthenticated(error);
    throw error;
  }
  if (!path.startsWith('/v1/')) throw new Error('only /v1/ paths are called');
  const headers: Record<string, string> = {
    ...options.headers,
    authorization: `Bearer ${token}`,
  };
  const init: RequestInit = {
    method,
    headers,
    credentials: 'omit',
    cache: 'no-store',
    referrerPolicy: 'no-referrer',
    redirect: 'error',
    mode: 'same-origin',
  };
  if (options.signal) init.signal = options.signal;
  if (method === 'POST' && options.bytes) {
    headers['content-type'] = options.bytes.type;
    init.body = options.bytes.body;
  } else if (method === 'POST') {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(options.body ?? {});
  }
  const response = await fetch(path, init);
  if (response.ok) return response;
  const error = errorFromBody(response.status, await response.text().catch(() => ''));
  if (response.status === 401) unauthenticated(error);
  throw error;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await call('GET', path, signal ? { signal } : {});
  return (await response.json()) as T;
}

export async function postJson<T>(path: string, body: unknown = {}): Promise<T> {
  const response = await call('POST', path, { body });
  return (await response.json()) as T;
}

/** POSTs bytes (an upload: the browser adds Content-Length and Origin) and reads the JSON answer. */
export async function postBytes<T>(path: string, body: Blob, type: string): Promise<T> {
  const response = await call('POST', path, { bytes: { body, type } });
  return (await response.json()) as T;
}
