/**
 * The PKCS#11 vault backend (pkcs11js; tested on SoftHSM2). Keys are generated inside the token
 * and never leave it; the store key is kept encrypted under a token KEK in config.stateDir.
 * Object labels are listed in objects.ts.
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
 * VAULT_WRONG_PIN, VAULT_PIN_LOCKED.
 */
export async function openPkcs11Vault(config: Pkcs11Config): Promise<VaultBackend> {
  const conn = await TokenConnection.open(config, { requireMechanisms: true });
  return serialized(new Pkcs11Vault(conn, config));
}
