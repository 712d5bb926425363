/**
 * The PKCS#11 vault backend (pkcs11js; tested on SoftHSM2). Keys are generated inside the token
 * and never leave it; the store key is kept encrypted under the vault's KEK in config.stateDir.
 * Several vaults may share a token: each has its own id (vault-id.ts) on every object it makes
 * (objects.ts) and in every wrapped secret's additional data. README.md beside this file.
 */
import type { Pkcs11Config } from '../config.ts';
import type { VaultBackend } from '../vault.ts';
import { Pkcs11Vault } from './backend.ts';
import { TokenConnection } from './session.ts';
import { serialized } from '../serialized.ts';

export { diagnosePkcs11 } from './doctor.ts';
export { checkMechanisms, REQUIRED_MECHANISMS } from './mechanisms.ts';
export { LABELS, PURPOSE_LABEL } from './objects.ts';

/**
 * Opens the token the URI names and logs in. Fails with a VaultError: VAULT_CONFIG (bad URI or
 * PIN source), VAULT_HARDWARE_UNREACHABLE (module), VAULT_TOKEN_NOT_FOUND, VAULT_MECHANISM_MISSING,
 * VAULT_WRONG_PIN, VAULT_PIN_LOCKED. Provisioning and the counter may later refuse with
 * VAULT_FOREIGN_OR_TAMPERED or VAULT_COUNTER_FOREIGN (objects or files not this vault's).
 */
export async function openPkcs11Vault(config: Pkcs11Config): Promise<VaultBackend> {
  const conn = await TokenConnection.open(config, { requireMechanisms: true });
  return serialized(new Pkcs11Vault(conn, config));
}
