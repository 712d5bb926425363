import { type LinkedSignal, linkSignals } from './abort.ts';
import { ClientCode, MatrixApiError, redact } from './errors.ts';
import { type HomeserverLogger, type RetryTiming, parseRetryAfter } from './http.ts';
import { errorBody } from './schemas.ts';

/**
 * Media requests: binary bodies both ways, under /_matrix/media and /_matrix/client/v1,
 * which HttpTransport (JSON text under /_matrix/client/v3) does not carry. The rules are
 * HttpTransport's: bodies read from the stream with a byte bound, the token only in the
 * Authorization header and scrubbed from messages, redirects not followed, per-attempt
 * timeouts, bounded retries with full-jitter backoff for 429, 5xx, 408, timeouts and
 * network errors. Every failure is a MatrixApiError.
 */

export interface MediaRequest {
  /** A template such as "GET /_matrix/client/v1/media/download/{serverName}/{mediaId}". */
  endpoint: string;
  method: 'GET' | 'POST';
  /** Already encoded, from the API root: "/_matrix/media/v3/upload". */
  path: string;
  query?: Record<string, string | undefined>;
  body?: { bytes: Uint8Array; contentType: string };
  accessToken?: string | undefined;
  /** The response body's bound: one byte more is RESPONSE_TOO_LARGE, read no further. */
  maxBytes: number;
  timeoutMs: number;
  attempts: number;
  signal?: AbortSignal | undefined;
  secrets: readonly string[];
}

export interface MediaResponse {
  status: number;
  bytes: Uint8Array;
}

const maxErrorBodyBytes = 64 * 1024;

export class MediaTransport {
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
    this.#prefix = url.pathname.replace(/\/+$/, '');
    url.search = '';
    url.hash = '';
    this.#baseUrl = url;
    this.#timing = options.timing;
    this.#logger = options.logger;
    this.#lifetime = options.signal;
  }

  async request(req: MediaRequest): Promise<MediaResponse> {
    const call = linkSignals([req.signal, this.#lifetime]);
    try {
      for (let attempt = 1; ; attempt++) {
        if (call.signal.aborted) throw aborted(req.endpoint);
        let error: MatrixApiError;
        try {
          return await this.#once(req, call.signal);
        } catch (e) {
          if (!(e instanceof MatrixApiError)) throw e;
          error = e;
        }
        // Downloads and config reads are idempotent; a repeated upload at worst stores an
        // unreferenced copy, which is better than failing a send over a dropped response.
        if (!error.retryable) throw error;
        if (attempt >= req.attempts) {
          throw withMessage(error, `${error.message} (gave up after ${attempt} attempts)`);
        }
        const wait = this.#delayFor(error, attempt);
        this.#logger.warn(`${error.message}; retrying in ${wait} ms (attempt ${attempt})`);
        try {
          await this.#timing.sleep(wait, call.signal);
        } catch {
          throw aborted(req.endpoint);
        }
      }
    } finally {
      call.dispose();
    }
  }

  /** HttpTransport's backoff: full jitter, a server's wait honoured within our bounds. */
  #delayFor(error: MatrixApiError, attempt: number): number {
    const t = this.#timing;
    const ceiling = Math.min(t.maxDelayMs, t.baseDelayMs * 2 ** Math.min(attempt - 1, 30));
    const backoff = Math.floor(t.random() * ceiling);
    if (error.retryAfterMs === undefined) return backoff;
    return Math.max(backoff, Math.min(error.retryAfterMs, t.maxRetryAfterMs));
  }

  async #once(req: MediaRequest, outer: AbortSignal): Promise<MediaResponse> {
    const attempt = linkSignals([outer], req.timeoutMs);
    try {
      return await this.#exchange(req, outer, attempt);
    } catch (e) {
      throw failure(e, req, outer, attempt);
    } finally {
      attempt.dispose();
    }
  }

  async #exchange(
    req: MediaRequest,
    outer: AbortSignal,
    attempt: LinkedSignal,
  ): Promise<MediaResponse> {
    const headers: Record<string, string> = {};
    if (req.body) headers['content-type'] = req.body.contentType;
    if (req.accessToken !== undefined) headers.authorization = `Bearer ${req.accessToken}`;
    const res = await fetch(this.#url(req), {
      method: req.method,
      headers,
      ...(req.body ? { body: req.body.bytes } : {}),
      signal: attempt.signal,
      // As in HttpTransport: following a redirect would carry the token wherever it points.
      // We never send allow_redirect=true, so a conforming server answers with the content.
      redirect: 'manual',
    });
    if (!res.ok) {
      let bytes: Uint8Array | undefined;
      try {
        bytes = await readBounded(res, maxErrorBodyBytes, req.endpoint);
      } catch (e) {
        if (outer.aborted || attempt.timedOut) throw e;
      }
      throw errorFromResponse(req, res, bytes);
    }
    return { status: res.status, bytes: await readBounded(res, req.maxBytes, req.endpoint) };
  }

  #url(req: MediaRequest): URL {
    const url = new URL(this.#baseUrl);
    url.pathname = `${this.#prefix}${req.path}`;
    for (const [key, value] of Object.entries(req.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, value);
    }
    return url;
  }
}

/** The JSON body of a media response (upload, config), or BAD_RESPONSE. */
export function mediaJson(res: MediaResponse, endpoint: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(res.bytes));
  } catch {
    throw new MatrixApiError({
      status: res.status,
      errcode: ClientCode.BadResponse,
      message: `${endpoint}: response is not JSON`,
      retryable: false,
    });
  }
}

/**
 * Reads at most `maxBytes`. A declared length over the bound is refused before reading; a
 * stream that runs over is cancelled at the chunk that crosses it, which is not kept.
 */
async function readBounded(res: Response, maxBytes: number, endpoint: string): Promise<Uint8Array> {
  const tooLarge = (): MatrixApiError =>
    new MatrixApiError({
      status: res.status,
      errcode: ClientCode.ResponseTooLarge,
      message: `${endpoint}: response body exceeds ${maxBytes} bytes`,
      retryable: false,
    });
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

function failure(
  e: unknown,
  req: MediaRequest,
  outer: AbortSignal,
  attempt: LinkedSignal,
): MatrixApiError {
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
  return new MatrixApiError({
    status: 0,
    errcode: ClientCode.Network,
    message: `${req.endpoint}: network error (${networkCode(e)})`,
    retryable: true,
  });
}

function errorFromResponse(
  req: MediaRequest,
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

function networkCode(e: unknown): string {
  const cause = e instanceof Error ? e.cause : undefined;
  for (const candidate of [cause, e]) {
    if (candidate instanceof Error && 'code' in candidate && typeof candidate.code === 'string') {
      return candidate.code.slice(0, 64);
    }
  }
  return e instanceof Error ? e.name.slice(0, 64) : 'unknown';
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
