/** The API's error answers, read defensively. Pure. */

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

const MAX_MESSAGE_CHARS = 500;

/**
 * The error in an answer's body (`{"error": {"code", "message"}}`): the code only when it is an
 * UPPER_SNAKE word, the message cut to 500 characters; `HTTP_<status>` when the body is not
 * that shape.
 */
export function errorFromBody(status: number, text: string): ApiError {
  let code = `HTTP_${status}`;
  let message = 'The request failed.';
  try {
    const parsed: unknown = JSON.parse(text);
    const error = isRecord(parsed) ? parsed.error : undefined;
    if (isRecord(error)) {
      if (typeof error.code === 'string' && /^[A-Z][A-Z0-9_]{0,63}$/.test(error.code)) {
        code = error.code;
      }
      if (typeof error.message === 'string' && error.message !== '') {
        message = error.message.slice(0, MAX_MESSAGE_CHARS);
      }
    }
  } catch {
    // not JSON: keep the generic code and message
  }
  return new ApiError(status, code, message);
}

/** `CODE: message`, as the alert shows it. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) return `${error.code}: ${error.message}`;
  if (error instanceof Error && error.name === 'AbortError')
    return 'ABORTED: The request was cancelled.';
  if (error instanceof TypeError) return 'NETWORK: The gateway could not be reached.';
  return 'ERROR: Something went wrong.';
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
