import { createDecipheriv, createHash, timingSafeEqual } from 'node:crypto';
import { AttachmentCode, AttachmentError } from './errors.ts';
import { type EncryptedFile, keyBytes, parseEncryptedFile } from './file-schema.ts';
import { checkSize } from './limits.ts';

const blockBytes = 16;
const counterSpace = 2n ** 64n;

/**
 * Decrypts an attachment downloaded from its `file.url`. Nothing is decrypted until the
 * ciphertext's SHA-256 matches `file.hashes.sha256` (the hash travels inside the Megolm-
 * encrypted event, so it is what authenticates the bytes the homeserver served); a mismatch
 * is ATTACHMENT_TAMPERED and no plaintext exists.
 *
 * `file` is checked against the schema again here, whatever its static type says: it comes
 * from a peer, and the caller may have built it from a parsed event by hand.
 */
export function decryptAttachment(
  ciphertext: Uint8Array,
  file: EncryptedFile,
  options: { maxBytes?: number } = {},
): Uint8Array {
  const checked = parseEncryptedFile(file);
  checkSize(ciphertext.byteLength, options.maxBytes, 'encrypted attachment');

  const expected = Buffer.from(checked.hashes.sha256, 'base64');
  const actual = createHash('sha256').update(ciphertext).digest();
  // Lengths are equal (the schema fixes 32 bytes); timingSafeEqual would throw otherwise.
  if (expected.length !== actual.length || !timingSafeEqual(expected, actual)) {
    throw new AttachmentError(
      AttachmentCode.Tampered,
      'encrypted attachment does not match the SHA-256 in its file object',
    );
  }

  const iv = Buffer.from(checked.iv, 'base64');
  // Senders of v2 count in the low 64 bits of the counter block only (WebCrypto's `length:
  // 64`, which is what Element decrypts with); OpenSSL carries into all 128. The two agree
  // unless the low half wraps inside this file, which a v2 sender (low half zero) never
  // causes: such a counter block is refused rather than decrypted differently from Element.
  const blocks = BigInt(Math.ceil(ciphertext.byteLength / blockBytes));
  if (iv.readBigUInt64BE(8) + blocks > counterSpace) {
    throw new AttachmentError(
      AttachmentCode.Invalid,
      'encrypted file object is invalid: file.iv: the counter would wrap within the attachment',
    );
  }

  // Decoded into a buffer of its own (Buffer.from would use Node's shared pool) so that
  // zeroing it afterwards wipes the only copy we hold.
  const key = Buffer.alloc(keyBytes);
  try {
    key.write(checked.key.k, 'base64url');
    const decipher = createDecipheriv('aes-256-ctr', key, iv);
    const plain = decipher.update(ciphertext);
    decipher.final();
    return plain;
  } finally {
    key.fill(0);
  }
}
