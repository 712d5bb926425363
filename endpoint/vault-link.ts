/**
 * The endpoint's connection to its vault compartment, kept alive across a vault's death.
 *
 * The vault is a separate process: it can crash, be killed, or be restarted by an operator.
 * Before this, every call after that failed with the RPC's bare DISCONNECTED, the UI was not
 * told, and a compaction that met a dead vault stopped the store for good. Now:
 *
 * - While the vault is unreachable every operation that needs it fails at once with
 *   VAULT_UNAVAILABLE (a sentence a UI can show), and `health()` / `onHealth` say so.
 * - When the endpoint started the vault itself (`reconnect` given), it starts a new one with
 *   backoff, and accepts it only if it holds the same cross-signing master key as before (a
 *   different vault would be a different identity). The store key is not asked for again: the
 *   store stays open, so a new vault lifetime does not need to release it.
 * - Under the launcher (deploy/launch.ts) the endpoint cannot be handed a new channel; the
 *   launcher restarts the whole stack, and until then the endpoint reports the vault down.
 *
 * The counter the store uses (`storeCounter`) is the delicate part: a store that does not
 * know whether an increment happened must not acknowledge anything (its epoch protocol reads
 * the counter to decide, epochs.ts). So an increment refused before it was sent is a clean
 * failure, and reads answer from the last value this link saw; an increment whose answer was
 * lost leaves the counter uncertain, and reads wait for the vault to come back to ask it.
 */
import { RpcCode, isRpcError } from '../keyvault/common/rpc/index.ts';
import {
  type ActivationRequest,
  type AttestationIdentity,
  type BackedUpSession,
  type BackupDecryptResult,
  type BackupKeyInfo,
  type PcrSelection,
  type PublicKeyInfo,
  type Quote,
  type SigningPurpose,
  type Vault,
  VaultCode,
  VaultError,
  type VaultStatus,
} from '../keyvault/vault.ts';
import type { StoreCounter } from './store/index.ts';

export interface VaultConnection {
  vault: Vault;
  /** Ends the connection (and the vault process, where we started it). */
  stop(): Promise<void>;
  /** Settles when the vault process is gone, where we can tell (a child we started). */
  exited?: Promise<unknown>;
}

export type VaultHealth =
  { state: 'available' } | { state: 'unavailable'; since: number; reason: string };

export interface VaultLinkOptions {
  /** Starts a new vault after the old one died; absent under the launcher. */
  reconnect?: () => Promise<VaultConnection>;
  /** First retry after this long, doubling to maxRetryMs (default 500 ms .. 10 s). */
  retryMs?: number;
  maxRetryMs?: number;
  logger?: { warn(message: string): void; info(message: string): void };
}

/**
 * The channel closed: the vault (or our end) is gone. A TIMEOUT is not: the vault is alive but
 * slow (its own hardware timeouts answer VAULT_NOT_RESPONDING first), and the store settles an
 * increment that timed out by reading the counter.
 */
function isLinkFailure(e: unknown): boolean {
  return isRpcError(e) && e.code === RpcCode.Disconnected;
}

/** Restart failures that retrying cannot fix, and that may cost a PIN try each time. */
const GIVE_UP: ReadonlySet<string> = new Set([
  VaultCode.WrongPin,
  VaultCode.PinLocked,
  VaultCode.Config,
  VaultCode.InsecureRefused,
  VaultCode.UnsafeFiles,
]);

function unavailable(reason: string): VaultError {
  return new VaultError(
    VaultCode.Unavailable,
    `the vault is not reachable right now (${reason}); the endpoint reconnects when it is back`,
  );
}

