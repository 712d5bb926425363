import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../keyvault/common/config-error.ts';
import { formatZodIssues } from '../keyvault/common/zod-issues.ts';

export { ConfigError };

/** The endpoint's configuration file (JSON). The password comes from a file or the environment. */
const secretSource = z.union([
  z.object({ file: z.string().min(1) }).strict(),
  z.object({ env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/) }).strict(),
]);

export const endpointConfig = z
  .object({
    homeserver: z.url(),
    user: z.string().min(1),
    password: secretSource,
    /** Where the sealed store lives. */
    dataDir: z.string().min(1),
    /** The vault's own config file: the endpoint launches the vault compartment with it. */
    vaultConfig: z.string().min(1),
    /**
     * The policy file (policy/README.md): the UI clients, their tokens' hashes and
     * capabilities, and per-room rules for who gets room keys. Required: without it no UI
     * could be authorised. Reloaded when it changes; an invalid edit keeps the last valid one.
     */
    policy: z.string().min(1),
    /** The audit log; default `<dataDir>/audit.log`. */
    auditLog: z.string().min(1).optional(),
    /**
     * X.509 identities (deploy/x509/README.md): `caCerts`, PEM files of the CAs whose users are
     * verified without emoji; `chain`, our certificate chain (leaf for the vault's
     * x509-identity key first, then intermediates, root left out), read at every start.
     */
    x509: z
      .object({
        caCerts: z.array(z.string().min(1)).max(64),
        chain: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
    /**
     * Remote attestation (attestation/README.md): `policy`, the verifier policy file (which EK
     * roots and attestation CAs are trusted, required PCRs and values); `pcrs`, the SHA-256
     * PCRs we ask peers to quote (default 0-7). Without it the endpoint still answers peers'
     * requests (with a TPM vault) but verifies nobody.
     */
    attestation: z
      .object({
        policy: z.string().min(1),
        pcrs: z.array(z.number().int().min(0).max(23)).min(1).max(24).optional(),
        /**
         * The TCG event log sent with our evidence, e.g.
         * /sys/kernel/security/tpm0/binary_bios_measurements (at most 32 KiB in v1).
         */
        eventLog: z.string().min(1).optional(),
        /** Our AK certificate (PEM or DER) from `node attestation/main.ts enrol`. */
        akCertificate: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();
export type EndpointConfig = z.infer<typeof endpointConfig>;

/** With every path absolute and defaults filled in. */
export type ResolvedEndpointConfig = EndpointConfig & { auditLog: string };

export async function loadEndpointConfig(path: string): Promise<ResolvedEndpointConfig> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch {
    throw new ConfigError(`cannot read ${path} as JSON`);
  }
  const parsed = endpointConfig.safeParse(json);
  if (!parsed.success) {
    throw new ConfigError(`${path}: ${formatZodIssues(parsed.error)}`);
  }
  const base = dirname(resolve(path));
  const c = parsed.data;
  return {
    ...c,
    dataDir: resolve(base, c.dataDir),
    vaultConfig: resolve(base, c.vaultConfig),
    policy: resolve(base, c.policy),
    auditLog: resolve(base, c.auditLog ?? join(c.dataDir, 'audit.log')),
    password: 'file' in c.password ? { file: resolve(base, c.password.file) } : c.password,
    ...(c.x509
      ? {
          x509: {
            caCerts: c.x509.caCerts.map((f) => resolve(base, f)),
            ...(c.x509.chain ? { chain: resolve(base, c.x509.chain) } : {}),
          },
        }
      : {}),
    ...(c.attestation
      ? {
          attestation: {
            ...c.attestation,
            policy: resolve(base, c.attestation.policy),
            ...(c.attestation.eventLog ? { eventLog: resolve(base, c.attestation.eventLog) } : {}),
            ...(c.attestation.akCertificate
              ? { akCertificate: resolve(base, c.attestation.akCertificate) }
              : {}),
          },
        }
      : {}),
  };
}
