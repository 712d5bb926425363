/**
 * Errors as values with codes. `errcode` is the homeserver's Matrix errcode (M_FORBIDDEN,
 * M_UNKNOWN_TOKEN, ...) when it sent one; otherwise one of our own codes below, which have no
 * M_ prefix because that namespace belongs to the Matrix spec. `status` is the HTTP status, or
 * 0 when no HTTP response was received (network failure, timeout, abort, refused input).
 *
 * Messages name the endpoint and, for schema violations, the field path and the rule; they
 * never carry a request or response body, the access token or the password.
 */
export const ClientCode = {
  /** A response violated its schema, was not JSON, or was not UTF-8. */
  BadResponse: 'BAD_RESPONSE',
  /** A response body exceeded the endpoint's size bound; reading stopped there. */
  ResponseTooLarge: 'RESPONSE_TOO_LARGE',
  /** An error status without a Matrix error body (a proxy's HTML page, say). */
  HttpError: 'HTTP_ERROR',
  /** No HTTP response: connection refused or reset, DNS failure, TLS failure. */
  Network: 'NETWORK',
  /** The per-request timeout fired before the response was complete. */
  Timeout: 'TIMEOUT',
  /** The caller's AbortSignal (or the client's) fired. */
  Aborted: 'ABORTED',
  /** A call that needs an access token was made before login (or after logout). */
  NotLoggedIn: 'NOT_LOGGED_IN',
  /** Our own input was unusable (a body that is not a JSON object, a "." path segment). */
  BadRequest: 'BAD_REQUEST',
  /** The homeserver asked for user-interactive auth we cannot (or were not given to) do. */
  UiaRequired: 'UIA_REQUIRED',
} as const;
export type ClientErrorCode = (typeof ClientCode)[keyof typeof ClientCode];

export class MatrixApiError extends Error {
  readonly status: number;
  readonly errcode: string;
  /** Whether the same request may succeed later (the retry loop's decision, exposed). */
  readonly retryable: boolean;
  /** The server's retry_after_ms or Retry-After, when it sent one (429). */
  readonly retryAfterMs: number | undefined;

  constructor(init: {
    status: number;
    errcode: string;
    message: string;
    retryable: boolean;
    retryAfterMs?: number | undefined;
  }) {
    super(init.message);
    this.name = 'MatrixApiError';
    this.status = init.status;
    this.errcode = init.errcode;
    this.retryable = init.retryable;
    this.retryAfterMs = init.retryAfterMs;
  }

  toJSON(): { status: number; errcode: string; message: string; retryable: boolean } {
    return {
      status: this.status,
      errcode: this.errcode,
      message: this.message,
      retryable: this.retryable,
    };
  }
}

export function isMatrixApiError(e: unknown, errcode?: string): e is MatrixApiError {
  return e instanceof MatrixApiError && (errcode === undefined || e.errcode === errcode);
}

/** An error raised before any request is made: never retried. */
export function localError(errcode: ClientErrorCode, message: string): MatrixApiError {
  return new MatrixApiError({ status: 0, errcode, message, retryable: false });
}

/**
 * Replaces every occurrence of a secret (the access token, the password during login) in text
 * that came from the server or was built from its data. A homeserver knows our token and sees
 * our password, so it could echo either back in an error or as a field name.
 */
export function redact(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length > 0) out = out.split(secret).join('[redacted]');
  }
  return out;
}
