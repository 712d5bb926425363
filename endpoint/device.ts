import { randomBytes } from 'node:crypto';
import {
  CryptoEngine,
  type DecryptedMessage,
  type EngineOptions,
  type Logger,
  type PrivateToDeviceMessage,
  type UndecryptableMessage,
} from './crypto/engine.ts';
import {
  type ExtraMasterSignatures,
  type MasterKeySigner,
  ownMasterMatches,
} from './crypto/cross-signing.ts';
import type { TrustSettings } from './crypto/settings.ts';
import type { CreateRoomOptions, HomeserverApi, RoomEvent } from './matrix/api.ts';
import { SyncLoop } from './sync/loop.ts';
import {
  type FlowView,
  type IdentityView,
  Verifications,
  changedIdentities,
  identityOf,
} from './verification/index.ts';

export type TimelineItem = DecryptedMessage | UndecryptableMessage;

export function isDecrypted(item: TimelineItem): item is DecryptedMessage {
  return 'content' in item;
}

export interface RoomSummary {
  roomId: string;
  membership: 'join' | 'invite';
  members: string[];
}

/** What the endpoint tells its listeners about (the local API's event stream). */
export type EndpointEvent =
  | { type: 'message'; roomId: string; item: TimelineItem }
  /** Our own membership of a room changed. */
  | { type: 'room'; roomId: string; membership: 'invite' | 'join' | 'leave' }
  /** Someone else's membership of a room changed. */
  | { type: 'member'; roomId: string; userId: string; membership: string }
  /** A verification flow moved on (requested, ready, compare, done, cancelled...). */
  | { type: 'verification'; flow: FlowView }
  /** A user's cross-signing identity changed (new, verified, or a violation). */
  | { type: 'identity'; userId: string; identity: IdentityView };

/**
 * A send refused because members of the room changed identity and nobody acknowledged it yet.
 * Retryable on purpose: a queued message waits in the outbox until the change is resolved.
 */
export class IdentityChangedError extends Error {
  readonly users: string[];
  /** The outbox keeps the room's messages, in order, until the change is resolved. */
  readonly hold = true;
  constructor(users: string[]) {
    super(
      `${users.join(', ')} changed cross-signing identity: acknowledge the change or verify again before sending`,
    );
    this.name = 'IdentityChangedError';
    this.users = users;
  }
}

/**
 * A send to an `attested-only` room refused because some device the room key would go to has
 * no fresh passing attestation. Retryable: the message waits in the outbox, and goes out once
 * those devices are attested (or leave the room).
 */
export class AttestationRequiredError extends Error {
  readonly devices: { userId: string; deviceId: string }[];
  readonly hold = true;
  constructor(devices: { userId: string; deviceId: string }[]) {
    super(
      `this room shares keys only with attested devices; not attested: ${devices
        .slice(0, 10)
        .map((d) => `${d.userId} ${d.deviceId}`)
        .join(', ')}`,
    );
    this.name = 'AttestationRequiredError';
    this.devices = devices;
  }
}

export interface EndpointOptions {
  /** A homeserver client already logged in as the endpoint's device. */
  api: HomeserverApi;
  store?: { name: string; key: Uint8Array };
  trust?: TrustSettings;
  /** Per-room trust (the policy's room rules); overrides `trust` for encrypt and decrypt. */
  trustFor?: (roomId: string) => TrustSettings;
  logger?: Logger;
  /** For the user-interactive auth of the first cross-signing upload. */
  password?: string;
  /**
   * Where the cross-signing master key lives (the vault's, in the service). Without it the
   * crypto core makes its own master key: for tests and benchmarks that run with no vault.
   */
  masterKey?: MasterKeySigner;
  /** More signatures on the master key before its first upload (the X.509 one). */
  extraMasterSignatures?: ExtraMasterSignatures;
  /** X.509 identities: CAs whose users are verified, our own signer (crypto/x509.ts). */
  x509?: EngineOptions['x509'];
  /** Where the previous run stopped syncing (from the sealed store). */
  since?: string;
  saveSince?: (token: string) => Promise<void>;
  /**
   * The room list as the previous run left it: an incremental sync only mentions rooms that
   * changed, so without it a restarted endpoint would forget quiet rooms.
   */
  rooms?: RoomSummary[];
  saveRooms?: (rooms: RoomSummary[]) => Promise<void>;
}

