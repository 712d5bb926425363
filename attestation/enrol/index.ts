/**
 * AK enrolment, verifier side (README.md): make a credential only the TPM holding a given EK
 * can recover for a given AK, check the attester's proof that it did, check EK certificates
 * against manufacturer CAs, and issue and check AK certificates of an attestation CA. Pure:
 * no TPM, no network, no files.
 */
export {
  EnrolCode,
  EnrolError,
  type EnrolErrorCode,
  isEnrolError,
  EkCertCode,
  type EkCertFailureCode,
  AkCertCode,
  type AkCertFailureCode,
  type CheckFailure,
} from './errors.ts';
export { DIGEST_BYTES, type HashName, kdfa, kdfe } from './kdf.ts';
export { MAX_NAME_BYTES, isObjectName } from './names.ts';
export {
  MAX_CREDENTIAL_BYTES,
  MIN_CREDENTIAL_BYTES,
  type MadeCredential,
  type MakeCredentialInput,
  ekTemplateParameters,
  makeCredential,
} from './credential.ts';
export {
  type Activation,
  PROOF_BYTES,
  PROOF_LABEL,
  type ProofCheck,
  checkProof,
  expectedProof,
  newActivation,
  zeroise,
} from './proof.ts';
export { MAX_CERT_BYTES } from './certificates.ts';
export { TCG_OID, type TpmInfo } from './tcg.ts';
export {
  type CheckedEkCertificate,
  type EkCertificateOptions,
  type EkCertificateResult,
  checkEkCertificate,
} from './ek-cert.ts';
export {
  AK_NAME_PREFIX,
  type AkCertificateOptions,
  type AkCertificateRequest,
  type AkCertificateResult,
  type CheckedAkCertificate,
  type IssuedAkCertificate,
  akNameSerialNumber,
  checkAkCertificate,
  issueAkCertificate,
} from './ak-cert.ts';
