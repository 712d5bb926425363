import { EnrolCode, EnrolError } from './errors.ts';

/**
 * A TPM object's Name: its nameAlg (TPM_ALG_ID, u16) followed by that hash of its TPMT_PUBLIC
 * (Part 1 §16). It is what the credential is bound to, and, because the public area carries
 * the object's attributes, it names "this key with these properties", not just a key.
 */
const NAME_DIGESTS: ReadonlyMap<number, { hash: string; bytes: number }> = new Map([
  [0x000b, { hash: 'sha256', bytes: 32 }],
  [0x000c, { hash: 'sha384', bytes: 48 }],
  [0x000d, { hash: 'sha512', bytes: 64 }],
]);

/** The longest Name accepted (TPM_ALG_SHA512): bounds what a peer can make us hash. */
export const MAX_NAME_BYTES = 2 + 64;

/** True for a well-formed object Name (SHA-256, -384 or -512; SHA-1 Names are refused). */
export function isObjectName(name: Uint8Array): boolean {
  if (name.length < 2 || name.length > MAX_NAME_BYTES) return false;
  const alg = ((name[0] ?? 0) << 8) | (name[1] ?? 0);
  return NAME_DIGESTS.get(alg)?.bytes === name.length - 2;
}

export function assertObjectName(name: Uint8Array, what: string): void {
  if (!isObjectName(name)) {
    throw new EnrolError(
      EnrolCode.BadInput,
      `${what} is not a TPM object Name (nameAlg SHA-256/384/512, then its digest)`,
    );
  }
}
