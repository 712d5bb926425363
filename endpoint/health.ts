/**
 * What a UI must know about the endpoint's own condition, beyond messages: whether its vault
 * and its homeserver are reachable and whether its disk has room. Each degrades without stopping the endpoint
 * (messages still arrive and are decrypted; sends are refused with a typed error while the
 * disk is full), so a UI has to be told rather than left to guess from failures. The status
 * route reports the current value; the event stream carries each change as a `health` event.
 */
export interface Health {
  vault: 'available' | 'unavailable';
  /** unreachable: sync is failing; sends wait in the outbox and go out once it answers. */
  homeserver: 'reachable' | 'unreachable';
  /** full: commits refused until space returns (by itself); failed: the store stopped. */
  storage: 'ok' | 'full' | 'failed';
  /** One sentence on what is wrong, when something is; never a secret or a path. */
  reason?: string;
}

export class HealthState {
  #vault: Health['vault'] = 'available';
  #storage: Health['storage'] = 'ok';
  #homeserver: Health['homeserver'] = 'reachable';
  #vaultReason: string | undefined;
  #storageReason: string | undefined;
  #homeserverReason: string | undefined;
  readonly #listeners = new Set<(health: Health) => void>();

  get current(): Health {
    const reason = [this.#vaultReason, this.#homeserverReason, this.#storageReason]
      .filter(Boolean)
      .join('; ');
    return {
      vault: this.#vault,
      homeserver: this.#homeserver,
      storage: this.#storage,
      ...(reason ? { reason } : {}),
    };
  }

  setHomeserver(state: Health['homeserver'], reason?: string): void {
    const why = state === 'reachable' ? undefined : reason;
    if (state === this.#homeserver && why === this.#homeserverReason) return;
    this.#homeserver = state;
    this.#homeserverReason = why;
    this.#emit();
  }

  setVault(state: Health['vault'], reason?: string): void {
    if (state === this.#vault && reason === this.#vaultReason) return;
    this.#vault = state;
    this.#vaultReason = state === 'available' ? undefined : reason;
    this.#emit();
  }

  setStorage(state: Health['storage'], reason?: string): void {
    if (state === this.#storage && reason === this.#storageReason) return;
    this.#storage = state;
    this.#storageReason = state === 'ok' ? undefined : reason;
    this.#emit();
  }

  onChange(listener: (health: Health) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(): void {
    const now = this.current;
    for (const listener of [...this.#listeners]) listener(now);
  }
}
