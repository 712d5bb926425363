import { createPublicKey } from 'node:crypto';
import { VaultCode, VaultError } from '../vault.ts';

/** SubjectPublicKeyInfo header for an Ed25519 key (RFC 8410): SEQUENCE, id-Ed25519, BIT STRING. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/**
 * The 32-byte Ed25519 point from CKA_EC_POINT. PKCS#11 3.0 says raw bytes, older practice (and
 * SoftHSM) wraps them in a DER OCTET STRING; both are accepted, anything else is refused.
 */
export function ed25519PointFromEcPoint(ecPoint: Uint8Array): Uint8Array {
  if (ecPoint.length === 32) return ecPoint;
  if (ecPoint.length === 34 && ecPoint[0] === 0x04 && ecPoint[1] === 0x20) {
    return ecPoint.subarray(2);
  }
  throw new VaultError(
    VaultCode.HardwareError,
    `the token's CKA_EC_POINT for the Ed25519 key is neither 32 raw bytes nor a DER OCTET STRING of them (${ecPoint.length} bytes)`,
  );
}

export function ed25519Spki(point: Uint8Array): Uint8Array {
  return new Uint8Array(Buffer.concat([ED25519_SPKI_PREFIX, point]));
}

/** RSA SPKI from the modulus and public exponent (big-endian, as PKCS#11 stores them). */
export function rsaSpki(modulus: Uint8Array, exponent: Uint8Array): Uint8Array {
  const b64url = (bytes: Uint8Array): string => {
    let start = 0;
    while (start < bytes.length - 1 && bytes[start] === 0) start++;
    return Buffer.from(bytes.subarray(start)).toString('base64url');
  };
  const key = createPublicKey({
    key: { kty: 'RSA', n: b64url(modulus), e: b64url(exponent) },
    format: 'jwk',
  });
  return new Uint8Array(key.export({ type: 'spki', format: 'der' }));
}
