import { type VaultBackend, VaultCode, VaultError } from './vault.ts';

/**
 * Wraps every backend (tpm, pkcs11, dev) with the rules that are the vault's, not a backend's:
 *
 * - The store key is released once per vault lifetime. Claimed before the first await and
 *   given back only if the release failed, so racing callers cannot both get it.
 * - Operations run one at a time. A TPM has a handful of object slots and one
 * command in flight: two operations interleaving their CreatePrimary/Load/Sign sequences
 * would exhaust the slots (TPM_RC_OBJECT_MEMORY) or race on state such as "store key
 * already released". Queuing also means a flood of requests waits instead of failing others.
 */
export function serialized(inner: VaultBackend): VaultBackend {
  let storeKeyReleased = false;
  let tail: Promise<unknown> = Promise.resolve();
  const one = <T>(run: () => Promise<T>): Promise<T> => {
    const next = tail.then(run);
    tail = next.catch(() => undefined);
    return next;
  };
  return {
    backend: inner.backend,
    storeKey: () => {
      if (storeKeyReleased) {
        return Promise.reject(
          new VaultError(
            VaultCode.StoreKeyReleased,
            'the store key was already released in this vault lifetime',
          ),
        );
      }
      storeKeyReleased = true;
      return one(() => inner.storeKey()).catch((e: unknown) => {
        storeKeyReleased = false;
        throw e;
      });
    },
    counterRead: () => one(() => inner.counterRead()),
    counterIncrement: () => one(() => inner.counterIncrement()),
    publicKey: (purpose) => one(() => inner.publicKey(purpose)),
    sign: (purpose, message) => one(() => inner.sign(purpose, message)),
    quote: (data, selection) => one(() => inner.quote(data, selection)),
    attestationIdentity: () => one(() => inner.attestationIdentity()),
    activateCredential: (request) => one(() => inner.activateCredential(request)),
    random: (n) => one(() => inner.random(n)),
    status: () => one(() => inner.status()),
    backupKey: () => one(() => inner.backupKey()),
    backupDecrypt: (publicKey, sessions) => one(() => inner.backupDecrypt(publicKey, sessions)),
    sealSecret: (secret) => one(() => inner.sealSecret(secret)),
    unsealSecret: (sealed) => one(() => inner.unsealSecret(sealed)),
    provision: () => one(() => inner.provision()),
    doctor: () => one(() => inner.doctor()),
    close: () => one(() => inner.close()),
  };
}
