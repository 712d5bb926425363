/**
 * Remote attestation, the pure part (README.md): evidence, its binding, the verifier and its
 * policy, enrolment, measured boot and the protocol's messages. No I/O; the vault's half is in
 * keyvault/, the endpoint's transport in endpoint/attestation/.
 */
export { createEvidence, type EvidenceRequest } from './attester.ts';
export { BINDING_LABEL, type QuoteBinding, qualifyingData } from './binding.ts';
export { AttestationCode, type AttestationFailure, type AttestationFailureCode } from './codes.ts';
export {
  EVIDENCE_TYPE,
  type Evidence,
  type EvidenceJson,
  MAX_EVENT_LOG_BYTES,
  MAX_EVIDENCE_BYTES,
  evidenceSchema,
  evidenceToJson,
} from './evidence.ts';
export { type VerifierPolicy, type VerifierPolicyInput, verifierPolicySchema } from './policy.ts';
export { VerifierPolicyError, loadVerifierPolicy } from './policy-file.ts';
export { type PendingActivation, enrolmentFor } from './trust.ts';
export {
  type EndpointEnrolment,
  type EndpointEnrolmentIo,
  type EnrolmentOutcome,
  enrolEndpoint,
} from './enrol-endpoint.ts';
export {
  type AttesterIdentity,
  type ClockHistory,
  type VerifiedFacts,
  type VerifyContext,
  type VerifyResult,
  statementAkName,
  verifyEvidence,
} from './verify.ts';
export { checkProof, PROOF_LABEL } from './enrol/index.ts';
export {
  REQUEST_TYPE,
  RESPONSE_TYPE,
  type AttestationRequest,
  type AttestationResponse,
  attestationRequest,
  attestationResponse,
} from './protocol/messages.ts';
export { type Challenge, ChallengeBook } from './protocol/challenges.ts';

/**
 * The PCRs we ask for by default: 0-7, the firmware's (SRTM: code, config, option ROMs, boot
 * loader, Secure Boot policy). A deployment that measures more names them in its config.
 */
export const ATTESTATION_PCRS_DEFAULT: readonly number[] = [0, 1, 2, 3, 4, 5, 6, 7];
