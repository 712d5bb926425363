import { type LinkedSignal, linkSignals } from './abort.ts';
import { ClientCode, MatrixApiError, redact } from './errors.ts';
import { errorBody } from './schemas.ts';

/**
 * What HttpTransport (JSON under /_matrix/client/v3) and MediaTransport (binary under
 * /_matrix/media and /_matrix/client/v1) share: the retry loop and its backoff, bounded body
 * reads, and the mapping of failed exchanges and error responses to MatrixApiError.
 */

/** Where retry messages go. Messages never contain a token, a password or a body. */
export interface HomeserverLogger {
  warn(message: string): void;
  info(message: string): void;
}

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

/** What both transports are constructed with. */
export interface TransportOptions {
  baseUrl: string;
  timing: RetryTiming;
  logger: HomeserverLogger;
  /** The client's lifetime: aborting it aborts every request. */
  signal?: AbortSignal | undefined;
}

/** Builds request URLs from a path (already encoded, from the API root) and a query. */
export type UrlBuilder = (path: string, query?: Record<string, string | undefined>) => URL;

/** Resolves API paths against the homeserver's base URL, keeping any path prefix it has. */
export function urlBuilder(baseUrl: string): UrlBuilder {
  const base = new URL(baseUrl);
  if (base.protocol !== 'https:' && base.protocol !== 'http:') {
    throw new TypeError(`homeserver URL must be http(s), not ${base.protocol}`);
  }
  // Kept apart from the URL, which would turn an empty path back into "/".
  const prefix = base.pathname.replace(/\/+$/, '');
  base.search = '';
  base.hash = '';
  return (path, query) => {
    const url = new URL(base);
    url.pathname = `${prefix}${path}`;
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, value);
    }
    return url;
  };
}

/** Error bodies are small; a larger one is not a Matrix error body and is not kept. */
export const maxErrorBodyBytes = 64 * 1024;

export interface RetryOptions {
  endpoint: string;
  /** The caller's signal; linked with the transport's lifetime for the whole call. */
  signal?: AbortSignal | undefined;
  /** Attempts before giving up; Infinity to keep trying until aborted. */
  attempts: number;
  /** Whether a retryable error may be retried by this call. */
  mayRetry(error: MatrixApiError): boolean;
  /** Told of each failed attempt that will be retried (the caller may report an outage). */
  onRetry?: ((error: MatrixApiError) => void) | undefined;
}

/** The base URL, timing, logger and lifetime of a transport, and its retry loop. */
export class TransportCore {
  readonly url: UrlBuilder;
  readonly #timing: RetryTiming;
  readonly #logger: HomeserverLogger;
  readonly #lifetime: AbortSignal | undefined;

  constructor(options: TransportOptions) {
    this.url = urlBuilder(options.baseUrl);
    this.#timing = options.timing;
    this.#logger = options.logger;
    this.#lifetime = options.signal;
  }

  /**
   * Calls `once` until it succeeds, a non-retryable error occurs or the attempts run out
   * (then the last error is thrown, noting the count), waiting per `backoffDelay` between.
   */
  async retrying<T>(options: RetryOptions, once: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const call = linkSignals([options.signal, this.#lifetime]);
    const signal = call.signal;
    try {
      for (let attempt = 1; ; attempt++) {
        if (signal.aborted) throw aborted(options.endpoint);
        let error: MatrixApiError;
        try {
          return await once(signal);
        } catch (e) {
          if (!(e instanceof MatrixApiError)) throw e;
          error = e;
        }
        if (!error.retryable || !options.mayRetry(error)) throw error;
        if (attempt >= options.attempts) {
          throw withMessage(error, `${error.message} (gave up after ${attempt} attempts)`);
        }
        options.onRetry?.(error);
        const wait = backoffDelay(this.#timing, error, attempt);
        this.#logger.warn(`${error.message}; retrying in ${wait} ms (attempt ${attempt})`);
        try {
          await this.#timing.sleep(wait, signal);
        } catch {
          throw aborted(options.endpoint);
        }
      }
    } finally {
      call.dispose();
    }
  }
}

function backoffDelay(t: RetryTiming, error: MatrixApiError, attempt: number): number {
  // Full jitter (AWS architecture blog): spreads many clients' retries after an outage
  // instead of having them arrive in lockstep.
  const ceiling = Math.min(t.maxDelayMs, t.baseDelayMs * 2 ** Math.min(attempt - 1, 30));
  const backoff = Math.floor(t.random() * ceiling);
  if (error.retryAfterMs === undefined) return backoff;
  // The server's wait is honoured, but never below our own backoff (a server answering
  // retry_after_ms: 0 forever must not spin a sync loop) nor above the cap.
  return Math.max(backoff, Math.min(error.retryAfterMs, t.maxRetryAfterMs));
}

/**
 * Reads at most `maxBytes`; beyond that, cancels the stream and throws RESPONSE_TOO_LARGE. A
 * declared length over the bound is refused before reading; a stream that runs over is
 * cancelled at the chunk that crosses it, which is not kept.
 */
export async function readBounded(
  res: Response,
  maxBytes: number,
  endpoint: string,
): Promise<Uint8Array> {
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

/**
 * The error body of a failed response, bounded by maxErrorBodyBytes. A body that is too large
 * or cut off is simply not a Matrix error body (undefined); a timeout or an abort still is
 * what it is, and is rethrown.
 */
export async function readErrorBody(
  res: Response,
  endpoint: string,
  outer: AbortSignal,
  attempt: LinkedSignal,
): Promise<Uint8Array | undefined> {
  try {
    return await readBounded(res, maxErrorBodyBytes, endpoint);
  } catch (e) {
    if (outer.aborted || attempt.timedOut) throw e;
    return undefined;
  }
}

/** A non-2xx response as a MatrixApiError; the server's message is scrubbed of `secrets`. */
export function errorFromResponse(
  endpoint: string,
  secrets: readonly string[],
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
  const detail = body.error ? `: ${redact(body.error, secrets).slice(0, 200)}` : '';
  return new MatrixApiError({
    status,
    errcode,
    message: `${endpoint}: ${status} ${errcode}${detail}`,
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

/**
 * An exception from one attempt as an abort, a timeout or (already) a MatrixApiError; undefined
 * when it is none of these, i.e. a network error for the caller to describe.
 */
export function attemptFailure(
  e: unknown,
  endpoint: string,
  timeoutMs: number,
  outer: AbortSignal,
  attempt: LinkedSignal,
): MatrixApiError | undefined {
  if (outer.aborted) return aborted(endpoint);
  if (attempt.timedOut) {
    return new MatrixApiError({
      status: 0,
      errcode: ClientCode.Timeout,
      message: `${endpoint}: no complete response within ${timeoutMs} ms`,
      retryable: true,
    });
  }
  if (e instanceof MatrixApiError) return e;
  return undefined;
}

export function networkError(endpoint: string, code: string): MatrixApiError {
  return new MatrixApiError({
    status: 0,
    errcode: ClientCode.Network,
    message: `${endpoint}: network error (${code})`,
    retryable: true,
  });
}

/** The system error code (ECONNREFUSED, UND_ERR_…) of a fetch failure or its cause, if any. */
export function systemErrorCode(e: unknown): string | undefined {
  const cause = e instanceof Error ? e.cause : undefined;
  for (const candidate of [cause, e]) {
    if (candidate instanceof Error && 'code' in candidate && typeof candidate.code === 'string') {
      return candidate.code;
    }
  }
  return undefined;
}

export function aborted(endpoint: string): MatrixApiError {
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
