import { setTimeout as delay } from 'node:timers/promises';
import { type LinkedSignal, linkSignals } from './abort.ts';
import { ClientCode, MatrixApiError, redact } from './errors.ts';
import { errorBody } from './schemas.ts';

/**
 * One HTTP exchange with the homeserver on Node's fetch, and the retry loop around it. Bodies
 * are read from the stream with a byte bound, so a hostile or broken server cannot make us
 * buffer more than the bound; anything that goes wrong becomes a MatrixApiError.
 */

/** Where retry messages go. Messages never contain a token, a password or a body. */
export interface HomeserverLogger {
  warn(message: string): void;
  info(message: string): void;
}

export const silentLogger: HomeserverLogger = { warn() {}, info() {} };

/** Backoff timings, injectable so fault tests run in milliseconds. */
export interface RetryTiming {
  /** First backoff ceiling; doubled per attempt (full jitter: the delay is random below it). */
  baseDelayMs: number;
  /** Ceiling on any backoff delay. */
  maxDelayMs: number;
  /** Ceiling on a server's retry_after_ms / Retry-After, so a server cannot park us for days. */
  maxRetryAfterMs: number;
  /** Waits `ms`; must reject promptly when `signal` aborts. */
  sleep(ms: number, signal: AbortSignal | undefined): Promise<void>;
  /** Uniform in [0, 1). */
  random(): number;
}

export const defaultTiming: RetryTiming = {
  baseDelayMs: 500,
  maxDelayMs: 30_000,
  maxRetryAfterMs: 300_000,
  sleep: (ms, signal) => delay(ms, undefined, signal ? { signal } : {}),
  random: Math.random,
};

/**
 * How long a call keeps trying. Sync and sends wait out an unreachable homeserver until the
 * caller aborts (the endpoint pauses and resumes rather than failing); other calls give up
 * after a bounded number of attempts so their callers can report the failure.
 */
export type RetryPolicy = { kind: 'until-aborted' } | { kind: 'bounded'; attempts: number };

export interface HttpRequest {
  /** A template such as "PUT /rooms/{roomId}/send/{eventType}/{txnId}", used in messages. */
  endpoint: string;
  method: 'GET' | 'POST' | 'PUT';
  /** Already encoded, starting with "/". */
  path: string;
  query?: Record<string, string | undefined>;
  body?: string;
  accessToken?: string | undefined;
  maxBytes: number;
  timeoutMs: number;
  retry: RetryPolicy;
  /**
   * False for requests that must not be repeated once the server may have acted on them
   * (createRoom, login): those retry only when the server certainly did not process them
   * (429, or no connection was made).
   */
  idempotent: boolean;
  signal?: AbortSignal | undefined;
  /** Statuses returned to the caller instead of thrown (401 for user-interactive auth). */
  passStatuses?: readonly number[];
  /** Strings to scrub from any message built from server data. */
  secrets: readonly string[];
}

export interface HttpResponse {
  status: number;
  /** The body exactly as received, for the pass-through key endpoints. */
  text: string;
  json: unknown;
}

/** Error bodies are small; a larger one is not a Matrix error body and is not kept. */
const maxErrorBodyBytes = 64 * 1024;

/** Connection-stage failures: the request never reached the server, so any call may retry. */
const notSentCodes = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

export class HttpTransport {
  readonly #baseUrl: URL;
  readonly #prefix: string;
  readonly #timing: RetryTiming;
  readonly #logger: HomeserverLogger;
  readonly #lifetime: AbortSignal | undefined;

