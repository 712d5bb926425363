import { hkdfSync } from 'node:crypto';
import { join } from 'node:path';
import { z } from 'zod';
import type { Vault } from '../keyvault/vault.ts';
import { type ExtraMasterSignatures, vaultMasterKeySigner } from './crypto/cross-signing.ts';
import type { Logger } from './crypto/engine.ts';
import { type X509Material, refreshAtStart, x509Setup } from './crypto/x509.ts';
import type { TrustSettings } from './crypto/settings.ts';
import { Endpoint } from './device.ts';
import { HomeserverClient } from './matrix/index.ts';
import { outgoingOfEntry } from './messages/index.ts';
import { Outbox } from './outbox.ts';
import {
  type DurableStore,
  type DurableStoreHealth,
  type StoreCounter,
  StoreCode,
  isStoreError,
  openDurableStore,
} from './store/index.ts';

/**
 * The endpoint compartment's core, wired to its vault: the store key from the vault opens the
 * sealed store (refused on another machine, or when rolled back past the vault's counter),
 * in which live the crypto engine's state, the homeserver session, the sync token and the
 * outbox. Nothing in it is readable without the vault.
 */
export interface ServiceOptions {
  vault: Vault;
  /**
   * The store's anti-rollback counter; by default the vault's own. The endpoint passes its
   * VaultLink's, which settles an increment lost with a dead vault (endpoint/vault-link.ts).
   */
  counter?: StoreCounter;
  /**
   * Start a new device on purpose although the vault's counter shows a store existed (what
   * `reset-store` does, audited, from the command line; here for tests that model it).
   * Without it a missing store is STORE_MISSING.
   */
  allowFreshStore?: boolean;
  /** Every change of the store's condition (full disk, space again, stopped): health.ts. */
  onStoreHealth?: (health: DurableStoreHealth) => void;
  /** After each sync request: whether the homeserver answered it (health.ts). */
  onHomeserver?: (reachable: boolean) => void;
  /** Directory for the sealed store. */
  dataDir: string;
  homeserver: string;
  /** For the first login only; later starts restore the sealed session. */
  user: string;
  password: string;
  trust?: TrustSettings;
  /** Per-room trust from the policy; overrides `trust`. */
  trustFor?: (roomId: string) => TrustSettings;
  logger?: Logger;
  /** More signatures on the vault's master key before its first upload (the X.509 one). */
  extraMasterSignatures?: ExtraMasterSignatures;
  /** Replace the account's identity if it is not the vault's (`serve --replace-identity`). */
  replaceIdentity?: boolean;
  /**
   * X.509 identities (the config's `x509`, loaded): peers signed by these CAs are verified;
   * with a chain, our master key is signed by the vault's x509-identity key (crypto/x509.ts).
   */
  x509?: X509Material;
}

const sessionSchema = z.object({
  userId: z.string(),
  deviceId: z.string(),
  accessToken: z.string(),
});
const CRYPTO_DB = 'mte-crypto';
const roomsSchema = z.array(
  z.object({
    roomId: z.string(),
    membership: z.enum(['join', 'invite']),
    members: z.array(z.string()),
    encrypted: z.boolean().exactOptional(),
    inviter: z.string().exactOptional(),
    name: z.string().exactOptional(),
    topic: z.string().exactOptional(),
    displayNames: z.record(z.string(), z.string()).exactOptional(),
  }),
);

export class EndpointService {
  readonly endpoint: Endpoint;
  readonly outbox: Outbox;
  readonly store: DurableStore;
  readonly #uninstall: () => void;
  readonly #lifetime: AbortController;

  private constructor(
    endpoint: Endpoint,
    outbox: Outbox,
    store: DurableStore,
    uninstall: () => void,
    lifetime: AbortController,
  ) {
    this.endpoint = endpoint;
    this.outbox = outbox;
    this.store = store;
    this.#uninstall = uninstall;
    this.#lifetime = lifetime;
  }

