import { setTimeout as sleep } from 'node:timers/promises';
import type { CryptoEngine, PrivateToDeviceMessage } from '../crypto/engine.ts';
import type { HomeserverApi, RoomEvent, SyncResponse } from '../matrix/api.ts';

/** What a sync says about a room's timeline beyond its events. */
export interface TimelineInfo {
  /** The server left events out (more arrived than one sync carries). */
  limited: boolean;
  /** Where /messages continues backwards from the first event given. */
  prevBatch?: string;
  /** The first sync of this run without a stored position: nothing was "missed". */
  initial: boolean;
}

export interface SyncHandlers {
  /** Timeline events of a joined room, in order, as the server sent them (still encrypted). */
  timeline(roomId: string, events: RoomEvent[], info: TimelineInfo): Promise<void>;
  /** State and timeline membership changes, for the room list. */
  invited(
    roomId: string,
    invite: { inviter?: string; encrypted: boolean } & RoomLabels,
  ): Promise<void>;
  /**
   * `encrypted`: this sync shows m.room.encryption in the room's state. `name`/`topic`: the
   * newest of those state events in this sync (null: removed; absent: not in this sync).
   */
  joined(
    roomId: string,
    members: MemberChange[],
    state: { encrypted: boolean } & RoomLabels,
  ): Promise<void>;
  /** We left the room, or were kicked or banned from it. */
  left(roomId: string): Promise<void>;
  /** Verification requests that arrived by to-device message (the core holds the flows). */
  verificationRequests?(requests: { sender: string; flowId: string }[]): Promise<void>;
  /** Our own Olm-encrypted to-device messages (engine.privateTypes: attestation). */
  privateMessages?(messages: PrivateToDeviceMessage[]): Promise<void>;
  /** Persist the token only after everything before it was handled (resume point). */
  saveSince(token: string): Promise<void>;
  /** Whether the last sync request was answered (false: it failed; the loop retries). */
  homeserver?(reachable: boolean): void;
}

/** A membership event as the room list needs it; `displayName` null: none set. */
export interface MemberChange {
  userId: string;
  membership: string;
  displayName?: string | null;
}

/** What another user chose to call a room: shown to users as text they control, not us. */
export interface RoomLabels {
  name?: string | null;
  topic?: string | null;
}

/** Longest room name, topic and display name kept (longer ones are cut, not refused). */
export const MAX_ROOM_NAME = 255;
export const MAX_TOPIC = 1000;
export const MAX_DISPLAY_NAME = 256;

/** The newest m.room.name and m.room.topic among `events` (state order: later wins). */
export function labelsOf(
  events: readonly Pick<RoomEvent, 'type' | 'state_key' | 'content'>[],
): RoomLabels {
  const labels: RoomLabels = {};
  for (const e of events) {
    if (e.state_key !== '') continue;
    if (e.type === 'm.room.name') labels.name = text(e.content.name, MAX_ROOM_NAME);
    if (e.type === 'm.room.topic') labels.topic = text(e.content.topic, MAX_TOPIC);
  }
  return labels;
}

function text(value: unknown, max: number): string | null {
  return typeof value === 'string' && value.length > 0 ? value.slice(0, max) : null;
}

export interface SyncLogger {
  warn(message: string): void;
}

/**
 * The sync loop: long-polls /sync, hands each response's crypto parts to the engine first
 * (so room keys arrive before the messages that need them), sends what the engine wants sent,
 * then passes room changes on. A failing iteration (homeserver down, malformed response) is
 * logged in one line and retried after a pause; the loop never dies of it.
 */
export class SyncLoop {
  readonly #api: HomeserverApi;
  readonly #engine: CryptoEngine;
  readonly #handlers: SyncHandlers;
  readonly #log: SyncLogger;
  #since: string | undefined;
  #abort = new AbortController();
  #running: Promise<void> | undefined;
  #waiters: (() => void)[] = [];
  #consecutiveFailures = 0;

