import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { type VaultConfig, vaultConfig } from './config.ts';
import { UnsafeFilesError, assertPrivateDir } from './common/hygiene.ts';
import { DEV_REFUSED } from './dev/messages.ts';
import { purposeBound } from './purposes/index.ts';
import { VaultCode, VaultError, type VaultBackend } from './vault.ts';

/**
 * Reads and validates a vault config file. Relative paths in it (stateDir, a PIN file, swtpm's
 * Unix sockets) are taken relative to the config file, not to wherever the command happens to
 * run. Errors name the JSON path and the rule, never a value: a misplaced PIN must not end up
 * in a log.
 */
export async function loadVaultConfig(path: string): Promise<VaultConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new VaultError(VaultCode.Config, `cannot read the config file ${path} (${code})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    // JSON.parse's message quotes the text near the error, which may be a secret.
    throw new VaultError(VaultCode.Config, `${path}: not valid JSON`);
  }
  const parsed = vaultConfig.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues;
    const backend = (json as { backend?: unknown } | null)?.backend;
    if (backend === 'dev' && issues.some((i) => i.path[0] === 'allowInsecureDevBackend')) {
      throw new VaultError(VaultCode.InsecureRefused, `${path}: ${DEV_REFUSED}`);
    }
    const described = issues.slice(0, 5).map((i) => describeIssue(i, backend));
    if (issues.length > 5) described.push(`and ${issues.length - 5} more`);
    throw new VaultError(VaultCode.Config, `${path}: ${described.join('; ')}`);
  }
  const config = parsed.data;
  const base = dirname(resolve(path));
  config.stateDir = resolve(base, config.stateDir);
  if (config.backend === 'tpm' && 'swtpm' in config.transport && 'path' in config.transport.swtpm) {
    const { path: data, ctrlPath } = config.transport.swtpm;
    config.transport = { swtpm: { path: resolve(base, data), ctrlPath: resolve(base, ctrlPath) } };
  }
  if (config.backend === 'pkcs11' && 'file' in config.pin) {
    config.pin = { file: resolve(base, config.pin.file) };
  }
  return config;
}

/** `pin: expected {"file": path} or {"env": NAME}`, `pcrs[3]: Too big: ...`. */
function describeIssue(issue: z.core.$ZodIssue, backend: unknown): string {
  const where =
    issue.path.reduce<string>(
      (acc, seg) =>
        typeof seg === 'number' ? `${acc}[${seg}]` : acc ? `${acc}.${String(seg)}` : String(seg),
      '',
    ) || '(top level)';
  if (issue.code === 'invalid_union' && issue.path.length === 1 && issue.path[0] === 'backend') {
    return `backend: expected "tpm", "pkcs11" or "dev"`;
  }
  if (issue.code === 'invalid_union') {
    // A union's own "Invalid input" helps no one; its description says what is accepted.
    const about = describedAt(backend, issue.path);
    if (about) return `${where}: expected ${about}`;
  }
  return `${where}: ${issue.message}`;
}

/** The text after the colon in the description of the field at `path`, if it has one. */
function describedAt(backend: unknown, path: PropertyKey[]): string | undefined {
  let schema: z.ZodType | undefined = vaultConfig.options.find(
    (o) => o.shape.backend.value === backend,
  );
  for (const seg of path) {
    if (!(schema instanceof z.ZodObject) || typeof seg !== 'string') return undefined;
    schema = (schema.shape as Record<string, z.ZodType | undefined>)[seg];
  }
  const description = schema?.description;
  return description?.includes(': ') ? description.slice(description.indexOf(': ') + 2) : undefined;
}

/**
 * Opens the configured backend. Each backend is imported only when chosen, so a TPM config
 * never loads pkcs11js's native module and the dev backend cannot be reached by accident.
 */
export async function openVault(config: VaultConfig): Promise<VaultBackend> {
  await checkStateDir(config.stateDir);
  // Purpose-bound signing (keyvault/purposes) for every backend: what serve puts on the RPC.
  return purposeBound(await openBackend(config), config.owner);
}

async function openBackend(config: VaultConfig): Promise<VaultBackend> {
  switch (config.backend) {
    case 'tpm': {
      const { openTpmVault } = await import('./tpm/backend.ts');
      return openTpmVault(config);
    }
    case 'pkcs11': {
      const { openPkcs11Vault } = await import('./pkcs11/index.ts');
      return openPkcs11Vault(config);
    }
    case 'dev': {
      const { openDevVault } = await import('./dev/index.ts');
      return openDevVault(config);
    }
  }
}

/**
 * The state directory must be this compartment's own: owned by its user, 0700, files 0600, no
 * symlinks (keyvault/common/hygiene.ts). Not there yet is fine: provisioning creates it so.
 * Root (vault init, status, the certificate tool, run by an admin on a deployed vault) accepts
 * a directory owned wholly by the vault compartment's user; blobs are bound to the TPM and to
 * this vault, so that user could break them but not forge them.
 */
async function checkStateDir(stateDir: string): Promise<void> {
  try {
    await assertPrivateDir(stateDir, "the vault's state directory", { rootAcceptsDirOwner: true });
  } catch (e) {
    if (!(e instanceof UnsafeFilesError)) throw e;
    throw new VaultError(VaultCode.UnsafeFiles, e.message);
  }
}
