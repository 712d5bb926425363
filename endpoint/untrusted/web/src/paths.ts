/** Building API paths from ids that other users chose. Pure. */
import { ApiError } from './errors.ts';

/** The code of the error seg() throws (no request was made). */
export const UNSAFE_ID = 'UNSAFE_ID';

/**
 * One path segment. Ids are percent-encoded, and "." and ".." refused: the URL parser would
 * read them as "this" or "the parent" segment (and so would "%2e"), turning a call on a device
 * named ".." into a call on another route. Ids that are not well-formed UTF-16 (a lone
 * surrogate) are refused the same way: encodeURIComponent would throw a URIError, which
 * callers that skip UNSAFE_ID ids would not expect.
 */
export function seg(id: string): string {
  if (id === '' || id === '.' || id === '..') {
    throw new ApiError(0, UNSAFE_ID, 'This id cannot be used in a request (it reads as a path).');
  }
  if (!id.isWellFormed()) {
    throw new ApiError(0, UNSAFE_ID, 'This id cannot be used in a request (it is not valid text).');
  }
  return encodeURIComponent(id);
}

/** `/v1/...` from literal parts and ids: `path`/v1/rooms/${roomId}/timeline``. */
export function path(strings: TemplateStringsArray, ...ids: string[]): string {
  let out = strings[0] ?? '';
  ids.forEach((id, i) => {
    out += seg(id) + (strings[i + 1] ?? '');
  });
  return out;
}
