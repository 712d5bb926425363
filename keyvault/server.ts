import { vaultContract } from './contract.ts';
import {
  type FrameChannel,
  type ServerConnection,
  type ServerOptions,
  serve,
} from './common/rpc/index.ts';
import type { Vault } from './vault.ts';

/**
 * Serves the vault contract on one channel (the endpoint's). Params arrive validated by the
 * contract; a VaultError reaches the peer with its code, any other exception only as INTERNAL
 * (rpc/server.ts), so a bug cannot carry key material across the boundary.
 */
export function serveVault(
  channel: FrameChannel,
  vault: Vault,
  options: ServerOptions = {},
): ServerConnection {
  return serve(
    channel,
    vaultContract,
    {
      storeKey: async () => {
        const key = await vault.storeKey();
        // rpc/server.ts encodes the result in the microtasks that follow; wipe our copy after.
        // (The base64 text on its way to the socket is a string, beyond our reach.)
        setImmediate(() => key.fill(0));
        return key;
      },
      counterRead: () => vault.counterRead(),
      counterIncrement: () => vault.counterIncrement(),
      publicKey: ({ purpose }) => vault.publicKey(purpose),
      sign: ({ purpose, message }) => vault.sign(purpose, message),
      quote: ({ qualifyingData, selection }) => vault.quote(qualifyingData, selection),
      attestationIdentity: () => vault.attestationIdentity(),
      activateCredential: (request) => vault.activateCredential(request),
      random: ({ n }) => vault.random(n),
      status: () => vault.status(),
      backupKey: () => vault.backupKey(),
      backupDecrypt: ({ publicKey, sessions }) => vault.backupDecrypt(publicKey, sessions),
    },
    options,
  );
}
