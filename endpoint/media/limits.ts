import { AttachmentCode, AttachmentError } from './errors.ts';

/**
 * Attachments are encrypted and decrypted as whole buffers in memory, so each call is bounded.
 * 100 MiB is twice Synapse's default upload limit (m.upload.size, 50 MiB); callers that know
 * the homeserver's limit pass it instead.
 */
export const defaultMaxAttachmentBytes = 100 * 1024 * 1024;

export function checkSize(length: number, maxBytes: number | undefined, what: string): void {
  const limit = maxBytes ?? defaultMaxAttachmentBytes;
  if (!Number.isSafeInteger(limit) || limit < 0) {
    throw new RangeError('maxBytes must be an integer >= 0');
  }
  if (length > limit) {
    throw new AttachmentError(
      AttachmentCode.TooLarge,
      `${what} of ${length} bytes exceeds the limit of ${limit} bytes`,
    );
  }
}
