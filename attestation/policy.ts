import { z } from 'zod';
import { referenceStateSchema } from './eventlog/index.ts';

/**
 * The verifier policy: what this verifier (an endpoint, or an institution's auditor) accepts as
 * a genuine, correctly configured endpoint. Declarative and strict (unknown fields are errors),
 * so a typo cannot silently weaken it. Certificates are PEM text in the file, not paths: the
 * verifier is pure and reads nothing by itself.
 */
const pem = z
  .string()
  .regex(
    /-----BEGIN CERTIFICATE-----[\s\S]+-----END CERTIFICATE-----/,
    'expected a PEM certificate',
  );
const hex32 = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits (SHA-256)');
const pcrIndex = z.coerce.number().int().min(0).max(23);

export const verifierPolicySchema = z
  .object({
    version: z.literal(1),
    /**
     * Roots the EK certificate must chain to (the TPM manufacturers' CAs; swtpm's local CA in
     * tests). With them, an AK is believed after credential activation against that EK.
     */
    ekRoots: z.array(pem).max(32).default([]),
    /** Attestation CAs whose AK certificates are believed without a new activation. */
    akRoots: z.array(pem).max(32).default([]),
    /** TPM manufacturers (the EK certificate's TPM manufacturer attribute, e.g. "id:00001014"). */
    allowedManufacturers: z.array(z.string().min(1).max(64)).max(64).optional(),
    pcrs: z
      .object({
        bank: z.literal('sha256').default('sha256'),
        /** These PCRs must be in the quote. */
        required: z.array(pcrIndex).max(24).default([]),
        /** Accepted values per PCR (any of the list); a PCR not listed may hold anything. */
        golden: z
          .record(z.string().regex(/^([0-9]|1[0-9]|2[0-3])$/), z.array(hex32).min(1).max(64))
          .default({}),
      })
      .strict()
      .default({ bank: 'sha256', required: [], golden: {} }),
    /** Require a TCG event log that replays to the quoted PCRs. */
    requireEventLog: z.boolean().default(false),
    /** The event log's reference state (attestation/eventlog/README.md), when one is required. */
    referenceState: referenceStateSchema.optional(),
    /** A challenge's nonce expires after this long. */
    nonceTtlSeconds: z.number().int().min(5).max(3600).default(300),
    /** A passing result counts as fresh for this long (then re-attest). */
    resultTtlSeconds: z
      .number()
      .int()
      .min(60)
      .max(7 * 86400)
      .default(86400),
  })
  .strict()
  .refine((p) => p.ekRoots.length > 0 || p.akRoots.length > 0, {
    message: 'name at least one trusted EK root (ekRoots) or attestation CA (akRoots)',
  });

export type VerifierPolicy = z.output<typeof verifierPolicySchema>;
export type VerifierPolicyInput = z.input<typeof verifierPolicySchema>;