  constructor(options: {
    api: HomeserverApi;
    engine: CryptoEngine;
    handlers: SyncHandlers;
    since?: string;
    logger?: SyncLogger;
  }) {
    this.#api = options.api;
    this.#engine = options.engine;
    this.#handlers = options.handlers;
    this.#since = options.since;
    this.#log = options.logger ?? { warn: () => undefined };
  }

  start(): void {
    this.#running ??= this.#loop();
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#running;
    this.#running = undefined;
    this.#abort = new AbortController();
  }

  /** Resolves after the next sync that completes from now on. */
  nextSync(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async #loop(): Promise<void> {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      try {
        let sync: SyncResponse;
        try {
          sync = await this.#api.sync({
            ...(this.#since ? { since: this.#since, timeoutMs: 30_000 } : { timeoutMs: 0 }),
            signal,
            // The client retries sync by itself until aborted: a down homeserver never throws.
            onRetry: () => this.#handlers.homeserver?.(false),
          });
        } catch (e) {
          // Not answering at all, or not as the spec says: either way nothing arrives.
          // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- stop() aborts during the await
          if (!signal.aborted) this.#handlers.homeserver?.(false);
          throw e;
        }
        this.#handlers.homeserver?.(true);
        await this.#handle(sync, this.#since === undefined);
        this.#since = sync.next_batch;
        await this.#handlers.saveSince(sync.next_batch);
        this.#consecutiveFailures = 0;
        for (const w of this.#waiters.splice(0)) w();
      } catch (e) {
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- stop() aborts during the await
        if (signal.aborted) break;
        this.#consecutiveFailures++;
        const delay = Math.min(30_000, 500 * 2 ** Math.min(this.#consecutiveFailures, 6));
        this.#log.warn(
          `sync failed (${e instanceof Error ? e.message : String(e)}); retrying in ${delay} ms`,
        );
        await sleep(delay, undefined, { signal }).catch(() => undefined);
      }
    }
  }

  async #handle(sync: SyncResponse, initial: boolean): Promise<void> {
    const { verificationRequests: requests, privateMessages } =
      await this.#engine.receiveSyncAll(sync);
    await this.#engine.processOutgoing();
    if (requests.length > 0) await this.#handlers.verificationRequests?.(requests);
    if (privateMessages.length > 0) await this.#handlers.privateMessages?.(privateMessages);
    for (const [roomId, invite] of Object.entries(sync.rooms?.invite ?? {})) {
      const stripped = invite.invite_state?.events ?? [];
      // Who invited us: the sender of our own invite membership event in the stripped state.
      const ours = stripped.find(
        (e) =>
          e.type === 'm.room.member' &&
          e.state_key === this.#api.userId &&
          e.content.membership === 'invite',
      );
      await this.#handlers.invited(roomId, {
        ...(ours === undefined ? {} : { inviter: ours.sender }),
        ...labelsOf(stripped),
        encrypted: stripped.some((e) => e.type === 'm.room.encryption' && e.state_key === ''),
      });
    }
    for (const roomId of Object.keys(sync.rooms?.leave ?? {})) await this.#handlers.left(roomId);
    for (const [roomId, room] of Object.entries(sync.rooms?.join ?? {})) {
      const stateEvents = [...(room.state?.events ?? []), ...(room.timeline?.events ?? [])];
      const members = stateEvents
        .filter((e) => e.type === 'm.room.member' && typeof e.state_key === 'string')
        .map((e) => ({
          userId: e.state_key ?? '',
          membership: String(e.content.membership),
          displayName: text(e.content.displayname, MAX_DISPLAY_NAME),
        }));
      const encrypted = stateEvents.some(
        (e) => e.type === 'm.room.encryption' && e.state_key === '',
      );
      await this.#handlers.joined(roomId, members, { encrypted, ...labelsOf(stateEvents) });
      const events = room.timeline?.events ?? [];
      if (events.length > 0) {
        await this.#handlers.timeline(roomId, events, {
          limited: room.timeline?.limited === true,
          ...(room.timeline?.prev_batch === undefined
            ? {}
            : { prevBatch: room.timeline.prev_batch }),
          initial,
        });
      }
    }
  }
}
