/**
 * What a UI must know about the endpoint's own condition, beyond messages: whether its vault
 * is reachable and whether its disk has room. Both degrade without stopping the endpoint
 * (messages still arrive and are decrypted; sends are refused with a typed error while the
 * disk is full), so a UI has to be told rather than left to guess from failures. The status
 * route reports the current value; the event stream carries each change as a `health` event.
 */
export interface Health {
  vault: 'available' | 'unavailable';
  /** full: commits refused until space returns (by itself); failed: the store stopped. */
  storage: 'ok' | 'full' | 'failed';
  /** One sentence on what is wrong, when something is; never a secret or a path. */
  reason?: string;
}

export class HealthState {
  #vault: Health['vault'] = 'available';
  #storage: Health['storage'] = 'ok';
  #vaultReason: string | undefined;
  #storageReason: string | undefined;
  readonly #listeners = new Set<(health: Health) => void>();

  get current(): Health {
    const reason = [this.#vaultReason, this.#storageReason].filter(Boolean).join('; ');
    return { vault: this.#vault, storage: this.#storage, ...(reason ? { reason } : {}) };
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
