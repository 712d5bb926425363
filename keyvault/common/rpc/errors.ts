/**
 * Errors as values with codes. Protocol codes are fixed here; handlers may throw an RpcError
 * with their own application code (upper snake case), which reaches the caller unchanged.
 * Anything else a handler throws becomes INTERNAL with a generic message, so a bug cannot leak
 * a secret or a stack trace across a compartment boundary.
 */
export const RpcCode = {
  /** The frame was not valid JSON or not a valid envelope. */
  BadFrame: 'BAD_FRAME',
  /** A frame (or a message about to be sent) exceeds the channel's bound. */
  FrameTooLarge: 'FRAME_TOO_LARGE',
  UnknownMethod: 'UNKNOWN_METHOD',
  /** The request's params violate the method's schema (checked by the receiver). */
  InvalidParams: 'INVALID_PARAMS',
  /** The response's result violates the method's schema (checked by the receiver). */
  InvalidResult: 'INVALID_RESULT',
  Timeout: 'TIMEOUT',
  Disconnected: 'DISCONNECTED',
  /** Too many requests in flight on one connection. */
  Busy: 'BUSY',
  Internal: 'INTERNAL',
} as const;
export type ProtocolCode = (typeof RpcCode)[keyof typeof RpcCode];

export const errorCodePattern = /^[A-Z][A-Z0-9_]{0,63}$/;

export class RpcError extends Error {
  readonly code: string;
  /** With a rate limit: when the caller may try again (milliseconds from now). */
  readonly retryAfterMs: number | undefined;

  constructor(code: string, message: string, options: { retryAfterMs?: number } = {}) {
    super(message);
    if (!errorCodePattern.test(code)) throw new TypeError(`invalid RPC error code: ${code}`);
    this.name = 'RpcError';
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
  }

  toJSON(): { code: string; message: string; retryAfterMs?: number } {
    return {
      code: this.code,
      message: this.message,
      ...(this.retryAfterMs === undefined ? {} : { retryAfterMs: this.retryAfterMs }),
    };
  }
}

export function isRpcError(e: unknown, code?: string): e is RpcError {
  return e instanceof RpcError && (code === undefined || e.code === code);
}
