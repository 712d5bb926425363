/**
 * What the page's actions send, worked out before any call: the fixed reactions, an upload's
 * media type and checks, and the words for a failed send. Pure.
 */
import { ApiError } from './errors.ts';
import { formatSize } from './text.ts';

/** The reactions the page offers: a fixed list, no free text. */
export const REACTION_KEYS: readonly { key: string; name: string }[] = [
  { key: '👍', name: 'thumbs up' },
  { key: '❤️', name: 'heart' },
  { key: '😂', name: 'laughing' },
  { key: '🎉', name: 'party' },
  { key: '😮', name: 'surprised' },
  { key: '😢', name: 'sad' },
];

export function isOfferedReaction(key: string): boolean {
  return REACTION_KEYS.some((r) => r.key === key);
}

/** The gateway's limit on an upload (it refuses more with 413 before reading a byte). */
export const MAX_UPLOAD_BYTES = 8 * 1024 * 1024;
/** The contract's limit on a file name. */
const MAX_NAME_CHARS = 255;

/** The contract's media type: `type/subtype`, lower case, no parameters. */
const MEDIA_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$/;

/**
 * The Content-Type an upload goes with: the browser's guess for the file, without parameters
 * and lower-cased, or `application/octet-stream` when it has none (or none the contract takes).
 */
export function uploadContentType(type: string): string {
  const bare = (type.split(';')[0] ?? '').trim().toLowerCase();
  return MEDIA_TYPE.test(bare) ? bare : 'application/octet-stream';
}

/**
 * Why a file cannot be uploaded as it is (an ApiError as the gateway would answer), or
 * undefined. Checked in the page too: the gateway answers an oversized upload by closing the
 * connection, which a browser reports only as a network failure.
 */
export function uploadProblem(file: { name: string; size: number }): ApiError | undefined {
  if (file.size > MAX_UPLOAD_BYTES) {
    return new ApiError(
      413,
      'ATTACHMENT_TOO_LARGE',
      `Attachments may be at most ${formatSize(MAX_UPLOAD_BYTES)}; this file is ${formatSize(file.size)}.`,
    );
  }
  if (file.size < 1) {
    return new ApiError(400, 'INVALID_REQUEST', 'The file is empty: there is nothing to send.');
  }
  if (file.name === '' || file.name.length > MAX_NAME_CHARS) {
    return new ApiError(
      400,
      'INVALID_REQUEST',
      `A file name must have 1 to ${MAX_NAME_CHARS} characters.`,
    );
  }
  // eslint-disable-next-line no-control-regex -- control characters are what is refused
  if (/[/\\\u0000-\u001f\u007f]/.test(file.name) || !file.name.isWellFormed()) {
    return new ApiError(
      400,
      'INVALID_REQUEST',
      'A file name may not contain /, \\ or control characters.',
    );
  }
  return undefined;
}

/** The query of an upload: `?name=<file name>`, percent-encoded. */
export function uploadQuery(name: string): string {
  return `?name=${encodeURIComponent(name)}`;
}

const KIND_WORDS: Readonly<Record<string, string>> = {
  text: 'message',
  edit: 'edit',
  reaction: 'reaction',
  redaction: 'deletion',
  attachment: 'file',
};

/** What a failed send was, in a word. */
export function failedKindWord(kind: string): string {
  return KIND_WORDS[kind] ?? kind;
}