export class VaultLink implements Vault {
  readonly backend: Vault['backend'];
  #connection: VaultConnection;
  #health: VaultHealth = { state: 'available' };
  readonly #listeners = new Set<(health: VaultHealth) => void>();
  readonly #waiters = new Set<{ resolve: () => void; reject: (e: unknown) => void }>();
  readonly #options: VaultLinkOptions;
  /** The master key the vault had at start: a replacement vault must have the same one. */
  #masterSpki: Buffer | undefined;
  #lastCounter: bigint | undefined;
  /** An increment was sent and its answer lost: the counter's value is unknown. */
  #counterUncertain = false;
  #reconnecting = false;
  #stopped = false;
  #timer: NodeJS.Timeout | undefined;

  private constructor(connection: VaultConnection, options: VaultLinkOptions) {
    this.#connection = connection;
    this.backend = connection.vault.backend;
    this.#options = options;
    this.#watch(connection);
  }

  /** Wraps a connected vault; learns its master key so a replacement can be checked. */
  static async open(
    connection: VaultConnection,
    options: VaultLinkOptions = {},
  ): Promise<VaultLink> {
    const link = new VaultLink(connection, options);
    link.#masterSpki = await masterSpki(connection.vault).catch(() => undefined);
    return link;
  }

  health(): VaultHealth {
    return this.#health;
  }

