import type { TpmConfig } from '../config.ts';
import { VaultCode, VaultError, type VaultBackend } from '../vault.ts';

/** The TPM 2.0 backend. In progress (issue 3): replaced by the real backend in this issue. */
export function openTpmVault(_config: TpmConfig): Promise<VaultBackend> {
  return Promise.reject(
    new VaultError(VaultCode.NotSupported, 'the TPM backend is not implemented yet'),
  );
}
