import { randomBytes } from 'node:crypto';
import {
  CryptoEngine,
  type DecryptedMessage,
  type Logger,
  type UndecryptableMessage,
} from './crypto/engine.ts';
import type { TrustSettings } from './crypto/settings.ts';
import type { CreateRoomOptions, HomeserverApi, RoomEvent } from './matrix/api.ts';
import { SyncLoop } from './sync/loop.ts';

export type TimelineItem = DecryptedMessage | UndecryptableMessage;

export function isDecrypted(item: TimelineItem): item is DecryptedMessage {
  return 'content' in item;
}

export interface RoomSummary {
  roomId: string;
  membership: 'join' | 'invite';
  members: string[];
}

export interface EndpointOptions {
  /** A homeserver client already logged in as the endpoint's device. */
  api: HomeserverApi;
  store?: { name: string; key: Uint8Array };
  trust?: TrustSettings;
  logger?: Logger;
  /** For the user-interactive auth of the first cross-signing upload. */
  password?: string;
  /** Where the previous run stopped syncing (from the sealed store). */
  since?: string;
  saveSince?: (token: string) => Promise<void>;
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
  readonly #sync: SyncLoop;
  readonly #rooms = new Map<string, RoomSummary>();
  readonly #listeners = new Set<(item: TimelineItem) => void>();
  readonly #log: Logger;

  private constructor(api: HomeserverApi, engine: CryptoEngine, options: EndpointOptions) {
    this.api = api;
    this.engine = engine;
    this.userId = api.userId ?? '';
    this.deviceId = api.deviceId ?? '';
    this.#log = options.logger ?? { warn: () => undefined, info: () => undefined };
    const saveSince = options.saveSince ?? (() => Promise.resolve());
    this.#sync = new SyncLoop({
      api,
      engine,
      ...(options.since ? { since: options.since } : {}),
      logger: this.#log,
      handlers: {
        saveSince,
        invited: (roomId) => {
          if (!this.#rooms.has(roomId))
            this.#rooms.set(roomId, { roomId, membership: 'invite', members: [] });
          return Promise.resolve();
        },
        joined: (roomId, changes) => {
          const room = this.#rooms.get(roomId) ?? { roomId, membership: 'join', members: [] };
          room.membership = 'join';
          const members = new Set(room.members);
          for (const c of changes) {
            if (c.membership === 'join' || c.membership === 'invite') members.add(c.userId);
            else members.delete(c.userId);
          }
          room.members = [...members];
          this.#rooms.set(roomId, room);
          return Promise.resolve();
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
    });
    // Publish our device keys, and our cross-signing identity, before anyone needs them.
    await engine.processOutgoing();
    const localpart = api.userId.slice(1).split(':')[0] ?? '';
    await engine.ensureCrossSigning(
      options.password === undefined ? undefined : { user: localpart, password: options.password },
    );
    const endpoint = new Endpoint(api, engine, options);
    endpoint.#sync.start();
    return endpoint;
  }

  rooms(): RoomSummary[] {
    return [...this.#rooms.values()];
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
    this.#rooms.delete(roomId);
  }

  /**
   * Encrypts and sends a text message. `txnId` makes a retry after a crash idempotent: the
   * homeserver returns the first event for a transaction id it has seen.
   */
  async sendText(
    roomId: string,
    body: string,
    txnId = `mte.${randomBytes(12).toString('hex')}`,
  ): Promise<string> {
    const members = (await this.api.members(roomId))
      .filter((m) => m.membership === 'join' || m.membership === 'invite')
      .map((m) => m.userId);
    const encrypted = await this.engine.encrypt(
      roomId,
      'm.room.message',
      { msgtype: 'm.text', body },
      members,
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
        items.push(await this.engine.decrypt(roomId, event));
    }
    return { items, ...(page.end ? { next: page.end } : {}) };
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
    if (event.type !== 'm.room.encrypted' && event.type !== 'm.room.message') return;
    const item = await this.engine.decrypt(roomId, event);
    for (const listener of this.#listeners) {
      try {
        listener(item);
      } catch (e) {
        this.#log.warn(`event listener failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
}
