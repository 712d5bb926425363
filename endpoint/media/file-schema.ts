import { formatZodIssues } from '../../keyvault/common/zod-issues.ts';
import { z } from 'zod';
import { AttachmentCode, AttachmentError } from './errors.ts';
import { mxcUri } from './mxc.ts';

/**
 * The `file` object of an encrypted attachment (spec, "Sending encrypted attachments"), as it
 * arrives from peers inside decrypted events: untrusted. Unknown fields are dropped.
 *
 * Version: only "v2" is accepted. The spec says it must be v2, matrix-js-sdk and Element send
 * v2, and the Node.js half of matrix-encrypt-attachment decrypts nothing else. v0 and v1
 * differ only in how the AES-CTR counter wraps (v0 carries into all 128 bits, v1/v2 only into
 * the low 64), and were sent by clients long gone; refusing them keeps one counter semantics
 * to reason about (see the wrap check in decrypt.ts) at no cost to today's peers.
 *
 * Key: `kty` "oct" and `alg` "A256CTR" are the only key the spec defines; `key_ops` must name
 * both "encrypt" and "decrypt" (the spec's "must", and WebCrypto, hence Element, refuses to
 * import the key otherwise); `ext` is a WebCrypto detail Element does not insist on, so it is
 * optional here too.
 */
export interface EncryptedFileKey {
  kty: 'oct';
  key_ops: string[];
  alg: 'A256CTR';
  /** 32 bytes, unpadded base64url (JWK). */
  k: string;
  ext?: boolean;
}

export interface EncryptedFile {
  /** mxc://<server-name>/<media-id> of the ciphertext. */
  url: string;
  key: EncryptedFileKey;
  /** The 16-byte initial counter block, unpadded base64. */
  iv: string;
  /** SHA-256 of the ciphertext (32 bytes, unpadded base64). */
  hashes: { sha256: string };
  v: 'v2';
}

export const keyBytes = 32;
export const ivBytes = 16;
export const sha256Bytes = 32;

/**
 * Base64 of exactly `bytes` bytes. The alphabet is checked first because Buffer's decoder
 * skips characters it does not know instead of failing; padding is allowed because some
 * clients send it, and Element accepts it.
 */
function base64Of(bytes: number, alphabet: 'base64' | 'base64url'): z.ZodType<string> {
  const chars = alphabet === 'base64' ? /^[A-Za-z0-9+/]+={0,2}$/ : /^[A-Za-z0-9_-]+$/;
  const rule = `must be ${bytes} bytes of ${alphabet === 'base64' ? 'base64' : 'unpadded base64url'}`;
  return z
    .string()
    .max(128)
    .regex(chars, rule)
    .refine((s) => Buffer.from(s, alphabet).length === bytes, rule);
}

const keyOp = z.string().max(32);

export const encryptedFileKey: z.ZodType<EncryptedFileKey> = z.object({
  kty: z.literal('oct'),
  key_ops: z
    .array(keyOp)
    .max(16)
    .refine(
      (ops) => ops.includes('encrypt') && ops.includes('decrypt'),
      'must include "encrypt" and "decrypt"',
    ),
  alg: z.literal('A256CTR'),
  k: base64Of(keyBytes, 'base64url'),
  ext: z.boolean().exactOptional(),
});

export const encryptedFile: z.ZodType<EncryptedFile> = z.object({
  url: mxcUri,
  key: encryptedFileKey,
  iv: base64Of(ivBytes, 'base64'),
  hashes: z.object({ sha256: base64Of(sha256Bytes, 'base64') }),
  v: z.literal('v2'),
});

/** Checks an untrusted `file` object, or throws ATTACHMENT_INVALID naming the field and rule. */
export function parseEncryptedFile(value: unknown): EncryptedFile {
  const parsed = encryptedFile.safeParse(value);
  if (parsed.success) return parsed.data;
  throw new AttachmentError(
    AttachmentCode.Invalid,
    `encrypted file object is invalid: ${formatZodIssues(parsed.error, 'file')}`,
  );
}