/**
 * One Matrix device: the crypto engine, the sync loop, and the operations the local API will
 * offer. Message content is never written anywhere: history is fetched from the homeserver
 * and decrypted on demand.
 */
export class Endpoint {
  readonly api: HomeserverApi;
  readonly engine: CryptoEngine;
  readonly userId: string;
  readonly deviceId: string;
  readonly verifications: Verifications;
  /**
   * Our own Olm-encrypted to-device protocols (attestation): the service sets the handler
   * and the types once it has built them; until then such messages are dropped.
   */
  privateMessages: ((messages: PrivateToDeviceMessage[]) => Promise<void>) | undefined;
  /**
   * Whether a device holds a fresh passing attestation (the attestation service sets it);
   * unset, no device counts as attested and `attested-only` rooms send nothing.
   */
  isAttested: ((userId: string, deviceId: string) => Promise<boolean>) | undefined;
  /** Asked to attest the devices an `attested-only` send waits on (set with isAttested). */
  attestMissing: ((devices: { userId: string; deviceId: string }[]) => void) | undefined;
  readonly #sync: SyncLoop;
  readonly #rooms = new Map<string, RoomSummary>();
  readonly #listeners = new Set<(item: TimelineItem) => void>();
  readonly #changeListeners = new Set<(event: EndpointEvent) => void>();
  readonly #log: Logger;
  readonly #trustFor: ((roomId: string) => TrustSettings) | undefined;
  readonly #saveRooms: (rooms: RoomSummary[]) => Promise<void>;
  /** The vault's master public key, when it holds ours: our identity must keep it. */
  #ourMaster: string | undefined;

