import { setTimeout as delay } from 'node:timers/promises';
import { type LinkedSignal, linkSignals } from './abort.ts';
import { ClientCode, MatrixApiError } from './errors.ts';
import {
  type HomeserverLogger,
  type RetryTiming,
  type TransportOptions,
  attemptFailure,
  errorFromResponse,
  networkError,
  readBounded,
  readErrorBody,
  systemErrorCode,
  TransportCore,
} from './http-common.ts';

export { type HomeserverLogger, type RetryTiming, parseRetryAfter } from './http-common.ts';

/**
 * One HTTP exchange with the homeserver on Node's fetch, and the retry loop around it. Bodies
 * are read from the stream with a byte bound, so a hostile or broken server cannot make us
 * buffer more than the bound; anything that goes wrong becomes a MatrixApiError.
 */

export const silentLogger: HomeserverLogger = { warn() {}, info() {} };

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
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
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
  /** Each failed attempt that will be retried. */
  onRetry?: ((error: MatrixApiError) => void) | undefined;
}

export interface HttpResponse {
  status: number;
  /** The body exactly as received, for the pass-through key endpoints. */
  text: string;
  json: unknown;
}

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
  readonly #core: TransportCore;

  constructor(options: TransportOptions) {
    this.#core = new TransportCore(options);
  }

  /** Sends with retries per the request's policy; throws the last error when it gives up. */
  async request(req: HttpRequest): Promise<HttpResponse> {
    return this.#core.retrying(
      {
        endpoint: req.endpoint,
        signal: req.signal,
        attempts: req.retry.kind === 'bounded' ? req.retry.attempts : Infinity,
        mayRetry: (error) => req.idempotent || notProcessed(error),
        onRetry: req.onRetry,
      },
      (signal) => this.#once(req, signal),
    );
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
      const settled = attemptFailure(e, req.endpoint, req.timeoutMs, outer, attempt);
      if (settled) return settled;
      const code = networkCode(e);
      const error = networkError(req.endpoint, code);
      if (notSentCodes.has(code)) unsent.add(error);
      return error;
    };

    let res: Response;
    try {
      res = await fetch(this.#core.url(`/_matrix/client/v3${req.path}`, req.query), {
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
        bytes = await readErrorBody(res, req.endpoint, outer, attempt);
      } catch (e) {
        throw fail(e);
      }
      throw errorFromResponse(req.endpoint, req.secrets, res, bytes);
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

function networkCode(e: unknown): string {
  return systemErrorCode(e) ?? (e instanceof Error ? e.message.slice(0, 100) : 'unknown');
}

/** Network errors raised before the request could reach the server. */
const unsent = new WeakSet<MatrixApiError>();

function notProcessed(error: MatrixApiError): boolean {
  return error.status === 429 || unsent.has(error);
}
