import { type VaultContract, vaultContract } from './contract.ts';
import {
  type ClientOptions,
  type FrameChannel,
  type Params,
  type Result,
  type RpcClient,
  RpcCode,
  RpcError,
  createClient,
} from './common/rpc/index.ts';
import {
  type ActivationRequest,
  type AttestationIdentity,
  type BackedUpSession,
  type BackupDecryptResult,
  type BackupKeyInfo,
  type BackendName,
  type PcrSelection,
  type PublicKeyInfo,
  type Quote,
  type SigningPurpose,
  type Vault,
  VaultCode,
  type VaultErrorCode,
  VaultError,
  type VaultStatus,
} from './vault.ts';

const VAULT_CODES = new Set<string>(Object.values(VaultCode));

/**
 * A vault in another compartment, used exactly like a local one. Vault failures arrive as
 * VaultError with the backend's code; transport failures stay RpcError (DISCONNECTED, TIMEOUT,
 * INVALID_PARAMS when our own arguments violate the contract, ...).
 */
export class RemoteVault implements Vault {
  readonly backend: BackendName;
  readonly #rpc: RpcClient<VaultContract>;

  constructor(rpc: RpcClient<VaultContract>, backend: BackendName) {
    this.#rpc = rpc;
    this.backend = backend;
  }

  storeKey(): Promise<Uint8Array> {
    return this.#call('storeKey', {});
  }

  counterRead(): Promise<bigint> {
    return this.#call('counterRead', {});
  }

  counterIncrement(): Promise<bigint> {
    return this.#call('counterIncrement', {});
  }

  publicKey(purpose: SigningPurpose): Promise<PublicKeyInfo> {
    return this.#call('publicKey', { purpose });
  }

  sign(purpose: SigningPurpose, message: Uint8Array): Promise<Uint8Array> {
    return this.#call('sign', { purpose, message });
  }

  quote(qualifyingData: Uint8Array, selection: PcrSelection): Promise<Quote> {
    return this.#call('quote', { qualifyingData, selection });
  }

  async attestationIdentity(): Promise<AttestationIdentity> {
    const { akPublic, akName, ekCertificate } = await this.#call('attestationIdentity', {});
    return ekCertificate ? { akPublic, akName, ekCertificate } : { akPublic, akName };
  }

  activateCredential(request: ActivationRequest): Promise<Uint8Array> {
    return this.#call('activateCredential', {
      credentialBlob: request.credentialBlob,
      encryptedSecret: request.encryptedSecret,
      challengeId: request.challengeId,
    });
  }

  async random(n: number): Promise<Uint8Array> {
    const out = await this.#call('random', { n });
    // The contract bounds the length; only we know how many bytes we asked for.
    if (out.length !== n) {
      throw new RpcError(RpcCode.InvalidResult, `random: expected ${n} bytes, got ${out.length}`);
    }
    return out;
  }

  status(): Promise<VaultStatus> {
    return this.#call('status', {});
  }

  backupKey(): Promise<BackupKeyInfo | null> {
    return this.#call('backupKey', {});
  }

  backupDecrypt(publicKey: string, sessions: BackedUpSession[]): Promise<BackupDecryptResult[]> {
    return this.#call('backupDecrypt', { publicKey, sessions });
  }

  /** Closes the channel; the vault compartment exits when its only channel closes. */
  close(): Promise<void> {
    this.#rpc.close();
    return Promise.resolve();
  }

  async #call<M extends keyof VaultContract>(
    method: M,
    params: Params<VaultContract, M>,
  ): Promise<Result<VaultContract, M>> {
    try {
      return await this.#rpc.call(method, params);
    } catch (e) {
      throw asVaultError(e);
    }
  }
}

/** Restores VaultError for vault codes, so `instanceof VaultError` works on both sides. */
function asVaultError(e: unknown): unknown {
  if (e instanceof RpcError && !(e instanceof VaultError) && VAULT_CODES.has(e.code)) {
    return new VaultError(e.code as VaultErrorCode, e.message);
  }
  return e;
}

/**
 * Connects to a vault over `channel`. Asks for its status first: that learns the backend and
 * proves the vault is up before anyone relies on it.
 */
export async function vaultClient(
  channel: FrameChannel,
  options: ClientOptions = {},
): Promise<RemoteVault> {
  const rpc = createClient(channel, vaultContract, options);
  try {
    const { backend } = await rpc.call('status', {});
    return new RemoteVault(rpc, backend);
  } catch (e) {
    rpc.close();
    throw asVaultError(e);
  }
}