  private constructor(api: HomeserverApi, engine: CryptoEngine, options: EndpointOptions) {
    this.api = api;
    this.engine = engine;
    this.userId = api.userId ?? '';
    this.deviceId = api.deviceId ?? '';
    this.#log = options.logger ?? { warn: () => undefined, info: () => undefined };
    this.#trustFor = options.trustFor;
    this.#saveRooms = options.saveRooms ?? (() => Promise.resolve());
    for (const room of options.rooms ?? []) this.#rooms.set(room.roomId, room);
    this.verifications = new Verifications(engine, this.#log, async (roomId, content) =>
      this.sendContent(roomId, content),
    );
    this.verifications.onChange((flow) => {
      this.#emit({ type: 'verification', flow });
    });
    engine.machine.registerUserIdentityUpdatedCallback(async (id) => {
      const userId = id.toString();
      id.free();
      if (
        userId === this.userId &&
        this.#ourMaster !== undefined &&
        !(await ownMasterMatches(engine.machine, userId, this.#ourMaster))
      ) {
        // Someone replaced the account's identity (a reset elsewhere, or the homeserver): the
        // vault's key no longer signs for us. Every send stops (our own identity is in every
        // room); a restart refuses to start until an operator looks.
        this.#log.warn(
          "our account's cross-signing identity is no longer the vault's master key: sending is stopped",
        );
      }
      this.#emit({ type: 'identity', userId, identity: await identityOf(engine.machine, userId) });
    });
    const saveSince = options.saveSince ?? (() => Promise.resolve());
    this.#sync = new SyncLoop({
      api,
      engine,
      ...(options.since ? { since: options.since } : {}),
      logger: this.#log,
      handlers: {
        saveSince,
        verificationRequests: (requests) => this.verifications.received(requests),
        privateMessages: async (messages) => {
          await this.privateMessages?.(messages);
        },
        invited: async (roomId) => {
          if (this.#rooms.has(roomId)) return;
          this.#rooms.set(roomId, { roomId, membership: 'invite', members: [] });
          await this.#saveRooms(this.rooms());
          this.#emit({ type: 'room', roomId, membership: 'invite' });
        },
        joined: async (roomId, changes) => {
          const known = this.#rooms.get(roomId);
          const room = known ?? { roomId, membership: 'join' as const, members: [] };
          const newlyJoined = known?.membership !== 'join';
          room.membership = 'join';
          const members = new Set(room.members);
          const before = members.size;
          const changed: { userId: string; membership: string }[] = [];
          for (const c of changes) {
            const present = members.has(c.userId);
            if (c.membership === 'join' || c.membership === 'invite') members.add(c.userId);
            else members.delete(c.userId);
            if (present !== members.has(c.userId) || c.membership === 'join') changed.push(c);
          }
          room.members = [...members];
          this.#rooms.set(roomId, room);
          if (newlyJoined || members.size !== before || changed.length > 0) {
            await this.#saveRooms(this.rooms());
          }
          if (newlyJoined) this.#emit({ type: 'room', roomId, membership: 'join' });
          for (const c of changed) {
            if (c.userId === this.userId) continue;
            this.#emit({ type: 'member', roomId, userId: c.userId, membership: c.membership });
          }
        },
        left: async (roomId) => {
          if (!this.#rooms.delete(roomId)) return;
          await this.#saveRooms(this.rooms());
          this.#emit({ type: 'room', roomId, membership: 'leave' });
        },
        timeline: async (roomId, events) => {
          for (const event of events) await this.#deliver(roomId, event);
        },
      },
    });
  }

  static async start(options: EndpointOptions): Promise<Endpoint> {
    const { api } = options;
    if (!api.userId || !api.deviceId) throw new Error('the homeserver client is not logged in');
    const engine = await CryptoEngine.open({
      api,
      userId: api.userId,
      deviceId: api.deviceId,
      ...(options.store ? { store: options.store } : {}),
      ...(options.trust ? { trust: options.trust } : {}),
      ...(options.logger ? { logger: options.logger } : {}),
      ...(options.x509 ? { x509: options.x509 } : {}),
    });
    // Publish our device keys, and our cross-signing identity, before anyone needs them.
    await engine.processOutgoing();
    const localpart = api.userId.slice(1).split(':')[0] ?? '';
    await engine.ensureCrossSigning(
      options.password === undefined ? undefined : { user: localpart, password: options.password },
      options.masterKey && {
        signer: options.masterKey,
        ...(options.extraMasterSignatures
          ? { extraMasterSignatures: options.extraMasterSignatures }
          : {}),
      },
    );
    const endpoint = new Endpoint(api, engine, options);
    endpoint.#ourMaster = await options.masterKey?.publicKeyBase64();
    endpoint.#sync.start();
    return endpoint;
  }

  rooms(): RoomSummary[] {
    return [...this.#rooms.values()];
  }

  /** Whether we are joined to (or invited to) this room, as far as sync has told us. */
  room(roomId: string): RoomSummary | undefined {
    return this.#rooms.get(roomId);
  }

  /** Messages and membership changes, in the order sync delivered them. Returns an unsubscribe. */
  onChange(listener: (event: EndpointEvent) => void): () => void {
    this.#changeListeners.add(listener);
    return () => this.#changeListeners.delete(listener);
  }

  /** New room events as they arrive, decrypted when possible. Returns an unsubscribe. */
  onEvent(listener: (item: TimelineItem) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async createRoom(options: CreateRoomOptions): Promise<string> {
    const roomId = await this.api.createRoom({ encrypted: true, ...options });
    this.#rooms.set(roomId, {
      roomId,
      membership: 'join',
      members: [this.userId, ...(options.invite ?? [])],
    });
    await this.#saveRooms(this.rooms());
    if (options.invite?.length) await this.engine.track(options.invite);
    return roomId;
  }

  async invite(roomId: string, userId: string): Promise<void> {
    await this.api.invite(roomId, userId);
    await this.engine.track([userId]);
  }

  async join(roomId: string): Promise<void> {
    await this.api.join(roomId);
    const members = await this.api.members(roomId);
    await this.engine.track(members.map((m) => m.userId));
  }

  async leave(roomId: string): Promise<void> {
    await this.api.leave(roomId);
    if (this.#rooms.delete(roomId)) await this.#saveRooms(this.rooms());
  }

  /**
   * Encrypts and sends a text message. `txnId` makes a retry after a crash idempotent: the
   * homeserver returns the first event for a transaction id it has seen.
   */
  async sendText(
    roomId: string,
    body: string,
    txnId = `mte.${randomBytes(12).toString('hex')}`,
    options: { replyTo?: string } = {},
  ): Promise<string> {
    const content = {
      msgtype: 'm.text',
      body,
      ...(options.replyTo === undefined
        ? {}
        : { 'm.relates_to': { 'm.in_reply_to': { event_id: options.replyTo } } }),
    };
    return this.sendContent(roomId, content, txnId);
  }

  /** Encrypts an m.room.message for the room's members (per the room's trust) and sends it. */
  async sendContent(
    roomId: string,
    content: object,
    txnId = `mte.${randomBytes(12).toString('hex')}`,
  ): Promise<string> {
    const members = (await this.api.members(roomId))
      .filter((m) => m.membership === 'join' || m.membership === 'invite')
      .map((m) => m.userId);
    // The core withholds keys from a verified contact's new identity by itself, but not from a
    // merely pinned one: the policy blocks both until a UI acknowledges. The engine runs this
    // after it refreshed the device lists and before any key leaves, so a key change the
    // homeserver slips into that refresh is caught too.
    const encrypted = await this.engine.encrypt(
      roomId,
      'm.room.message',
      content,
      members,
      this.#trust(roomId),
      async (recipients) => {
        const changed = await changedIdentities(this.engine.machine, members);
        if (changed.length > 0) throw new IdentityChangedError(changed);
        if (this.#trust(roomId)?.requireAttestation) {
          const missing: { userId: string; deviceId: string }[] = [];
          for (const r of recipients) {
            if (!(await this.isAttested?.(r.userId, r.deviceId))) missing.push(r);
          }
          if (missing.length > 0) {
            this.attestMissing?.(missing);
            throw new AttestationRequiredError(missing);
          }
        }
      },
    );
    return this.api.sendEvent(roomId, 'm.room.encrypted', txnId, encrypted);
  }

  /** History from the homeserver, decrypted here, newest first. */
  async timeline(
    roomId: string,
    options: { limit: number; from?: string },
  ): Promise<{ items: TimelineItem[]; next?: string }> {
    const page = await this.api.messages(roomId, {
      dir: 'b',
      limit: options.limit,
      ...(options.from ? { from: options.from } : {}),
    });
    const items: TimelineItem[] = [];
    for (const event of page.chunk) {
      if (event.type === 'm.room.encrypted' || event.type === 'm.room.message')
        items.push(await this.engine.decrypt(roomId, event, this.#trust(roomId)));
    }
    return { items, ...(page.end ? { next: page.end } : {}) };
  }

  /**
   * Members of a room, as sync last told us, whose identity changed unacknowledged: for a
   * clear answer at the API. The authoritative check is at encryption time (sendText);
   * this one needs no homeserver, so a message can still be queued while it is down.
   */
  async changedIdentitiesIn(roomId: string): Promise<string[]> {
    return changedIdentities(this.engine.machine, this.#rooms.get(roomId)?.members ?? []);
  }

  /** Resolves once a sync that started after this call has been handled. */
  synced(): Promise<void> {
    return this.#sync.nextSync();
  }

  async stop(): Promise<void> {
    await this.#sync.stop();
    this.engine.close();
  }

  async #deliver(roomId: string, event: RoomEvent): Promise<void> {
    if (event.type.startsWith('m.key.verification.')) {
      // In-room verification steps (matrix-js-sdk and Element send them in the clear).
      await this.#verificationEvent(roomId, event);
      return;
    }
    if (event.type !== 'm.room.encrypted' && event.type !== 'm.room.message') return;
    const item = await this.engine.decrypt(roomId, event, this.#trust(roomId));
    if (isDecrypted(item) && isVerificationEvent(item.type, item.content)) {
      // Only what the core decrypted (and so authenticated the sender of) goes back to it.
      await this.#verificationEvent(roomId, { ...event, type: item.type, content: item.content });
    }
    for (const listener of this.#listeners) {
      try {
        listener(item);
      } catch (e) {
        this.#log.warn(`event listener failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    this.#emit({ type: 'message', roomId, item });
  }

  async #verificationEvent(roomId: string, event: RoomEvent): Promise<void> {
    // Our own echo (it carries our transaction id) is not a step of the other side: skipped,
    // as matrix-js-sdk skips it.
    if (event.unsigned !== undefined && 'transaction_id' in event.unsigned) return;
    try {
      await this.verifications.receivedInRoom(roomId, event);
    } catch (e) {
      this.#log.warn(`verification event refused: ${e instanceof Error ? e.message : 'error'}`);
    }
  }

  #emit(event: EndpointEvent): void {
    for (const listener of this.#changeListeners) {
      try {
        listener(event);
      } catch (e) {
        this.#log.warn(`change listener failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }

  /** undefined: the engine's own setting. */
  #trust(roomId: string): TrustSettings | undefined {
    return this.#trustFor?.(roomId);
  }
}

/** An in-room verification request (a message) or step (its own event type). */
function isVerificationEvent(type: string, content: Record<string, unknown>): boolean {
  return (
    type.startsWith('m.key.verification.') ||
    (type === 'm.room.message' && content.msgtype === 'm.key.verification.request')
  );
}
