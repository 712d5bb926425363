import { z } from 'zod';

/**
 * The evidence statement, version 1: what an attester sends a verifier (and what an auditor
 * verifies offline). JSON, binary fields in standard base64. Nothing in it is trusted for what
 * it says about itself: the TPM structures are kept as the raw bytes the TPM produced and the
 * verifier parses and checks them; `subject` and `verifier` are echoed so a human reading a
 * stored statement knows what it was about, but the verifier compares them with what it knows
 * and recomputes the quote's binding from its own values (binding.ts).
 *
 * Bounded: the whole statement at most MAX_EVIDENCE_BYTES, each field by its own limit, so a
 * peer cannot make the verifier parse megabytes. An event log larger than that travels as an
 * encrypted attachment (see README), not in the statement.
 */
export const EVIDENCE_TYPE = 'org.mte.attestation.evidence';
export const MAX_EVIDENCE_BYTES = 48 * 1024;
/** An event log larger than this does not fit in a v1 statement (README: what is next). */
export const MAX_EVENT_LOG_BYTES = 32 * 1024;

const b64 = (maxBytes: number) =>
  z
    .base64()
    .max(Math.ceil(maxBytes / 3) * 4, `at most ${maxBytes} bytes`)
    .transform((s) => Buffer.from(s, 'base64'));

const matrixId = z.string().min(1).max(255);
const key = z.string().regex(/^[A-Za-z0-9+/]{43}$/, 'expected an unpadded base64 32-byte key');

export const evidenceSchema = z
  .object({
    type: z.literal(EVIDENCE_TYPE),
    version: z.literal(1),
    subject: z
      .object({
        userId: matrixId,
        deviceId: matrixId,
        ed25519: key,
        curve25519: key,
        masterKey: key,
      })
      .strict(),
    verifier: z.object({ userId: matrixId, deviceId: matrixId }).strict(),
    nonce: b64(32),
    quote: z
      .object({
        /** TPMS_ATTEST, exactly as the TPM returned it (the signature covers these bytes). */
        attest: b64(1024),
        /** TPMT_SIGNATURE. */
        signature: b64(256),
      })
      .strict(),
    pcrs: z
      .object({
        bank: z.literal('sha256'),
        values: z
          .array(z.object({ pcr: z.number().int().min(0).max(23), digest: b64(32) }).strict())
          .min(1)
          .max(24),
      })
      .strict(),
    ak: z
      .object({
        /** TPMT_PUBLIC of the attestation key. */
        public: b64(512),
        /** DER, from an attestation CA the verifier may trust (enrol/). */
        certificate: b64(4096).optional(),
      })
      .strict(),
    ek: z
      .object({
        /** DER EK certificate from the TPM's NV, and any intermediates (DER) up to a root. */
        certificate: b64(4096).optional(),
        chain: z.array(b64(4096)).max(4).optional(),
      })
      .strict(),
    /** Optional: a TCG event log (crypto-agile) for the quoted PCRs. */
    eventLog: b64(MAX_EVENT_LOG_BYTES).optional(),
  })
  .strict();

export type Evidence = z.output<typeof evidenceSchema>;
export type EvidenceJson = z.input<typeof evidenceSchema>;

/** The JSON form of evidence (for a to-device message, a file, the API). */
export function evidenceToJson(e: Evidence): EvidenceJson {
  const b = (x: Uint8Array) => Buffer.from(x).toString('base64');
  return {
    type: e.type,
    version: e.version,
    subject: { ...e.subject },
    verifier: { ...e.verifier },
    nonce: b(e.nonce),
    quote: { attest: b(e.quote.attest), signature: b(e.quote.signature) },
    pcrs: {
      bank: 'sha256',
      values: e.pcrs.values.map((v) => ({ pcr: v.pcr, digest: b(v.digest) })),
    },
    ak: {
      public: b(e.ak.public),
      ...(e.ak.certificate ? { certificate: b(e.ak.certificate) } : {}),
    },
    ek: {
      ...(e.ek.certificate ? { certificate: b(e.ek.certificate) } : {}),
      ...(e.ek.chain ? { chain: e.ek.chain.map(b) } : {}),
    },
    ...(e.eventLog ? { eventLog: b(e.eventLog) } : {}),
  };
}
