import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';

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
     * Who gets room keys and whose messages are decrypted. Defaults to MSC4153 (identity-based
     * sharing, cross-signed-or-legacy senders); the policy issue makes this per room.
     */
    trust: z
      .object({
        sharing: z.enum(['identity-based', 'verified-devices-only', 'all-devices']),
        decryption: z.enum(['cross-signed-or-legacy', 'cross-signed', 'untrusted']),
      })
      .strict()
      .optional(),
  })
  .strict();
export type EndpointConfig = z.infer<typeof endpointConfig>;

export class ConfigError extends Error {
  readonly code = 'ENDPOINT_CONFIG';
}

export async function loadEndpointConfig(path: string): Promise<EndpointConfig> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch {
    throw new ConfigError(`cannot read ${path} as JSON`);
  }
  const parsed = endpointConfig.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConfigError(
      `${path}: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}`,
    );
  }
  const base = dirname(resolve(path));
  const c = parsed.data;
  return {
    ...c,
    dataDir: resolve(base, c.dataDir),
    vaultConfig: resolve(base, c.vaultConfig),
    password: 'file' in c.password ? { file: resolve(base, c.password.file) } : c.password,
  };
}