  constructor(options: {
    baseUrl: string;
    timing: RetryTiming;
    logger: HomeserverLogger;
    signal?: AbortSignal | undefined;
  }) {
    const url = new URL(options.baseUrl);
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new TypeError(`homeserver URL must be http(s), not ${url.protocol}`);
    }
    // Kept apart from the URL, which would turn an empty path back into "/".
    this.#prefix = url.pathname.replace(/\/+$/, '');
    url.search = '';
    url.hash = '';
    this.#baseUrl = url;
    this.#timing = options.timing;
    this.#logger = options.logger;
    this.#lifetime = options.signal;
  }

  /** Sends with retries per the request's policy; throws the last error when it gives up. */
  async request(req: HttpRequest): Promise<HttpResponse> {
    const call = linkSignals([req.signal, this.#lifetime]);
    try {
      return await this.#retrying(req, call.signal);
    } finally {
      call.dispose();
    }
  }

  async #retrying(req: HttpRequest, signal: AbortSignal): Promise<HttpResponse> {
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw aborted(req.endpoint);
      let error: MatrixApiError;
      try {
        return await this.#once(req, signal);
      } catch (e) {
        if (!(e instanceof MatrixApiError)) throw e;
        error = e;
      }
      const retry = error.retryable && (req.idempotent || notProcessed(error));
      if (!retry) throw error;
      if (req.retry.kind === 'bounded' && attempt >= req.retry.attempts) {
        throw withMessage(error, `${error.message} (gave up after ${attempt} attempts)`);
      }
      const wait = this.#delayFor(error, attempt);
      this.#logger.warn(`${error.message}; retrying in ${wait} ms (attempt ${attempt})`);
      try {
        await this.#timing.sleep(wait, signal);
      } catch {
        throw aborted(req.endpoint);
      }
    }
  }

  #delayFor(error: MatrixApiError, attempt: number): number {
    const t = this.#timing;
    // Full jitter (AWS architecture blog): spreads many clients' retries after an outage
    // instead of having them arrive in lockstep.
    const ceiling = Math.min(t.maxDelayMs, t.baseDelayMs * 2 ** Math.min(attempt - 1, 30));
    const backoff = Math.floor(t.random() * ceiling);
    if (error.retryAfterMs === undefined) return backoff;
    // The server's wait is honoured, but never below our own backoff (a server answering
    // retry_after_ms: 0 forever must not spin a sync loop) nor above the cap.
    return Math.max(backoff, Math.min(error.retryAfterMs, t.maxRetryAfterMs));
  }

  async #once(req: HttpRequest, outer: AbortSignal): Promise<HttpResponse> {
    const attempt = linkSignals([outer], req.timeoutMs);
    try {
      return await this.#exchange(req, outer, attempt);
    } finally {
      attempt.dispose();
    }
  }

  async #exchange(
    req: HttpRequest,
    outer: AbortSignal,
    attempt: LinkedSignal,
  ): Promise<HttpResponse> {
    const signal = attempt.signal;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (req.body !== undefined) headers['content-type'] = 'application/json';
    if (req.accessToken !== undefined) headers.authorization = `Bearer ${req.accessToken}`;
    const fail = (e: unknown): MatrixApiError => {
      if (outer.aborted) return aborted(req.endpoint);
      if (attempt.timedOut) {
        return new MatrixApiError({
          status: 0,
          errcode: ClientCode.Timeout,
          message: `${req.endpoint}: no complete response within ${req.timeoutMs} ms`,
          retryable: true,
        });
      }
      if (e instanceof MatrixApiError) return e;
      const code = networkCode(e);
      const error = new MatrixApiError({
        status: 0,
        errcode: ClientCode.Network,
        message: `${req.endpoint}: network error (${code})`,
        retryable: true,
      });
      if (notSentCodes.has(code)) unsent.add(error);
      return error;
    };

    let res: Response;
    try {
      res = await fetch(this.#url(req), {
        method: req.method,
        headers,
        ...(req.body !== undefined ? { body: req.body } : {}),
        signal,
        // The client-server API does not redirect, and following one would carry our token to
        // wherever the server points: a 3xx becomes an ordinary, non-retryable error.
        redirect: 'manual',
      });
    } catch (e) {
      throw fail(e);
    }

    const passed = req.passStatuses?.includes(res.status) ?? false;
    if (!res.ok && !passed) {
      let bytes: Uint8Array | undefined;
      try {
        bytes = await readBounded(res, maxErrorBodyBytes, req.endpoint);
      } catch (e) {
        // A body that is too large or cut off is simply not a Matrix error body; a timeout or
        // an abort still is what it is.
        if (outer.aborted || attempt.timedOut) throw fail(e);
      }
      throw errorFromResponse(req, res, bytes);
    }

    let bytes: Uint8Array;
    try {
      bytes = await readBounded(res, req.maxBytes, req.endpoint);
    } catch (e) {
      throw fail(e);
    }
    const text = decodeUtf8(bytes, req.endpoint, res.status);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new MatrixApiError({
        status: res.status,
        errcode: ClientCode.BadResponse,
        message: `${req.endpoint}: response is not JSON`,
        retryable: false,
      });
    }
    return { status: res.status, text, json };
  }

  #url(req: HttpRequest): URL {
    const url = new URL(this.#baseUrl);
    url.pathname = `${this.#prefix}/_matrix/client/v3${req.path}`;
    for (const [key, value] of Object.entries(req.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, value);
    }
    return url;
  }
}