  static async start(options: ServiceOptions): Promise<EndpointService> {
    const log = options.logger ?? { warn: () => undefined, info: () => undefined };
    const storeKey = await options.vault.storeKey();
    // Two keys from one: the journal/snapshot layer and the engine's own store encryption.
    const engineKey = new Uint8Array(
      hkdfSync('sha256', storeKey, new Uint8Array(), 'mte-endpoint/engine-store', 32),
    );
    let store: DurableStore;
    try {
      store = await openDurableStore({
        dir: join(options.dataDir, 'store'),
        storeKey,
        counter: options.counter ?? {
          read: () => options.vault.counterRead(),
          increment: () => options.vault.counterIncrement(),
        },
        // Bound to the configured account: another account's store (copied with its vault)
        // is refused, STORE_WRONG_IDENTITY. The device id is added after login, below.
        identity: { userId: options.user },
        // A missing store past the counter's provisioned start is STORE_MISSING (a new TPM
        // counter starts above any value its TPM had, so the vault records where).
        counterStart: await counterStartOf(options.vault),
        ...(options.onStoreHealth ? { onHealth: options.onStoreHealth } : {}),
        // The crypto engine cannot redo a refused commit: on a full disk commits wait.
        holdWhileFull: true,
        ...testCompactEvery(),
        ...(options.allowFreshStore ? { allowFresh: true } : {}),
        logger: log,
      });
    } finally {
      storeKey.fill(0);
    }
    const uninstall = store.install();
    // Aborting it ends every homeserver call and retry loop, so stop() cannot hang in an outage.
    const lifetime = new AbortController();
    try {
      const state = store.appState;
      const saved = await state.get('session', sessionSchema);
      const api = new HomeserverClient({
        baseUrl: options.homeserver,
        ...(saved ? { session: saved } : {}),
        logger: log,
        signal: lifetime.signal,
      });
      if (!saved) {
        const session = await api.login(options.user, options.password);
        await state.put('session', session);
      }
      const since = await state.get('sync/since', z.string());
      const rooms = await state.get('rooms', roomsSchema);
      const userId = api.userId;
      if (!userId) throw new Error('endpoint: no homeserver session after login');
      await bindStoreIdentity(store, { userId, deviceId: api.deviceId }, log);
      const x509 = options.x509 && (await x509Setup(options.vault, options.x509, userId));
      const extraMasterSignatures = options.extraMasterSignatures ?? x509?.extraMasterSignatures;
      const endpoint = await Endpoint.start({
        api,
        store: { name: CRYPTO_DB, key: engineKey },
        password: options.password,
        // The master key never leaves the vault: the endpoint gets signatures, not the seed.
        masterKey: vaultMasterKeySigner(options.vault),
        ...(options.replaceIdentity === true ? { replaceIdentity: true } : {}),
        ...(extraMasterSignatures ? { extraMasterSignatures } : {}),
        ...(x509 ? { x509: x509.engine } : {}),
        ...(since ? { since } : {}),
        saveSince: (token) => state.put('sync/since', token),
        ...(rooms ? { rooms } : {}),
        saveRooms: (list) => state.put('rooms', list),
        ...(options.trust ? { trust: options.trust } : {}),
        ...(options.trustFor ? { trustFor: options.trustFor } : {}),
        ...(options.onHomeserver ? { onHomeserver: options.onHomeserver } : {}),
        logger: log,
      });
      // A renewed certificate (a new chain file) is signed in at start: expiry refresh.
      // A refusal (by the homeserver, or of what it serves) is a warning: it must not keep
      // the endpoint from starting.
      if (x509?.refresh) await refreshAtStart(x509.refresh, api, log);
      const outbox = new Outbox(
        state,
        (entry) => endpoint.sendOutgoing(entry.roomId, outgoingOfEntry(entry), entry.txnId),
        log,
      );
      void outbox.pump(); // whatever a previous run accepted and did not get acknowledged
      return new EndpointService(endpoint, outbox, store, uninstall, lifetime);
    } catch (e) {
      lifetime.abort();
      uninstall();
      await store.close().catch(() => undefined);
      throw e;
    } finally {
      engineKey.fill(0);
    }
  }

  async stop(): Promise<void> {
    this.#lifetime.abort();
    await this.outbox.stop();
    await this.endpoint.stop();
    await this.store.close();
    this.#uninstall();
  }
}

/** The store's own threshold (store/durable-store.ts): the most a test may set. */
const STORE_COMPACT_EVERY = 2000;

/**
 * MTE_TEST_STORE_COMPACT_EVERY: compact after that many journal records. For the soak
 * (test/soak), which must kill the endpoint during compactions under load: at the store's
 * 2,000 records (a few hundred messages) they come once in many kill rounds. Only a lower
 * threshold is taken, since compacting more often only narrows what a crash or a cut journal
 * tail can leave outside the counter's cover (store/README.md, Limits).
 */
function testCompactEvery(): { compactEvery?: number } {
  const raw = process.env.MTE_TEST_STORE_COMPACT_EVERY;
  if (raw === undefined || raw === '') return {};
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 1 || value > STORE_COMPACT_EVERY) {
    throw new Error(
      `MTE_TEST_STORE_COMPACT_EVERY must be a whole number from 1 to ${STORE_COMPACT_EVERY}`,
    );
  }
  return { compactEvery: value };
}

/**
 * Seals the session's full user id and device id into the store (once: a no-op when they are
 * recorded). A contradiction (the session is another account's or device's) refuses the start;
 * a compaction that cannot run now (a full disk) only delays the record to the next one.
 */
async function bindStoreIdentity(
  store: DurableStore,
  session: { userId: string; deviceId: string | undefined },
  log: Logger,
): Promise<void> {
  try {
    await store.bindIdentity({
      userId: session.userId,
      ...(session.deviceId === undefined ? {} : { deviceId: session.deviceId }),
    });
  } catch (e) {
    if (isStoreError(e, StoreCode.WrongIdentity)) throw e;
    log.warn(`store: recording the device identity is postponed (${errorCodeOf(e)})`);
  }
}

function errorCodeOf(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'error';
}

/**
 * Where the vault's counter stood when it was provisioned (vault status): a store may be
 * created fresh only there; past it, a missing store is STORE_MISSING. A vault provisioned
 * before it recorded this (or one that cannot say) gives null: then only the store's own
 * marker beside its directory tells.
 */
async function counterStartOf(vault: Vault): Promise<bigint | null> {
  try {
    const start = (await vault.status()).provisioned.counterStart;
    return start === undefined ? null : BigInt(start);
  } catch {
    return null;
  }
}
