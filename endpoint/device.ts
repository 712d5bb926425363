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
import type { CreateRoomOptions, HomeserverApi, Member, RoomEvent } from './matrix/api.ts';
import { eventResponse as bundledEvent } from './matrix/schemas.ts';
import { type RoomLabels, SyncLoop, type TimelineInfo } from './sync/loop.ts';
import { Foreground } from './foreground.ts';
import {
  type Classified,
  type EditView,
  type Exclusion,
  type MessageView,
  type Outgoing,
  aggregate,
  classify,
  mayReplace,
  contentOf,
  exclusionsFor,
  isRedacted,
  PagePrefetch,
  mayBeItem,
  redactedView,
} from './messages/index.ts';
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
  /** The room has m.room.encryption; undefined until the endpoint has seen its state. */
  encrypted?: boolean;
  /** For an invitation: who sent it. */
  inviter?: string;
  /** m.room.name and m.room.topic: text another user chose, for a UI to show as text. */
  name?: string;
  topic?: string;
  /** Members' display names (m.room.member displayname), only for members who set one. */
  displayNames?: Record<string, string>;
}

/** Who of a /members answer gets room keys: the joined and the invited. */
function presentMembers(members: readonly Member[]): string[] {
  return members
    .filter((m) => m.membership === 'join' || m.membership === 'invite')
    .map((m) => m.userId);
}

/** Applies a sync's name/topic to a room (null removes, absent keeps). */
function applyLabels(room: RoomSummary, labels: RoomLabels): boolean {
  let changed = false;
  if (labels.name !== undefined && labels.name !== (room.name ?? null)) {
    if (labels.name === null) delete room.name;
    else room.name = labels.name;
    changed = true;
  }
  if (labels.topic !== undefined && labels.topic !== (room.topic ?? null)) {
    if (labels.topic === null) delete room.topic;
    else room.topic = labels.topic;
    changed = true;
  }
  return changed;
}

/**
 * A limited sync (more arrived than it carries) is filled in from /messages, at most this
 * many events back; beyond that the stream says `gap` and the UI refetches.
 */
export const MAX_BACKFILL_EVENTS = 1000;
/** Senders of recent items, so that an edit by someone else is recognised without a fetch. */
const SENDERS_REMEMBERED = 5000;

/** A send into a room without m.room.encryption: this version has no plaintext send path. */
export class RoomNotEncryptedError extends Error {
  readonly status = 400;
  readonly errcode = 'ROOM_NOT_ENCRYPTED';
  readonly retryable = false;
  constructor() {
    super('the room is not end-to-end encrypted; this endpoint sends only to encrypted rooms');
    this.name = 'RoomNotEncryptedError';
  }
}

