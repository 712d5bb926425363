import { createCipheriv, createDecipheriv, createHash, createHmac } from 'node:crypto';

/** Session crypto from TPM 2.0 Part 1 (11.4.9 KDFa/KDFe, 21 parameter encryption), SHA-256 only. */
export const HASH = 'sha256';
export const DIGEST_BYTES = 32;

export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash(HASH);
  for (const p of parts) h.update(p);
  return h.digest();
}

export function hmac(key: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const h = createHmac(HASH, key);
  for (const p of parts) h.update(p);
  return h.digest();
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** SP 800-108 counter-mode KDF with HMAC, as the TPM defines it. */
export function kdfa(
  key: Uint8Array,
  label: string,
  contextU: Uint8Array,
  contextV: Uint8Array,
  bits: number,
): Buffer {
  const out: Buffer[] = [];
  const labelBytes = Buffer.concat([Buffer.from(label, 'ascii'), Buffer.from([0])]);
  for (let i = 1, have = 0; have * 8 < bits; i++) {
    const block = hmac(key, u32(i), labelBytes, contextU, contextV, u32(bits));
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, bits / 8);
}

/** SP 800-56A concatenation KDF, used to derive a salt from an ECDH shared secret. */
export function kdfe(
  z: Uint8Array,
  label: string,
  partyU: Uint8Array,
  partyV: Uint8Array,
  bits: number,
): Buffer {
  const out: Buffer[] = [];
  const labelBytes = Buffer.concat([Buffer.from(label, 'ascii'), Buffer.from([0])]);
  for (let i = 1, have = 0; have * 8 < bits; i++) {
    const block = sha256(u32(i), z, labelBytes, partyU, partyV);
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, bits / 8);
}

/**
 * AES-128-CFB parameter encryption. Key and IV come from KDFa(sessionValue, "CFB", newer,
 * older): the caller's nonce is "newer" for commands, the TPM's for responses.
 */
export function cfb(
  direction: 'encrypt' | 'decrypt',
  sessionValue: Uint8Array,
  nonceNewer: Uint8Array,
  nonceOlder: Uint8Array,
  data: Uint8Array,
): Buffer {
  const keyIv = kdfa(sessionValue, 'CFB', nonceNewer, nonceOlder, 256);
  const key = keyIv.subarray(0, 16);
  const iv = keyIv.subarray(16, 32);
  const cipher =
    direction === 'encrypt'
      ? createCipheriv('aes-128-cfb', key, iv)
      : createDecipheriv('aes-128-cfb', key, iv);
  const parts = [cipher.update(data), cipher.final()];
  const out = Buffer.concat(parts);
  for (const part of parts) part.fill(0);
  keyIv.fill(0);
  return out;
}
