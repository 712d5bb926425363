/**
 * One reason code per way evidence can fail. A UI shows the sentence; scripts and auditors key
 * on the code. Codes are stable: they are part of the API and of stored results.
 */
export const AttestationCode = {
  /** Larger than MAX_EVIDENCE_BYTES: not parsed at all. */
  TooLarge: 'EVIDENCE_TOO_LARGE',
  /** Not JSON, or not the evidence schema. */
  Malformed: 'EVIDENCE_MALFORMED',
  /** The nonce is not the one this verifier sent for this request. */
  NonceMismatch: 'NONCE_MISMATCH',
  /** The challenge is older than the policy's nonceTtlSeconds. */
  NonceExpired: 'NONCE_EXPIRED',
  /** No outstanding challenge for this nonce (already answered, or never sent). */
  NonceUnknown: 'NONCE_UNKNOWN',
  /** The evidence is about another user/device, or for another verifier. */
  WrongSubject: 'WRONG_SUBJECT',
  /** The device or master keys in the evidence differ from the Matrix device's. */
  DeviceKeysMismatch: 'DEVICE_KEYS_MISMATCH',
  AkMalformed: 'AK_MALFORMED',
  /** The AK lacks restricted/sign/fixedTPM/fixedParent/sensitiveDataOrigin, or can decrypt. */
  AkNotRestricted: 'AK_NOT_RESTRICTED',
  /** Neither an AK certificate from a trusted CA nor a credential activation vouches for it. */
  AkNotEnrolled: 'AK_NOT_ENROLLED',
  AkCertUntrusted: 'AK_CERT_UNTRUSTED',
  AttestMalformed: 'ATTEST_MALFORMED',
  SignatureMalformed: 'SIGNATURE_MALFORMED',
  /** The quote's signature does not verify with the AK over the raw TPMS_ATTEST bytes. */
  SignatureInvalid: 'SIGNATURE_INVALID',
  /** qualifyingData is not the binding of this nonce, these identities and keys, this AK. */
  BindingMismatch: 'BINDING_MISMATCH',
  /** The listed PCRs are not the quoted selection. */
  PcrSelectionMismatch: 'PCR_SELECTION_MISMATCH',
  /** The listed PCR values do not hash to the quote's pcrDigest. */
  PcrDigestMismatch: 'PCR_DIGEST_MISMATCH',
  PcrRequiredMissing: 'PCR_REQUIRED_MISSING',
  /** A PCR holds a value the policy does not accept. */
  PcrValueRejected: 'PCR_VALUE_REJECTED',
  /** The TPM's clock or reset/restart counters went backwards since our last look. */
  ClockWentBackwards: 'CLOCK_WENT_BACKWARDS',
  EkCertMissing: 'EK_CERT_MISSING',
  EkCertUntrusted: 'EK_CERT_UNTRUSTED',
  /** The AK was enrolled against a different EK than the one presented now. */
  EkMismatch: 'EK_MISMATCH',
  ManufacturerNotAllowed: 'MANUFACTURER_NOT_ALLOWED',
  EventLogMissing: 'EVENTLOG_MISSING',
  EventLogMalformed: 'EVENTLOG_MALFORMED',
  /** The event log does not replay to the quoted PCR values. */
  EventLogMismatch: 'EVENTLOG_REPLAY_MISMATCH',
  /** The event log has events or values the reference state does not accept. */
  EventLogRejected: 'EVENTLOG_REJECTED',
  PolicyInvalid: 'POLICY_INVALID',
  /** The peer answered with an error instead of evidence (no TPM, vault down, rate limit). */
  PeerRefused: 'PEER_REFUSED',
  /** The peer did not answer in time. */
  NoAnswer: 'NO_ANSWER',
} as const;
export type AttestationFailureCode = (typeof AttestationCode)[keyof typeof AttestationCode];

export interface AttestationFailure {
  code: AttestationFailureCode;
  /** One sentence; names fields and PCR numbers, never key material. */
  message: string;
}