/** What the endpoint tells its listeners about (the local API's event stream). */
export type EndpointEvent =
  | { type: 'message'; roomId: string; view: MessageView }
  /** The sender replaced an item's text. */
  | { type: 'edit'; roomId: string; edit: EditView }
  | {
      type: 'reaction';
      roomId: string;
      target: string;
      eventId: string;
      key: string;
      sender: string;
    }
  | { type: 'redaction'; roomId: string; target: string; sender: string }
  /** Events of the room were missed and could not be fetched back: refetch its timeline. */
  | { type: 'gap'; roomId: string }
  /** A send reached the homeserver; `excluded`: who will not get the room key. */
  | { type: 'sent'; roomId: string; txnId: string; eventId: string; excluded: Exclusion[] }
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
  /** Replace a published identity that is not the vault's (cross-signing.ts). */
  replaceIdentity?: boolean;
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
  /** Told after each sync request whether the homeserver answered it. */
  onHomeserver?: (reachable: boolean) => void;
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
  /** Sends run in it; long reads (a page of history) give way to them between events. */
  readonly foreground = new Foreground();
  /** History pages, the next one fetched while a reader pages back through this one. */
  readonly #history: PagePrefetch;
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
  /** The newest event delivered per room: where a backfill after a limited sync stops. */
  readonly #lastEvent = new Map<string, string>();
  readonly #senders = new Map<string, { sender: string; encrypted: boolean }>();
  /** The vault's master public key, when it holds ours: our identity must keep it. */
  #ourMaster: string | undefined;

  private constructor(api: HomeserverApi, engine: CryptoEngine, options: EndpointOptions) {
    this.api = api;
    this.engine = engine;
    this.#history = new PagePrefetch((roomId, options) => api.messages(roomId, options));
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
        ...(options.onHomeserver ? { homeserver: options.onHomeserver } : {}),
        verificationRequests: (requests) => this.verifications.received(requests),
        privateMessages: async (messages) => {
          await this.privateMessages?.(messages);
        },
        invited: async (roomId, invite) => {
          if (this.#rooms.has(roomId)) return;
          const room: RoomSummary = {
            roomId,
            membership: 'invite',
            members: [],
            encrypted: invite.encrypted,
            ...(invite.inviter === undefined ? {} : { inviter: invite.inviter }),
          };
          applyLabels(room, invite);
          this.#rooms.set(roomId, room);
          await this.#saveRooms(this.rooms());
          this.#emit({ type: 'room', roomId, membership: 'invite' });
        },
        joined: async (roomId, changes, state) => {
          const known = this.#rooms.get(roomId);
          const room: RoomSummary = known ?? { roomId, membership: 'join', members: [] };
          const newlyJoined = known?.membership !== 'join';
          room.membership = 'join';
          delete room.inviter;
          // Encryption, once on, cannot be turned off (the spec): a room seen encrypted stays so.
          const wasEncrypted = room.encrypted;
          if (state.encrypted) room.encrypted = true;
          // The sync that first shows a joined room carries its whole state.
          else if (room.encrypted === undefined && newlyJoined) room.encrypted = false;
          const labelled = applyLabels(room, state);
          const members = new Set(room.members);
          const before = members.size;
          const changed: { userId: string; membership: string }[] = [];
          const names = new Map(Object.entries(room.displayNames ?? {}));
          let renamed = false;
          for (const c of changes) {
            const present = members.has(c.userId);
            if (c.membership === 'join' || c.membership === 'invite') members.add(c.userId);
            else members.delete(c.userId);
            if (present !== members.has(c.userId) || c.membership === 'join') changed.push(c);
            const name = members.has(c.userId) ? (c.displayName ?? null) : null;
            if (name !== (names.get(c.userId) ?? null)) {
              renamed = true;
              if (name === null) names.delete(c.userId);
              else names.set(c.userId, name);
            }
          }
          room.members = [...members];
          if (names.size > 0) room.displayNames = Object.fromEntries(names);
          else delete room.displayNames;
          this.#rooms.set(roomId, room);
          if (
            newlyJoined ||
            members.size !== before ||
            changed.length > 0 ||
            labelled ||
            renamed ||
            wasEncrypted !== room.encrypted
          ) {
            await this.#saveRooms(this.rooms());
          }
          // A new name or topic is news for the room list too: UIs refetch on `room`.
          if (newlyJoined || labelled) this.#emit({ type: 'room', roomId, membership: 'join' });
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
        timeline: async (roomId, events, info) => {
          if (info.limited && !info.initial) await this.#backfill(roomId, info, events[0]);
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
        ...(options.replaceIdentity === true ? { replaceForeign: true } : {}),
      },
    );
    const endpoint = new Endpoint(api, engine, options);
    endpoint.#ourMaster = await options.masterKey?.publicKeyBase64();
    endpoint.#sync.start();
    void endpoint.#learnEncryption();
    return endpoint;
  }

  /**
   * Rooms remembered by an earlier version carry no `encrypted`: asked of the homeserver once,
   * in the background (until then they count as encrypted for display, and sends check).
   */
  async #learnEncryption(): Promise<void> {
    for (const room of this.#rooms.values()) {
      if (room.encrypted !== undefined || room.membership !== 'join') continue;
      try {
        const state = await this.api.roomState(room.roomId, 'm.room.encryption', '');
        room.encrypted = state !== undefined;
      } catch {
        continue; // asked again at the next start
      }
    }
    await this.#saveRooms(this.rooms()).catch(() => undefined);
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
      encrypted: options.encrypted !== false,
    });
    await this.#saveRooms(this.rooms());
    if (options.invite?.length) await this.engine.track(options.invite);
    return roomId;
  }

  async invite(roomId: string, userId: string): Promise<void> {
    await this.api.invite(roomId, userId);
    await this.engine.track([userId]);
    // Invited members get room keys (as with /members): from now, not from the next sync.
    const room = this.#rooms.get(roomId);
    if (room?.membership === 'join' && !room.members.includes(userId)) {
      room.members = [...room.members, userId];
      await this.#saveRooms(this.rooms());
    }
  }

  /**
   * Joins a room (accepts its invitation). The room shows as joined at once; the sync that
   * follows brings its members and state.
   */
  async join(roomId: string): Promise<void> {
    await this.api.join(roomId);
    const members = await this.api.members(roomId);
    await this.engine.track(members.map((m) => m.userId));
    const known = this.#rooms.get(roomId);
    const encrypted =
      known?.encrypted ?? (await this.api.roomState(roomId, 'm.room.encryption', '')) !== undefined;
    // The invitation's name and topic (from its stripped state) stay until sync brings the
    // room's own state.
    this.#rooms.set(roomId, {
      roomId,
      membership: 'join',
      members: presentMembers(members),
      encrypted,
      ...(known?.name === undefined ? {} : { name: known.name }),
      ...(known?.topic === undefined ? {} : { topic: known.topic }),
    });
    await this.#saveRooms(this.rooms());
    this.#emit({ type: 'room', roomId, membership: 'join' });
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
    return this.sendOutgoing(
      roomId,
      {
        kind: 'text',
        body,
        ...(options.replyTo === undefined ? {} : { replyTo: options.replyTo }),
      },
      txnId,
    );
  }

  /**
   * Sends one outgoing message of any kind (outgoing.ts): encrypted for the room's members,
   * except redactions, which the homeserver must read. Emits `sent` with who was left out.
   */
  async sendOutgoing(roomId: string, message: Outgoing, txnId: string): Promise<string> {
    if (message.kind === 'redaction') {
      const eventId = await this.api.redact(roomId, message.target, txnId, message.reason);
      this.#emit({ type: 'sent', roomId, txnId, eventId, excluded: [] });
      return eventId;
    }
    const { type, content } = contentOf(message);
    return this.sendContent(roomId, content, txnId, type);
  }

  /** Encrypts an event (m.room.message by default) for the room's members and sends it. */
  async sendContent(
    roomId: string,
    content: object,
    txnId = `mte.${randomBytes(12).toString('hex')}`,
    type = 'm.room.message',
  ): Promise<string> {
    if (this.#rooms.get(roomId)?.encrypted === false) throw new RoomNotEncryptedError();
    const members = await this.#recipients(roomId);
    let excluded: Exclusion[] = [];
    // The core withholds keys from a verified contact's new identity by itself, but not from a
    // merely pinned one: the policy blocks both until a UI acknowledges. The engine runs this
    // after it refreshed the device lists and before any key leaves, so a key change the
    // homeserver slips into that refresh is caught too.
    const trust = this.#trust(roomId);
    const encrypted = await this.engine.encrypt(
      roomId,
      type,
      content,
      members,
      trust,
      async (recipients) => {
        const changed = await changedIdentities(this.engine.machine, members);
        if (changed.length > 0) throw new IdentityChangedError(changed);
        if (trust?.requireAttestation) {
          const missing: { userId: string; deviceId: string }[] = [];
          for (const r of recipients) {
            if (!(await this.isAttested?.(r.userId, r.deviceId))) missing.push(r);
          }
          if (missing.length > 0) {
            this.attestMissing?.(missing);
            throw new AttestationRequiredError(missing);
          }
        }
        // Who is left out, with the device lists just refreshed (for the `sent` event).
        excluded = await this.#exclusions(members, trust);
      },
    );
    const eventId = await this.api.sendEvent(roomId, 'm.room.encrypted', txnId, encrypted);
    this.#emit({ type: 'sent', roomId, txnId, eventId, excluded });
    return eventId;
  }

  /**
   * Whom a room's key goes to: its joined and invited members as sync keeps them (every sync's
   * state and timeline membership events, applied before the next send; our own invitations
   * at once), not a /members call per send. Only a room sync has not described yet is asked
   * of the homeserver. A member whose join is in a sync not yet applied gets the key with the
   * next send, as with any client that reads membership from sync.
   */
  async #recipients(roomId: string): Promise<string[]> {
    const known = this.#rooms.get(roomId);
    if (known?.membership === 'join' && known.members.length > 0) return [...known.members];
    return presentMembers(await this.api.members(roomId));
  }

  /**
   * Members and devices that would not get this room's key now, from what the crypto store
   * knows (no homeserver call: for the answer to a send, before it is queued).
   */
  async exclusionsIn(roomId: string): Promise<Exclusion[]> {
    const members = this.#rooms.get(roomId)?.members ?? [];
    return this.#exclusions(members, this.#trust(roomId));
  }

  async #exclusions(members: string[], trust: TrustSettings | undefined): Promise<Exclusion[]> {
    return exclusionsFor(this.engine, members, trust ?? this.engine.trust, {
      userId: this.userId,
      deviceId: this.deviceId,
    });
  }

  /**
   * History from the homeserver, decrypted here, newest first: edits applied to what they
   * replace, reactions counted, redactions shown as such (messages/aggregate.ts). Edits,
   * reactions and redactions are not items of their own.
   */
  async timeline(
    roomId: string,
    options: { limit: number; from?: string },
  ): Promise<{ items: MessageView[]; next?: string }> {
    const page = await this.#history.page(roomId, options.limit, options.from);
    const classified: Classified[] = [];
    const bundled = new Map<string, EditView>();
    const budget = this.foreground.budget();
    for (const event of page.chunk) {
      await this.foreground.yield(budget);
      const c = await this.#classify(roomId, event);
      classified.push(c);
      if (c.role === 'item') {
        const edit = await this.#bundledEdit(roomId, event);
        if (edit) bundled.set(event.event_id, edit);
      }
    }
    const items = aggregate(classified, { self: this.userId, bundled });
    return { items, ...(page.end ? { next: page.end } : {}) };
  }

  /** An event's attachment content, decrypted (for the download of its file). */
  async attachmentContent(
    roomId: string,
    eventId: string,
  ): Promise<{ content: Record<string, unknown>; sender: string } | undefined> {
    const event = await this.api.event(roomId, eventId);
    if (isRedacted(event) || !mayBeItem(event)) return undefined;
    const item = await this.engine.decrypt(roomId, event, this.#trust(roomId));
    if (!isDecrypted(item) || item.type !== 'm.room.message') return undefined;
    return { content: item.content, sender: item.sender };
  }

  /** The sender of one of the room's events (from memory, else the homeserver). */
  async senderOf(roomId: string, eventId: string): Promise<string> {
    return (await this.#itemOf(roomId, eventId)).sender;
  }

  async #itemOf(roomId: string, eventId: string): Promise<{ sender: string; encrypted: boolean }> {
    const known = this.#senders.get(eventId);
    if (known !== undefined) return known;
    const event = await this.api.event(roomId, eventId);
    return { sender: event.sender, encrypted: event.type === 'm.room.encrypted' };
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

  /** One event from sync: verification steps to the flows, everything else to the stream. */
  async #deliver(roomId: string, event: RoomEvent): Promise<void> {
    this.#lastEvent.set(roomId, event.event_id);
    if (event.type.startsWith('m.key.verification.')) {
      // In-room verification steps (matrix-js-sdk and Element send them in the clear).
      await this.#verificationEvent(roomId, event);
      return;
    }
    if (!mayBeItem(event)) return;
    let classified: Classified;
    if (isRedacted(event)) {
      classified = { role: 'item', view: redactedView(event) };
    } else {
      const item = await this.engine.decrypt(roomId, event, this.#trust(roomId));
      if (isDecrypted(item) && isVerificationEvent(item.type, item.content)) {
        // Only what the core decrypted (and so authenticated the sender of) goes back to it.
        await this.#verificationEvent(roomId, {
          ...event,
          type: item.type,
          content: item.content,
        });
      }
      for (const listener of this.#listeners) {
        try {
          listener(item);
        } catch (e) {
          this.#log.warn(`event listener failed: ${e instanceof Error ? e.message : String(e)}`);
        }
      }
      classified = classify(item, event, this.#rooms.get(roomId)?.encrypted !== false);
    }
    switch (classified.role) {
      case 'item':
        this.#remember(classified.view.eventId, classified.view.sender, classified.view.encrypted);
        this.#emit({ type: 'message', roomId, view: classified.view });
        return;
      case 'edit': {
        // Only the sender of an item may replace its text (the spec; clients ignore others').
        const { edit } = classified;
        const target = await this.#itemOf(roomId, edit.target).catch(() => undefined);
        if (target === undefined || !mayReplace(target, edit)) {
          this.#log.warn('ignoring an edit by someone other than its sender, or in the clear');
          return;
        }
        this.#history.forget(roomId);
        this.#emit({ type: 'edit', roomId, edit });
        return;
      }
      case 'reaction':
        this.#remember(classified.eventId, classified.sender, event.type === 'm.room.encrypted');
        this.#emit({
          type: 'reaction',
          roomId,
          target: classified.target,
          eventId: classified.eventId,
          key: classified.key,
          sender: classified.sender,
        });
        return;
      case 'redaction':
        this.#history.forget(roomId);
        this.#emit({
          type: 'redaction',
          roomId,
          target: classified.target,
          sender: classified.sender,
        });
        return;
      case 'none':
        return;
    }
  }

  /**
   * A limited sync skipped events: they are fetched back from /messages (newest first, from
   * the sync's prev_batch) down to the newest event we delivered, and delivered in order
   * before the sync's own. Without such an event to stop at (the first sync after a start),
   * or past MAX_BACKFILL_EVENTS, the stream carries `gap`: the UI refetches the timeline.
   */
  async #backfill(roomId: string, info: TimelineInfo, first: RoomEvent | undefined): Promise<void> {
    const last = this.#lastEvent.get(roomId);
    if (last === undefined || info.prevBatch === undefined) {
      this.#emit({ type: 'gap', roomId });
      return;
    }
    if (first?.event_id === last) return;
    const missed: RoomEvent[] = [];
    let from: string | undefined = info.prevBatch;
    let reached = false;
    try {
      while (from !== undefined && missed.length < MAX_BACKFILL_EVENTS) {
        const page = await this.api.messages(roomId, { dir: 'b', limit: 100, from });
        for (const event of page.chunk) {
          if (event.event_id === last) {
            reached = true;
            break;
          }
          missed.push(event);
        }
        if (reached || page.chunk.length === 0) break;
        from = page.end;
      }
    } catch (e) {
      this.#log.warn(`backfill failed (${e instanceof Error ? e.message : 'error'})`);
    }
    if (!reached) this.#emit({ type: 'gap', roomId });
    for (const event of missed.slice(0, MAX_BACKFILL_EVENTS).reverse()) {
      await this.#deliver(roomId, event);
    }
  }

  /** Classifies a history event (no side effects: verification and listeners are sync's). */
  async #classify(roomId: string, event: RoomEvent): Promise<Classified> {
    if (!mayBeItem(event)) return { role: 'none' };
    if (isRedacted(event)) return { role: 'item', view: redactedView(event) };
    const item = await this.engine.decrypt(roomId, event, this.#trust(roomId));
    return classify(item, event, this.#rooms.get(roomId)?.encrypted !== false);
  }

  /** The latest edit the homeserver bundled with an event (unsigned m.relations m.replace). */
  async #bundledEdit(roomId: string, event: RoomEvent): Promise<EditView | undefined> {
    const relations = event.unsigned?.['m.relations'];
    if (typeof relations !== 'object' || relations === null) return undefined;
    const replace = (relations as Record<string, unknown>)['m.replace'];
    const parsed = bundledEvent.safeParse(replace);
    if (!parsed.success) return undefined;
    const c = await this.#classify(roomId, parsed.data);
    return c.role === 'edit' && c.edit.target === event.event_id ? c.edit : undefined;
  }

  #remember(eventId: string, sender: string, encrypted: boolean): void {
    this.#senders.set(eventId, { sender, encrypted });
    if (this.#senders.size > SENDERS_REMEMBERED) {
      const oldest = this.#senders.keys().next().value;
      if (oldest !== undefined) this.#senders.delete(oldest);
    }
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
