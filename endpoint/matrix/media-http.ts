import { type LinkedSignal, linkSignals } from './abort.ts';
import { ClientCode, MatrixApiError } from './errors.ts';
import {
  type TransportOptions,
  attemptFailure,
  errorFromResponse,
  networkError,
  readBounded,
  readErrorBody,
  systemErrorCode,
  TransportCore,
} from './http-common.ts';

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

export class MediaTransport {
  readonly #core: TransportCore;

  constructor(options: TransportOptions) {
    this.#core = new TransportCore(options);
  }

  async request(req: MediaRequest): Promise<MediaResponse> {
    return this.#core.retrying(
      {
        endpoint: req.endpoint,
        signal: req.signal,
        attempts: req.attempts,
        // Downloads and config reads are idempotent; a repeated upload at worst stores an
        // unreferenced copy, which is better than failing a send over a dropped response.
        mayRetry: () => true,
      },
      (signal) => this.#once(req, signal),
    );
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
    const res = await fetch(this.#core.url(req.path, req.query), {
      method: req.method,
      headers,
      ...(req.body ? { body: req.body.bytes } : {}),
      signal: attempt.signal,
      // As in HttpTransport: following a redirect would carry the token wherever it points.
      // We never send allow_redirect=true, so a conforming server answers with the content.
      redirect: 'manual',
    });
    if (!res.ok) {
      const bytes = await readErrorBody(res, req.endpoint, outer, attempt);
      throw errorFromResponse(req.endpoint, req.secrets, res, bytes);
    }
    return { status: res.status, bytes: await readBounded(res, req.maxBytes, req.endpoint) };
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

function failure(
  e: unknown,
  req: MediaRequest,
  outer: AbortSignal,
  attempt: LinkedSignal,
): MatrixApiError {
  return (
    attemptFailure(e, req.endpoint, req.timeoutMs, outer, attempt) ??
    networkError(req.endpoint, networkCode(e))
  );
}

function networkCode(e: unknown): string {
  return systemErrorCode(e)?.slice(0, 64) ?? (e instanceof Error ? e.name.slice(0, 64) : 'unknown');
}
