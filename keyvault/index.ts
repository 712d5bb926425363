/**
 * The keyvault's public surface: the vault interface and errors, its config, the RPC contract
 * with its client and server, and how to open or spawn a vault. Backends are reached through
 * openVault so each loads only when configured.
 */
export * from './vault.ts';
export {
  type VaultConfig,
  type TpmConfig,
  type Pkcs11Config,
  type DevConfig,
  type SecretSource,
  vaultConfig,
} from './config.ts';
export { vaultContract, type VaultContract, MAX_SIGN_MESSAGE_BYTES } from './contract.ts';
export { RemoteVault, vaultClient } from './client.ts';
export { serveVault } from './server.ts';
export { loadVaultConfig, openVault } from './open.ts';
export { spawnVault, type SpawnedVault } from './spawn.ts';
export {
  type FrameChannel,
  RpcCode,
  RpcError,
  isRpcError,
  socketChannel,
  inProcessPair,
} from './common/rpc/index.ts';