  onHealth(listener: (health: VaultHealth) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The anti-rollback counter, as the durable store needs it (see the file comment). */
  readonly storeCounter: StoreCounter = {
    read: async () => {
      if (this.#health.state === 'unavailable') {
        if (!this.#counterUncertain && this.#lastCounter !== undefined) return this.#lastCounter;
        await this.#untilAvailable();
      }
      const value = await this.#call((v) => v.counterRead());
      this.#lastCounter = value;
      this.#counterUncertain = false;
      return value;
    },
    increment: async () => {
      if (this.#health.state === 'unavailable') throw unavailable(this.#health.reason);
      try {
        const value = await this.#connection.vault.counterIncrement();
        this.#lastCounter = value;
        return value;
      } catch (e) {
        if (isLinkFailure(e)) {
          this.#counterUncertain = true;
          this.#down(e instanceof Error ? e.message : 'lost');
          throw unavailable('the answer to an increment was lost');
        }
        throw e;
      }
    },
  };

  storeKey(): Promise<Uint8Array> {
    return this.#call((v) => v.storeKey());
  }
  async counterRead(): Promise<bigint> {
    const value = await this.#call((v) => v.counterRead());
    this.#lastCounter = value;
    return value;
  }
  async counterIncrement(): Promise<bigint> {
    return this.storeCounter.increment();
  }
  publicKey(purpose: SigningPurpose): Promise<PublicKeyInfo> {
    return this.#call((v) => v.publicKey(purpose));
  }
  sign(purpose: SigningPurpose, message: Uint8Array): Promise<Uint8Array> {
    return this.#call((v) => v.sign(purpose, message));
  }
  quote(qualifyingData: Uint8Array, selection: PcrSelection): Promise<Quote> {
    return this.#call((v) => v.quote(qualifyingData, selection));
  }
  attestationIdentity(): Promise<AttestationIdentity> {
    return this.#call((v) => v.attestationIdentity());
  }
  activateCredential(request: ActivationRequest): Promise<Uint8Array> {
    return this.#call((v) => v.activateCredential(request));
  }
  random(n: number): Promise<Uint8Array> {
    return this.#call((v) => v.random(n));
  }
  backupKey(): Promise<BackupKeyInfo | null> {
    return this.#call((v) => v.backupKey());
  }
  backupDecrypt(publicKey: string, sessions: BackedUpSession[]): Promise<BackupDecryptResult[]> {
    return this.#call((v) => v.backupDecrypt(publicKey, sessions));
  }
  status(): Promise<VaultStatus> {
    return this.#call((v) => v.status());
  }

  async close(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const w of this.#waiters) w.reject(unavailable('the endpoint is stopping'));
    this.#waiters.clear();
    await this.#connection.stop();
  }

  async #call<T>(run: (vault: Vault) => Promise<T>): Promise<T> {
    if (this.#health.state === 'unavailable') throw unavailable(this.#health.reason);
    try {
      return await run(this.#connection.vault);
    } catch (e) {
      if (!isLinkFailure(e)) throw e;
      this.#down(e instanceof Error ? e.message : 'lost');
      throw unavailable('the channel to it closed');
    }
  }

  #watch(connection: VaultConnection): void {
    void connection.exited?.then(() => {
      if (connection === this.#connection && !this.#stopped) this.#down('the vault process exited');
    });
  }

  #set(health: VaultHealth): void {
    this.#health = health;
    for (const listener of [...this.#listeners]) {
      try {
        listener(health);
      } catch {
        // A listener's failure must not keep the others (or the reconnect) from running.
      }
    }
  }

  #down(reason: string): void {
    if (this.#stopped || this.#health.state === 'unavailable') return;
    const short = reason.split('\n')[0]?.slice(0, 200) ?? 'lost';
    this.#options.logger?.warn(`vault unavailable: ${short}`);
    this.#set({ state: 'unavailable', since: Date.now(), reason: short });
    if (this.#options.reconnect) this.#scheduleReconnect(this.#options.retryMs ?? 500);
  }

  #scheduleReconnect(delayMs: number): void {
    if (this.#stopped || this.#reconnecting) return;
    this.#timer = setTimeout(() => void this.#reconnect(delayMs), delayMs);
    this.#timer.unref();
  }

  async #reconnect(delayMs: number): Promise<void> {
    const reconnect = this.#options.reconnect;
    if (!reconnect || this.#stopped) return;
    this.#reconnecting = true;
    let next: VaultConnection | undefined;
    try {
      await this.#connection.stop().catch(() => undefined);
      next = await reconnect();
      const spki = await masterSpki(next.vault);
      if (this.#masterSpki && !spki.equals(this.#masterSpki)) {
        await next.stop().catch(() => undefined);
        // Not retried: this is not an outage but another identity; an operator must look.
        this.#options.logger?.warn(
          'SECURITY: the restarted vault holds a different cross-signing master key; not using it',
        );
        this.#set({
          state: 'unavailable',
          since: Date.now(),
          reason: 'the restarted vault holds a different identity; refusing it',
        });
        this.#stopped = true;
        return;
      }
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- close() may run during the awaits
      if (this.#stopped) {
        await next.stop().catch(() => undefined);
        return;
      }
      this.#connection = next;
      this.#watch(next);
      this.#options.logger?.info('vault available again');
      this.#set({ state: 'available' });
      for (const w of this.#waiters) w.resolve();
      this.#waiters.clear();
    } catch (e) {
      if (next) await next.stop().catch(() => undefined);
      const why = e instanceof Error ? (e.message.split('\n')[0] ?? '') : 'error';
      this.#options.logger?.warn(`vault restart failed: ${why}`);
      this.#reconnecting = false;
      // A wrong or locked PIN (or a broken config) is not an outage: each retry would spend
      // one of the token's PIN tries until it locks. Stop, and say so.
      if (isRpcError(e) && GIVE_UP.has(e.code)) {
        this.#stopped = true;
        this.#set({
          state: 'unavailable',
          since: Date.now(),
          reason: `the restarted vault refuses to open (${e.code}); not retrying`,
        });
        return;
      }
      this.#scheduleReconnect(Math.min(delayMs * 2, this.#options.maxRetryMs ?? 10_000));
      return;
    }
    this.#reconnecting = false;
  }

  #untilAvailable(): Promise<void> {
    if (this.#stopped) return Promise.reject(unavailable('the endpoint is stopping'));
    return new Promise((resolve, reject) => this.#waiters.add({ resolve, reject }));
  }
}

async function masterSpki(vault: Vault): Promise<Buffer> {
  return Buffer.from((await vault.publicKey('cross-signing-master')).spki);
}
