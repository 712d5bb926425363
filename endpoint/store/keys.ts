/**
 * Keys derived from the vault's store key, one per purpose (HKDF-SHA256, a fixed salt is fine
 * because the input is already a uniformly random 32-byte key). The matrix-sdk store cipher
 * uses the same store key with its own derivation, so the labels here keep the two apart.
 * Kept as Buffers, not KeyObjects, so close() can overwrite them.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { StoreCode, StoreError } from './errors.ts';

const SALT = Buffer.from('matrix-trusted-endpoint durable store v1');
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const KEY_CHECK_BYTES = 16;
export const MAC_BYTES = 16;

export interface StoreKeys {
  /** AES-256-GCM for journal records. */
  journal: Buffer;
  /** AES-256-GCM for snapshots. */
  snapshot: Buffer;
  /** HMAC-SHA256 over journal headers. */
  header: Buffer;
  /**
   * A public fingerprint of the store key (an independent HKDF output, so it reveals nothing
   * about the other keys). It lets open() tell "sealed under another key" from "tampered".
   */
  keyCheck: Buffer;
}

function derive(storeKey: Uint8Array, label: string, length: number): Buffer {
  return Buffer.from(hkdfSync('sha256', storeKey, SALT, `mte-store/${label}`, length));
}

export function deriveKeys(storeKey: Uint8Array): StoreKeys {
  if (!(storeKey instanceof Uint8Array) || storeKey.length !== 32) {
    throw new StoreError(StoreCode.BadOptions, 'the store key must be 32 bytes');
  }
  return {
    journal: derive(storeKey, 'journal-aes-256-gcm', 32),
    snapshot: derive(storeKey, 'snapshot-aes-256-gcm', 32),
    header: derive(storeKey, 'journal-header-hmac', 32),
    keyCheck: derive(storeKey, 'key-check', KEY_CHECK_BYTES),
  };
}

export function zeroiseKeys(keys: StoreKeys): void {
  keys.journal.fill(0);
  keys.snapshot.fill(0);
  keys.header.fill(0);
  keys.keyCheck.fill(0);
}

/** nonce || ciphertext || tag, with a fresh random nonce (never reused, even after a crash). */
export function seal(key: Buffer, aad: Uint8Array, plaintext: Uint8Array): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

/** The plaintext, or null when authentication fails (wrong key, tampering, wrong AAD). */
export function unseal(key: Buffer, aad: Uint8Array, sealed: Uint8Array): Buffer | null {
  if (sealed.length < NONCE_BYTES + TAG_BYTES) return null;
  const nonce = sealed.subarray(0, NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const body = sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES);
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, nonce);
    decipher.setAAD(aad);
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    return null;
  }
}

export function mac(key: Buffer, data: Uint8Array): Buffer {
  return createHmac('sha256', key).update(data).digest().subarray(0, MAC_BYTES);
}
