import { z } from 'zod';

/**
 * The vault's configuration file (JSON), validated at start-up. Secrets (PINs, auth values)
 * are never in this file's values or in argv: only the name of a file or an environment
 * variable that holds them.
 */
const secretSource = z
  .union([
    z.object({ file: z.string().min(1) }).strict(),
    z.object({ env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/) }).strict(),
  ])
  .describe('where a PIN or auth value comes from: {"file": path} or {"env": NAME}');

const pcrIndex = z.number().int().min(0).max(23);

/**
 * A Matrix user id (`@localpart:server`, at most 255 characters): the historical localpart
 * grammar (printable ASCII but ':'), then a DNS name, an IPv4 or a bracketed IPv6 literal, and
 * an optional port.
 */
export const matrixUserId = z
  .string()
  .max(255)
  .regex(
    /^@[\x21-\x39\x3b-\x7e]+:(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(:[0-9]{1,5})?$/,
    'expected a Matrix user id, @localpart:server',
  );

/**
 * Whose vault this is: the Matrix user whose cross-signing objects the vault signs, and the only
 * one (keyvault/purposes). In the vault's own config, which the endpoint cannot write. Optional
 * for init, status and doctor; signing refuses without it.
 */
const owner = z
  .object({ userId: matrixUserId })
  .strict()
  .optional()
  .describe('whose keys these are: {"userId": "@alice:example.org"}');

export const tpmConfig = z
  .object({
    backend: z.literal('tpm'),
    owner,
    /** Sealed blobs and public areas live here (nothing secret in clear). */
    stateDir: z.string().min(1),
    transport: z
      .union([
        z.object({ device: z.string().min(1) }).strict(),
        z
          .object({
            swtpm: z.union([
              z
                .object({ host: z.string(), port: z.number().int(), ctrlPort: z.number().int() })
                .strict(),
              // Unix sockets (swtpm --server type=unixio, --ctrl type=unixio): a vault in a
              // network namespace without network reaches swtpm only so. Relative paths are
              // taken relative to the config file, like stateDir.
              z.object({ path: z.string().min(1), ctrlPath: z.string().min(1) }).strict(),
            ]),
          })
          .strict(),
      ])
      .describe(
        'how to reach the TPM: {"device": path}, {"swtpm": {"host", "port", "ctrlPort"}} (TCP) or {"swtpm": {"path", "ctrlPath"}} (Unix sockets)',
      ),
    /** PCRs (SHA-256 bank) the store key and the cross-signing seed are sealed to. */
    pcrs: z.array(pcrIndex).min(1).max(24),
    /**
     * Optional, and best left out: the NV index of this vault's anti-rollback counter (owner
     * range 0x01000000-0x01bfffff). Without it, provisioning picks a free index at random in
     * 0x01800000-0x01bfffff and records it in the state. With it, that index must not exist
     * when the vault is provisioned (an existing index is never adopted: VAULT_COUNTER_FOREIGN)
     * and must afterwards equal the one recorded. No default: a shared fixed index would let
     * whoever defines it first own the counter, and two vaults on one TPM break each other.
     */
    nvCounterIndex: z.number().int().min(0x01000000).max(0x01bfffff).optional(),
  })
  .strict();

export const pkcs11Config = z
  .object({
    backend: z.literal('pkcs11'),
    owner,
    stateDir: z.string().min(1),
    module: z.string().min(1),
    /** RFC 7512 URI naming the token, e.g. "pkcs11:token=mte". */
    token: z.string().startsWith('pkcs11:'),
    pin: secretSource,
  })
  .strict();

export const devConfig = z
  .object({
    backend: z.literal('dev'),
    owner,
    stateDir: z.string().min(1),
    /** Must be true: the dev backend keeps keys in software, protected by nothing. */
    allowInsecureDevBackend: z.literal(true),
  })
  .strict();

export const vaultConfig = z.discriminatedUnion('backend', [tpmConfig, pkcs11Config, devConfig]);
export type VaultConfig = z.infer<typeof vaultConfig>;
export type TpmConfig = z.infer<typeof tpmConfig>;
export type Pkcs11Config = z.infer<typeof pkcs11Config>;
export type DevConfig = z.infer<typeof devConfig>;
export type SecretSource = z.infer<typeof secretSource>;
export type VaultOwner = NonNullable<z.infer<typeof owner>>;