/** Reads at most `maxBytes`; beyond that, cancels the stream and throws RESPONSE_TOO_LARGE. */
async function readBounded(res: Response, maxBytes: number, endpoint: string): Promise<Uint8Array> {
  const tooLarge = (): MatrixApiError =>
    new MatrixApiError({
      status: res.status,
      errcode: ClientCode.ResponseTooLarge,
      message: `${endpoint}: response body exceeds ${maxBytes} bytes`,
      retryable: false,
    });
  // Without content-encoding the declared length is the body's length: refuse before reading.
  // With it, the stream below counts the decoded bytes, which is what would be buffered.
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (!res.headers.has('content-encoding') && declared > maxBytes) {
    await res.body?.cancel().catch(() => undefined);
    throw tooLarge();
  }
  if (!res.body) return new Uint8Array();
  const reader: ReadableStreamDefaultReader<Uint8Array> = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

function decodeUtf8(bytes: Uint8Array, endpoint: string, status: number): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new MatrixApiError({
      status,
      errcode: ClientCode.BadResponse,
      message: `${endpoint}: response is not valid UTF-8`,
      retryable: false,
    });
  }
}

function errorFromResponse(
  req: HttpRequest,
  res: Response,
  bytes: Uint8Array | undefined,
): MatrixApiError {
  let body: {
    errcode?: string | undefined;
    error?: string | undefined;
    retry_after_ms?: number | undefined;
  };
  try {
    const text = bytes ? new TextDecoder('utf-8', { fatal: true }).decode(bytes) : '';
    const parsed = errorBody.safeParse(JSON.parse(text));
    body = parsed.success ? parsed.data : {};
  } catch {
    body = {};
  }
  const status = res.status;
  // 429 is "not now"; 5xx and 408 are the server or a proxy failing, usually briefly.
  const retryable = status === 429 || status === 408 || status >= 500;
  const retryAfterMs = retryable
    ? (body.retry_after_ms ?? parseRetryAfter(res.headers.get('retry-after')))
    : undefined;
  const errcode = body.errcode ?? ClientCode.HttpError;
  const detail = body.error ? `: ${redact(body.error, req.secrets).slice(0, 200)}` : '';
  return new MatrixApiError({
    status,
    errcode,
    message: `${req.endpoint}: ${status} ${errcode}${detail}`,
    retryable,
    retryAfterMs,
  });
}

/** Retry-After is either delta-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function networkCode(e: unknown): string {
  const cause = e instanceof Error ? e.cause : undefined;
  for (const candidate of [cause, e]) {
    if (candidate instanceof Error && 'code' in candidate && typeof candidate.code === 'string') {
      return candidate.code;
    }
  }
  return e instanceof Error ? e.message.slice(0, 100) : 'unknown';
}

/** Network errors raised before the request could reach the server. */
const unsent = new WeakSet<MatrixApiError>();

function notProcessed(error: MatrixApiError): boolean {
  return error.status === 429 || unsent.has(error);
}

function aborted(endpoint: string): MatrixApiError {
  return new MatrixApiError({
    status: 0,
    errcode: ClientCode.Aborted,
    message: `${endpoint}: aborted`,
    retryable: false,
  });
}

function withMessage(error: MatrixApiError, message: string): MatrixApiError {
  return new MatrixApiError({
    status: error.status,
    errcode: error.errcode,
    message,
    retryable: error.retryable,
    retryAfterMs: error.retryAfterMs,
  });
}
