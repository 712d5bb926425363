import type { VaultBackend } from './vault.ts';

/**
 * Runs a backend's operations one at a time. A TPM has a handful of object slots and one
 * command in flight: two operations interleaving their CreatePrimary/Load/Sign sequences
 * would exhaust the slots (TPM_RC_OBJECT_MEMORY) or race on state such as "store key
 * already released". Queuing also means a flood of requests waits instead of failing others.
 */
export function serialized(inner: VaultBackend): VaultBackend {
  let tail: Promise<unknown> = Promise.resolve();
  const one = <T>(run: () => Promise<T>): Promise<T> => {
    const next = tail.then(run);
    tail = next.catch(() => undefined);
    return next;
  };
  return {
    backend: inner.backend,
    storeKey: () => one(() => inner.storeKey()),
    counterRead: () => one(() => inner.counterRead()),
    counterIncrement: () => one(() => inner.counterIncrement()),
    publicKey: (purpose) => one(() => inner.publicKey(purpose)),
    sign: (purpose, message) => one(() => inner.sign(purpose, message)),
    quote: (data, selection) => one(() => inner.quote(data, selection)),
    attestationIdentity: () => one(() => inner.attestationIdentity()),
    random: (n) => one(() => inner.random(n)),
    status: () => one(() => inner.status()),
    provision: () => one(() => inner.provision()),
    doctor: () => one(() => inner.doctor()),
    close: () => one(() => inner.close()),
  };
}
