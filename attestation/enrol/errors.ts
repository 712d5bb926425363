/**
 * Two kinds of failure. Checks of what a peer sent (EK and AK certificates, an activation
 * proof) never throw: they answer `{ ok: false, code, message }`, because a bad certificate is
 * an expected outcome the verifier reports, not a bug. Misuse by our own code or a CA
 * operator (a wrong key type, an AK Name that is not a Name, a CA key that is not the CA's)
 * throws an EnrolError: carrying on would produce a credential or certificate nobody can use.
 *
 * Messages name the certificate and the rule, never key material.
 */
export const EnrolCode = {
  /** A caller's argument is out of range or not what the function takes. */
  BadInput: 'ENROL_BAD_INPUT',
  /** A key of a type or size enrolment does not handle (EK: RSA 2048-4096, P-256, P-384; AK: P-256). */
  UnsupportedKey: 'ENROL_UNSUPPORTED_KEY',
} as const;
export type EnrolErrorCode = (typeof EnrolCode)[keyof typeof EnrolCode];

export class EnrolError extends Error {
  override name = 'EnrolError';
  readonly code: EnrolErrorCode;
  constructor(code: EnrolErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

export function isEnrolError(e: unknown, code?: EnrolErrorCode): e is EnrolError {
  return e instanceof EnrolError && (code === undefined || e.code === code);
}

/** Why an EK certificate is not believed. */
export const EkCertCode = {
  /** Not one DER certificate, or an EK key enrolment cannot use, or a CA certificate. */
  Malformed: 'EK_CERT_MALFORMED',
  /** No path to a configured root, a broken link, an issuer that is not a CA, a wrong purpose. */
  Untrusted: 'EK_CERT_UNTRUSTED',
  /** A certificate on the path is outside its validity period (expired or not yet valid). */
  Expired: 'EK_CERT_EXPIRED',
  /** The certified key is not the EK public key the caller expected. */
  KeyMismatch: 'EK_CERT_KEY_MISMATCH',
} as const;
export type EkCertFailureCode = (typeof EkCertCode)[keyof typeof EkCertCode];

/** Why an AK certificate is not believed. */
export const AkCertCode = {
  Malformed: 'AK_CERT_MALFORMED',
  /** No path to a configured attestation CA, or not issued as an AK certificate. */
  Untrusted: 'AK_CERT_UNTRUSTED',
  Expired: 'AK_CERT_EXPIRED',
  /** The certified key is not the AK in the evidence. */
  KeyMismatch: 'AK_CERT_KEY_MISMATCH',
  /** The certificate names another AK (or none): the TPM object differs even if the key is equal. */
  NameMismatch: 'AK_CERT_NAME_MISMATCH',
} as const;
export type AkCertFailureCode = (typeof AkCertCode)[keyof typeof AkCertCode];

export interface CheckFailure<C extends string> {
  ok: false;
  code: C;
  /** One sentence, for a log or a UI. */
  message: string;
}

export function failure<C extends string>(code: C, message: string): CheckFailure<C> {
  return { ok: false, code, message };
}
