/** Key pairs for CAs and leaves, their files (private keys 0600, never replaced), public keys. */
import { createPrivateKey, createPublicKey, type webcrypto } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { X509Error } from './errors.ts';

export const KEY_TYPES = ['rsa-3072', 'rsa-2048', 'rsa-4096', 'ecdsa-p256'] as const;
export type KeyType = (typeof KEY_TYPES)[number];

export interface SigningKey {
  /** For signing certificates (CA keys). */
  privateKey: webcrypto.CryptoKey;
  /** SubjectPublicKeyInfo, DER. */
  spki: Uint8Array;
  /** The WebCrypto algorithm certificates are signed with: SHA-256 with RSA or ECDSA. */
  algorithm:
    webcrypto.RsaHashedImportParams | (webcrypto.EcKeyImportParams & webcrypto.EcdsaParams);
}

const RSA: webcrypto.RsaHashedImportParams = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
const ECDSA = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export function isKeyType(s: string): s is KeyType {
  return (KEY_TYPES as readonly string[]).includes(s);
}

/** A fresh key pair; returns it and its PKCS#8 PEM (to be written with writePrivateKey). */
export async function generateKey(type: KeyType): Promise<{ key: SigningKey; pkcs8Pem: string }> {
  const algorithm = type === 'ecdsa-p256' ? ECDSA : RSA;
  const params =
    type === 'ecdsa-p256'
      ? ECDSA
      : {
          ...RSA,
          modulusLength: Number(type.slice(4)),
          publicExponent: new Uint8Array([1, 0, 1]),
        };
  const pair = await crypto.subtle.generateKey(params, true, ['sign', 'verify']);
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey('pkcs8', pair.privateKey));
  const spki = new Uint8Array(await crypto.subtle.exportKey('spki', pair.publicKey));
  const pkcs8Pem = createPrivateKey({ key: Buffer.from(pkcs8), format: 'der', type: 'pkcs8' })
    .export({ format: 'pem', type: 'pkcs8' })
    .toString();
  return { key: { privateKey: pair.privateKey, spki, algorithm }, pkcs8Pem };
}

/** Writes a private key 0600, refusing to replace an existing file (a key is never overwritten). */
export async function writePrivateKey(path: string, pem: string): Promise<void> {
  try {
    await writeFile(path, pem, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new X509Error(
      'X509_IO',
      code === 'EEXIST'
        ? `${path} exists; a key file is never replaced (choose another --out)`
        : `cannot write ${path} (${code})`,
    );
  }
}

/** Writes a certificate (public) 0644, refusing to replace an existing file. */
export async function writePublicFile(path: string, text: string): Promise<void> {
  try {
    await writeFile(path, text, { mode: 0o644, flag: 'wx' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new X509Error(
      'X509_IO',
      code === 'EEXIST' ? `${path} exists; not replacing it` : `cannot write ${path} (${code})`,
    );
  }
}

export async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new X509Error(
      'X509_IO',
      `cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
}

/** A CA's signing key from its PKCS#8 PEM: RSA (SHA-256 PKCS#1 v1.5) or ECDSA P-256 (SHA-256). */
export async function loadSigningKey(pem: string): Promise<SigningKey> {
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new X509Error('X509_BAD_KEY', 'the CA key is not a PEM private key');
  }
  const type = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  let algorithm: SigningKey['algorithm'];
  if (type === 'rsa') algorithm = RSA;
  else if (type === 'ec' && curve === 'prime256v1') algorithm = ECDSA;
  else {
    throw new X509Error(
      'X509_BAD_KEY',
      `CA keys must be RSA or ECDSA P-256 (this one is ${type ?? '?'}${curve ? ` ${curve}` : ''})`,
    );
  }
  const pkcs8 = key.export({ format: 'der', type: 'pkcs8' });
  const privateKey = await crypto.subtle.importKey('pkcs8', pkcs8, algorithm, false, ['sign']);
  const spki = new Uint8Array(createPublicKey(key).export({ format: 'der', type: 'spki' }));
  return { privateKey, spki, algorithm };
}

/** A SubjectPublicKeyInfo from DER or PEM bytes (the vault's `spki` is DER). */
export function parsePublicKey(data: Uint8Array | string): Uint8Array {
  const text = typeof data === 'string' ? data : Buffer.from(data).toString('latin1');
  try {
    const key = text.includes('-----BEGIN')
      ? createPublicKey({ key: text, format: 'pem' })
      : createPublicKey({ key: Buffer.from(data), format: 'der', type: 'spki' });
    return new Uint8Array(key.export({ format: 'der', type: 'spki' }));
  } catch {
    throw new X509Error(
      'X509_BAD_KEY',
      'not a public key (expected SubjectPublicKeyInfo, DER or PEM)',
    );
  }
}
