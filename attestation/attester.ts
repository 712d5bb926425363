import type { Vault } from '../keyvault/vault.ts';
import { type AttesterIdentity } from './verify.ts';
import { qualifyingData } from './binding.ts';
import { EVIDENCE_TYPE, type Evidence, MAX_EVIDENCE_BYTES, evidenceToJson } from './evidence.ts';

/**
 * The attester's half: asks the vault for a quote whose qualifying data binds the verifier's
 * nonce to this device, and packs the TPM's raw answers into a statement. The vault reads the
 * PCR values in the same call as the quote (keyvault/tpm/backend.ts); the verifier checks
 * them against the quote's digest anyway, so a PCR that moved in between is caught.
 */
export interface EvidenceRequest {
  nonce: Uint8Array;
  verifier: { userId: string; deviceId: string };
  self: AttesterIdentity;
  pcrs: readonly number[];
  /** Optional TCG event log bytes for the quoted PCRs. */
  eventLog?: Uint8Array;
  /** An AK certificate from an attestation CA, when this endpoint has one. */
  akCertificate?: Uint8Array;
}

export async function createEvidence(
  vault: Pick<Vault, 'quote' | 'attestationIdentity'>,
  request: EvidenceRequest,
): Promise<Evidence> {
  const pcrs = [...new Set(request.pcrs)].sort((a, b) => a - b);
  const identity = await vault.attestationIdentity();
  const data = qualifyingData({
    nonce: request.nonce,
    verifier: request.verifier,
    attester: request.self,
    pcrs,
    akName: identity.akName,
  });
  const quote = await vault.quote(data, { hash: 'sha256', pcrs });
  const evidence: Evidence = {
    type: EVIDENCE_TYPE,
    version: 1,
    subject: { ...request.self },
    verifier: { ...request.verifier },
    nonce: Buffer.from(request.nonce),
    quote: { attest: Buffer.from(quote.attest), signature: Buffer.from(quote.signature) },
    pcrs: {
      bank: 'sha256',
      values: quote.pcrValues.map((v) => ({ pcr: v.pcr, digest: Buffer.from(v.digest) })),
    },
    ak: {
      public: Buffer.from(identity.akPublic),
      ...(request.akCertificate ? { certificate: Buffer.from(request.akCertificate) } : {}),
    },
    ek: identity.ekCertificate ? { certificate: Buffer.from(identity.ekCertificate) } : {},
    ...(request.eventLog ? { eventLog: Buffer.from(request.eventLog) } : {}),
  };
  const size = Buffer.byteLength(JSON.stringify(evidenceToJson(evidence)), 'utf8');
  if (size > MAX_EVIDENCE_BYTES) {
    throw new Error(`the evidence would be ${size} bytes, over the ${MAX_EVIDENCE_BYTES} limit`);
  }
  return evidence;
}
