import { type KeyObject, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  type MadeCredential,
  MAX_CREDENTIAL_BYTES,
  MIN_CREDENTIAL_BYTES,
  makeCredential,
} from './credential.ts';
import { EnrolCode, EnrolError } from './errors.ts';
import type { HashName } from './kdf.ts';
import { assertObjectName } from './names.ts';

/**
 * The activation proof. The attester does not send the recovered credential back: anyone on
 * the path who saw it could replay it, and the verifier would learn nothing more from it than
 * from a MAC. It sends
 *
 *   proof = HMAC-SHA256(credential, "mte-activation-proof v1\0" || akName || challengeId)
 *
 * Only a holder of the credential can make it, so a valid proof means the TPM released it,
 * and it names the AK and this challenge, so it is worthless for any other enrolment. The
 * concatenation is unambiguous: the label is fixed, the Name's length follows from its
 * nameAlg, and the challenge id comes last.
 */
export const PROOF_LABEL = 'mte-activation-proof v1\0';
export const PROOF_BYTES = 32;

/** The protocol's challenge ids (attestation/protocol/messages.ts): base64url, 16-64 chars. */
const CHALLENGE_ID = /^[A-Za-z0-9_-]{16,64}$/;

function checkInputs(credential: Uint8Array, akName: Uint8Array, challengeId: string): void {
  if (credential.length < MIN_CREDENTIAL_BYTES || credential.length > MAX_CREDENTIAL_BYTES) {
    throw new EnrolError(EnrolCode.BadInput, 'the credential must be 16 to 32 bytes');
  }
  assertObjectName(akName, 'akName');
  if (!CHALLENGE_ID.test(challengeId)) {
    throw new EnrolError(EnrolCode.BadInput, 'a challenge id is 16-64 base64url characters');
  }
}

/** What the attester sends (its vault computes the same from the TPM's answer). */
export function expectedProof(
  credential: Uint8Array,
  akName: Uint8Array,
  challengeId: string,
): Buffer {
  checkInputs(credential, akName, challengeId);
  return createHmac('sha256', credential)
    .update(Buffer.from(PROOF_LABEL, 'ascii'))
    .update(akName)
    .update(Buffer.from(challengeId, 'ascii'))
    .digest();
}

export interface ProofCheck {
  /** The verifier's own: never from the answer. */
  credential: Uint8Array;
  akName: Uint8Array;
  challengeId: string;
  /** From the answer: any bytes (a wrong length is simply a wrong proof). */
  proof: Uint8Array;
}

/** Constant-time comparison of the answer with the expected proof. */
export function checkProof(input: ProofCheck): boolean {
  const expected = expectedProof(input.credential, input.akName, input.challengeId);
  try {
    return input.proof.length === PROOF_BYTES && timingSafeEqual(expected, input.proof);
  } finally {
    expected.fill(0);
  }
}

export interface Activation extends MadeCredential {
  /** Sent with the blob, and bound into the proof. */
  challengeId: string;
  /**
   * The secret the proof is keyed with. The caller owns it from here: keep it with the
   * outstanding challenge, never send it, and `zeroise` it after the one check (or on expiry).
   */
  credential: Buffer;
}

/** A fresh credential (32 random bytes) and challenge id, and the blob for the attester's TPM. */
export function newActivation(input: {
  ekPublic: KeyObject;
  ekNameAlg: HashName;
  ekSymmetricBits?: 128 | 256;
  akName: Uint8Array;
}): Activation {
  const credential = randomBytes(MAX_CREDENTIAL_BYTES);
  try {
    const made = makeCredential({ ...input, credential });
    return { ...made, credential, challengeId: randomBytes(18).toString('base64url') };
  } catch (e) {
    credential.fill(0);
    throw e;
  }
}

/** Overwrites secrets in place (a JavaScript string cannot be; keep secrets in buffers). */
export function zeroise(...buffers: Uint8Array[]): void {
  for (const b of buffers) b.fill(0);
}
