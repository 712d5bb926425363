import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import type { EncryptedFile } from './file-schema.ts';
import { checkSize } from './limits.ts';

/**
 * Encrypts an attachment as the spec's "Sending encrypted attachments" says (v2): AES-256-CTR
 * under a fresh random key, a 16-byte counter block whose high 64 bits are random and low 64
 * bits zero (so the counter cannot wrap within any file a client could send: the reason v2
 * exists), and the SHA-256 of the ciphertext, which the receiver checks before decrypting.
 *
 * Our own code on purpose, and only a few lines of it: node:crypto does the cipher and the
 * hash. The field's library, matrix-encrypt-attachment, is written for WebCrypto (async,
 * whole ArrayBuffers, keys as CryptoKey objects we cannot wipe); its Node.js fallback compares
 * hashes as strings and leaves the decoded key in memory. Here the key's bytes are ours to
 * zero and the checks are the endpoint's. The library stays in the tests, as the independent
 * implementation we must interoperate with.
 *
 * The returned `file` lacks `url`: the caller uploads the ciphertext and adds the mxc:// URI.
 * The key leaves only inside `file.key.k`, a string (JavaScript cannot wipe strings); the
 * buffer it was made from is zeroed before returning.
 */
export function encryptAttachment(
  plain: Uint8Array,
  options: { maxBytes?: number } = {},
): { ciphertext: Uint8Array; file: Omit<EncryptedFile, 'url'> } {
  checkSize(plain.byteLength, options.maxBytes, 'attachment');
  const key = randomBytes(32);
  const iv = Buffer.alloc(16);
  randomBytes(8).copy(iv, 0);
  try {
    const cipher = createCipheriv('aes-256-ctr', key, iv);
    // CTR is a stream mode: update() returns every byte and final() nothing. Not concatenated,
    // so the result is its own buffer rather than a slice of Node's shared pool.
    const ciphertext = cipher.update(plain);
    cipher.final();
    const sha256 = createHash('sha256').update(ciphertext).digest();
    return {
      ciphertext,
      file: {
        v: 'v2',
        key: {
          kty: 'oct',
          key_ops: ['encrypt', 'decrypt'],
          alg: 'A256CTR',
          k: key.toString('base64url'),
          ext: true,
        },
        iv: unpadded(iv),
        hashes: { sha256: unpadded(sha256) },
      },
    };
  } finally {
    key.fill(0);
  }
}

/** The spec's encoding of binary fields: standard base64 without padding. */
export function unpadded(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .toString('base64')
    .replace(/=+$/, '');
}
