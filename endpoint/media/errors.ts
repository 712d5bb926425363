/**
 * Typed failures of attachment encryption. Messages are one line and name the rule that
 * failed, never a key, an IV, a hash or any byte of the attachment: they reach logs and the
 * gateway's answers to untrusted UIs.
 */
export const AttachmentCode = {
  /** The ciphertext does not match the SHA-256 in its `file` object: refused, nothing decrypted. */
  Tampered: 'ATTACHMENT_TAMPERED',
  /** The `file` object (or an mxc:// URI) does not meet the schema. */
  Invalid: 'ATTACHMENT_INVALID',
  /** The attachment exceeds the size bound the caller set (or the default). */
  TooLarge: 'ATTACHMENT_TOO_LARGE',
} as const;
export type AttachmentErrorCode = (typeof AttachmentCode)[keyof typeof AttachmentCode];

export class AttachmentError extends Error {
  readonly code: AttachmentErrorCode;

  constructor(code: AttachmentErrorCode, message: string) {
    super(message);
    this.name = 'AttachmentError';
    this.code = code;
  }
}

export function isAttachmentError(e: unknown, code?: AttachmentErrorCode): e is AttachmentError {
  return e instanceof AttachmentError && (code === undefined || e.code === code);
}
