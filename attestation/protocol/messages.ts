import { z } from 'zod';

/**
 * The attestation protocol's to-device messages. Both travel Olm-encrypted (a stock client
 * that receives one ignores the unknown type); the sender and its device are what the Olm
 * decryption reports, never fields in the content. Sizes are bounded here, before anything
 * else looks at them.
 */
export const REQUEST_TYPE = 'org.mte.attestation.request';
export const RESPONSE_TYPE = 'org.mte.attestation.response';

const b64 = (maxBytes: number) => z.base64().max(Math.ceil(maxBytes / 3) * 4);
const requestId = z.string().regex(/^[A-Za-z0-9_-]{16,64}$/, 'expected a request id');

export const attestationRequest = z
  .object({
    request_id: requestId,
    /** 32 random bytes, single use. */
    nonce: b64(32).refine((s) => Buffer.from(s, 'base64').length === 32, 'expected 32 bytes'),
    /** SHA-256 PCRs to quote. */
    pcrs: z.array(z.number().int().min(0).max(23)).min(1).max(24),
    /**
     * Credential activation (attestation/enrol): made by the verifier against the EK and AK it
     * saw in an earlier answer. The attester's vault recovers the credential only if that AK
     * is on the TPM that holds that EK, and answers with a proof of it.
     */
    activation: z
      .object({
        challenge_id: requestId,
        credential_blob: b64(512),
        encrypted_secret: b64(1024),
      })
      .strict()
      .optional(),
  })
  .strict();
export type AttestationRequest = z.infer<typeof attestationRequest>;

export const attestationResponse = z.union([
  z
    .object({
      request_id: requestId,
      /** The evidence statement (attestation/evidence.ts), as JSON text, verified as such. */
      evidence: z.string().max(48 * 1024),
      activation: z
        .object({ challenge_id: requestId, proof: b64(32) })
        .strict()
        .optional(),
    })
    .strict(),
  z
    .object({
      request_id: requestId,
      error: z
        .object({
          code: z.string().regex(/^[A-Z][A-Z0-9_]{0,63}$/),
          message: z.string().max(300),
        })
        .strict(),
    })
    .strict(),
]);
export type AttestationResponse = z.infer<typeof attestationResponse>;
