/**
 * Encrypted attachments (spec, "Sending encrypted attachments", v2): AES-256-CTR with the
 * SHA-256 of the ciphertext, described to peers by a `file` object with the key as a JWK.
 * Pure functions over whole buffers; uploading and downloading are the homeserver client's
 * (endpoint/matrix: upload, download, mediaConfig).
 */
export { encryptAttachment } from './encrypt.ts';
export { decryptAttachment } from './decrypt.ts';
export {
  type EncryptedFile,
  type EncryptedFileKey,
  encryptedFile,
  parseEncryptedFile,
} from './file-schema.ts';
export {
  AttachmentCode,
  AttachmentError,
  type AttachmentErrorCode,
  isAttachmentError,
} from './errors.ts';
export { type MxcParts, mxcUri, parseMxc } from './mxc.ts';
export { defaultMaxAttachmentBytes } from './limits.ts';
