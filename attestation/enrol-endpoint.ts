import { type KeyObject, randomBytes } from 'node:crypto';
import { AttestationCode, type AttestationFailure } from './codes.ts';
import { type IssuedAkCertificate, checkProof, issueAkCertificate } from './enrol/index.ts';
import type { VerifierPolicy } from './policy.ts';
import { enrolmentFor } from './trust.ts';
import { parseAkPublic } from './tpm/index.ts';
import { type AttesterIdentity, verifyEvidence } from './verify.ts';

/**
 * An institution's attestation CA enrols one endpoint: it asks for evidence for its own nonce,
 * checks it (everything must pass but the AK's enrolment itself), runs credential activation
 * against the EK certificate the policy trusts, and only when the endpoint's vault proves the
 * AK is on that EK's TPM does it issue an AK certificate. Verifiers that trust this CA then
 * accept the AK without a round trip of their own. The two calls go to the endpoint's local
 * API (the CLI) or any transport a test gives.
 */
export interface EndpointEnrolmentIo {
  evidence(nonce: Uint8Array, verifier: { userId: string; deviceId: string }): Promise<string>;
  activate(request: {
    credentialBlob: Uint8Array;
    encryptedSecret: Uint8Array;
    challengeId: string;
  }): Promise<Uint8Array>;
}

export interface EndpointEnrolment {
  /** The EK roots to check the endpoint's EK certificate against (and its PCR rules). */
  policy: VerifierPolicy;
  /** The endpoint as the CA knows it (not as the evidence claims). */
  expected: AttesterIdentity;
  /** Who the CA is, as bound into the evidence. */
  verifier: { userId: string; deviceId: string };
  caKey: KeyObject;
  caCert: string;
  subject: string;
  validityDays: number;
}

export type EnrolmentOutcome =
  | { ok: true; certificate: IssuedAkCertificate; akName: string }
  | { ok: false; failures: AttestationFailure[] };

export async function enrolEndpoint(
  io: EndpointEnrolmentIo,
  e: EndpointEnrolment,
): Promise<EnrolmentOutcome> {
  const nonce = randomBytes(32);
  const issuedAt = Date.now();
  const statement = await io.evidence(nonce, e.verifier);
  const first = await verifyEvidence(statement, {
    nonce,
    issuedAt,
    now: Date.now(),
    verifier: e.verifier,
    expected: e.expected,
    policy: e.policy,
  });
  const other = first.failures.filter((f) => f.code !== AttestationCode.AkNotEnrolled);
  if (other.length > 0 || !first.evidence || !first.facts) {
    return { ok: false, failures: other.length > 0 ? other : first.failures };
  }
  const enrolment = await enrolmentFor(first.evidence, first.facts.akName, e.policy, Date.now());
  if (!enrolment.ok) return { ok: false, failures: enrolment.failures };
  const a = enrolment.activation;
  try {
    const proof = await io.activate({
      credentialBlob: a.credentialBlob,
      encryptedSecret: a.encryptedSecret,
      challengeId: a.challengeId,
    });
    const akName = Buffer.from(a.akName, 'hex');
    if (!checkProof({ credential: a.credential, akName, challengeId: a.challengeId, proof })) {
      return {
        ok: false,
        failures: [
          {
            code: AttestationCode.AkNotEnrolled,
            message: 'credential activation failed: the AK is not on the TPM that holds this EK',
          },
        ],
      };
    }
  } finally {
    a.credential.fill(0);
  }
  // Parsed (and checked) by the verifier above; its key as a SubjectPublicKeyInfo.
  const spki = parseAkPublic(first.evidence.ak.public).key.export({ type: 'spki', format: 'der' });
  const certificate = await issueAkCertificate({
    caKey: e.caKey,
    caCert: e.caCert,
    akPublicKeyDer: spki,
    akName: Buffer.from(a.akName, 'hex'),
    subject: e.subject,
    validityDays: e.validityDays,
  });
  return { ok: true, certificate, akName: a.akName };
}
