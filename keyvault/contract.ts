import { z } from 'zod';
import { bytes, defineContract, noParams } from './common/rpc/index.ts';
import { backedUpRoomKey, encryptedSessionData } from './backup/megolm-v1.ts';
import { backupPublicKey } from './backup/key-file.ts';
import { BACKUP_KEY_MODES, PURPOSE_ALGORITHM, SIGNING_PURPOSES } from './vault.ts';

/**
 * The vault's RPC contract: what the endpoint may ask of the keyvault compartment, and nothing
 * more. provision and doctor are deliberately absent: they are local admin operations
 * (keyvault/main.ts), never something a possibly compromised endpoint may trigger.
 */

/** JSON has no 64-bit integers, so counters travel as decimal strings and arrive as bigint. */
const counter = z.codec(
  z.string().regex(/^(0|[1-9][0-9]{0,19})$/, 'expected a non-negative decimal integer'),
  z
    .bigint()
    .min(0n)
    .max(2n ** 64n - 1n),
  { decode: (s) => BigInt(s), encode: (n) => n.toString() },
);

/** bytes(), typed as the Vault interface's Uint8Array (over any buffer, a Buffer slice say). */
const bin = (maxBytes: number): z.ZodCodec<z.ZodBase64, z.ZodType<Uint8Array>> =>
  bytes({ maxBytes });

const purpose = z.enum(SIGNING_PURPOSES);
const algorithm = z.enum(Object.values(PURPOSE_ALGORITHM));
const pcr = z.number().int().min(0).max(23);
const label = z.string().max(512);

/** A backed-up session's `session_data`, as backupDecrypt takes it (for its callers). */
export { encryptedSessionData };

export const MAX_SIGN_MESSAGE_BYTES = 64 * 1024;
/** Sessions per backupDecrypt call: a restore sends its download in batches of this many. */
export const MAX_BACKUP_BATCH = 128;

const matrixId = z.string().min(1).max(255);

export const vaultContract = defineContract({
  storeKey: {
    params: noParams,
    result: bin(32).refine((b) => b.length === 32, 'expected 32 bytes'),
  },
  counterRead: { params: noParams, result: counter },
  counterIncrement: { params: noParams, result: counter },
  publicKey: {
    params: z.object({ purpose }).strict(),
    result: z.object({ purpose, algorithm, spki: bin(4096) }).strict(),
  },
  sign: {
    params: z.object({ purpose, message: bin(MAX_SIGN_MESSAGE_BYTES) }).strict(),
    result: bin(1024),
  },
  quote: {
    params: z
      .object({
        qualifyingData: bin(64),
        selection: z
          .object({
            hash: z.literal('sha256'),
            pcrs: z
              .array(pcr)
              .min(1)
              .max(24)
              .refine((a) => new Set(a).size === a.length, 'PCR indices must be unique'),
          })
          .strict(),
      })
      .strict(),
    result: z
      .object({
        attest: bin(2048),
        signature: bin(1024),
        pcrValues: z.array(z.object({ pcr, digest: bin(64) }).strict()).max(24),
      })
      .strict(),
  },
  attestationIdentity: {
    params: noParams,
    result: z
      .object({
        akPublic: bin(2048),
        akName: bin(66),
        ekCertificate: bin(16 * 1024).optional(),
      })
      .strict(),
  },
  activateCredential: {
    params: z
      .object({
        credentialBlob: bin(512),
        encryptedSecret: bin(1024),
        challengeId: z.string().regex(/^[A-Za-z0-9_-]{16,64}$/),
      })
      .strict(),
    result: bin(32).refine((b) => b.length === 32, 'expected 32 bytes'),
  },
  random: {
    params: z.object({ n: z.number().int().min(1).max(1024) }).strict(),
    result: bin(1024),
  },
  status: {
    params: noParams,
    result: z
      .object({
        backend: z.enum(['tpm', 'pkcs11', 'dev']),
        identity: label,
        capabilities: z
          .object({ found: z.array(label).max(64), missing: z.array(label).max(64) })
          .strict(),
        provisioned: z
          .object({
            storeKey: z.boolean(),
            counter: z.boolean(),
            purposes: z.array(purpose).max(SIGNING_PURPOSES.length),
            attestationKey: z.boolean(),
            counterStart: z
              .string()
              .regex(/^(0|[1-9][0-9]{0,19})$/)
              .optional(),
          })
          .strict(),
        counterGuarantee: z.string().max(1024),
        warnings: z.array(z.string().max(1024)).max(16),
      })
      .strict(),
  },
  backupKey: {
    params: noParams,
    result: z
      .object({
        mode: z.enum(BACKUP_KEY_MODES),
        publicKey: backupPublicKey,
        createdAt: z.iso.datetime(),
        canDecrypt: z.boolean(),
      })
      .strict()
      .nullable(),
  },
  backupDecrypt: {
    params: z
      .object({
        publicKey: backupPublicKey,
        sessions: z
          .array(
            z
              .object({ roomId: matrixId, sessionId: matrixId, sessionData: encryptedSessionData })
              .strict(),
          )
          .max(MAX_BACKUP_BATCH),
      })
      .strict(),
    result: z
      .array(
        z.discriminatedUnion('ok', [
          z
            .object({
              roomId: matrixId,
              sessionId: matrixId,
              ok: z.literal(true),
              session: backedUpRoomKey,
            })
            .strict(),
          z
            .object({
              roomId: matrixId,
              sessionId: matrixId,
              ok: z.literal(false),
              code: z.enum(['BACKUP_BAD_INPUT', 'BACKUP_MAC_MISMATCH', 'BACKUP_NOT_A_ROOM_KEY']),
            })
            .strict(),
        ]),
      )
      .max(MAX_BACKUP_BATCH),
  },
});
export type VaultContract = typeof vaultContract;
