/**
 * What the endpoint needs from a homeserver (Matrix client-server API v3). Implemented by
 * HomeserverClient in client.ts; the crypto adapter and sync loop depend only on this.
 * Every response is validated with zod before it is returned: callers see typed data or a
 * MatrixApiError, never an unchecked body.
 */
export interface LoginResult {
  userId: string;
  deviceId: string;
  accessToken: string;
}

/** The parts of /sync the endpoint uses; unknown fields are dropped by the schema. */
export interface SyncResponse {
  next_batch: string;
  rooms?: {
    join?: Record<string, JoinedRoom>;
    invite?: Record<string, { invite_state?: { events?: StrippedEvent[] } }>;
    leave?: Record<string, { timeline?: { events?: RoomEvent[] } }>;
  };
  to_device?: { events?: ToDeviceEvent[] };
  device_lists?: { changed?: string[]; left?: string[] };
  device_one_time_keys_count?: Record<string, number>;
  device_unused_fallback_key_types?: string[];
}

export interface JoinedRoom {
  timeline?: { events?: RoomEvent[]; limited?: boolean; prev_batch?: string };
  state?: { events?: RoomEvent[] };
}

export interface RoomEvent {
  type: string;
  event_id: string;
  sender: string;
  origin_server_ts: number;
  content: Record<string, unknown>;
  state_key?: string;
  /** Kept whole: holds `redacted_because`, `m.relations`, `transaction_id`. */
  unsigned?: Record<string, unknown>;
  /** The redacted event's id, top-level in rooms before v11 (in `content` from v11 on). */
  redacts?: string;
}

export interface StrippedEvent {
  type: string;
  sender: string;
  state_key: string;
  content: Record<string, unknown>;
}

export interface ToDeviceEvent {
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

export interface Member {
  userId: string;
  membership: string;
}

export interface MessagesPage {
  chunk: RoomEvent[];
  start: string;
  end?: string;
}

export interface CreateRoomOptions {
  name?: string;
  invite?: string[];
  isDirect?: boolean;
  /** Defaults to true: m.room.encryption (megolm) in the initial state. */
  encrypted?: boolean;
}

/** Authentication data for user-interactive auth (device_signing upload). */
export interface UiaAuth {
  type: 'm.login.password';
  identifier: { type: 'm.id.user'; user: string };
  password: string;
  session?: string;
}

export interface HomeserverApi {
  login(user: string, password: string, deviceId?: string): Promise<LoginResult>;
  logout(): Promise<void>;
  /** Long-poll; `timeoutMs` is the server-side wait. */
  sync(options: {
    since?: string;
    timeoutMs?: number;
    filter?: string;
    signal?: AbortSignal;
    /** Each failed attempt the client retries by itself (it retries sync until aborted). */
    onRetry?: () => void;
  }): Promise<SyncResponse>;
  createRoom(options: CreateRoomOptions): Promise<string>;
  invite(roomId: string, userId: string): Promise<void>;
  join(roomIdOrAlias: string): Promise<string>;
  leave(roomId: string): Promise<void>;
  members(roomId: string): Promise<Member[]>;
  messages(
    roomId: string,
    options: { from?: string; dir: 'b' | 'f'; limit: number },
  ): Promise<MessagesPage>;
  /**
   * PUT /rooms/{roomId}/send/{type}/{txnId}: the same txnId is deduplicated by the server.
   * Sends retry through outages until `signal` (or the client's own signal) aborts.
   */
  sendEvent(
    roomId: string,
    type: string,
    txnId: string,
    content: object,
    options?: { signal?: AbortSignal },
  ): Promise<string>;
  sendToDevice(
    type: string,
    txnId: string,
    messages: object,
    options?: { signal?: AbortSignal },
  ): Promise<void>;
  /**
   * The bodies the crypto engine produces (KeysUpload, KeysQuery, KeysClaim, SignatureUpload)
   * are JSON strings it made; these pass them through and return the raw JSON response text
   * the engine expects back, after checking it is a JSON object.
   */
  keysUpload(body: string): Promise<string>;
  keysQuery(body: string): Promise<string>;
  keysClaim(body: string): Promise<string>;
  signaturesUpload(body: string): Promise<string>;
  /** POST /keys/device_signing/upload, retried with `auth` when the server asks for UIA. */
  deviceSigningUpload(body: string, auth?: UiaAuth): Promise<string>;
  /**
   * POST /_matrix/media/v3/upload: stores `bytes` and returns its mxc:// URI (checked against
   * the mxc grammar). Each call creates new media, so a retried upload at worst leaves an
   * unreferenced copy behind.
   */
  upload(
    bytes: Uint8Array,
    options: { contentType: string; filename?: string; signal?: AbortSignal },
  ): Promise<string>;
  /**
   * Authenticated media (GET /_matrix/client/v1/media/download, MSC3916), falling back to the
   * unauthenticated /_matrix/media/v3/download only when the server does not know the
   * authenticated endpoint. A body over `maxBytes` is RESPONSE_TOO_LARGE, read no further.
   */
  download(mxc: string, options: { maxBytes: number; signal?: AbortSignal }): Promise<Uint8Array>;
  /**
   * GET /_matrix/client/v1/media/config (falling back to /_matrix/media/v3/config):
   * `uploadSize` is m.upload.size in bytes, absent when the server does not advertise one.
   */
  mediaConfig(): Promise<{ uploadSize?: number }>;
  /** GET /rooms/{roomId}/event/{eventId}; an answer about another event is BAD_RESPONSE. */
  event(roomId: string, eventId: string): Promise<RoomEvent>;
  /**
   * PUT /rooms/{roomId}/redact/{eventId}/{txnId}: returns the redaction's event id. Retried
   * through outages like sendEvent; the same txnId is deduplicated by the server.
   */
  redact(
    roomId: string,
    eventId: string,
    txnId: string,
    reason?: string,
    options?: { signal?: AbortSignal },
  ): Promise<string>;
  /** GET /rooms/{roomId}/state/{type}/{stateKey}: the content, or undefined when unset. */
  roomState(
    roomId: string,
    type: string,
    stateKey: string,
  ): Promise<Record<string, unknown> | undefined>;
  /** GET /room_keys/version: the current key backup version's JSON, or undefined if none. */
  backupVersion(): Promise<Record<string, unknown> | undefined>;
  /** POST /room_keys/version: a new backup version (it becomes current); its version string. */
  backupCreateVersion(algorithm: string, authData: object): Promise<string>;
  /** DELETE /room_keys/version/{version}; an already-deleted version is not an error. */
  backupDeleteVersion(version: string): Promise<void>;
  /**
   * PUT /room_keys/keys?version=: the crypto engine's KeysBackupRequest body, passed through;
   * the raw response (`{etag, count}`) for markRequestAsSent. A version that is no longer
   * current answers M_WRONG_ROOM_KEYS_VERSION.
   */
  backupUpload(version: string, body: string): Promise<string>;
  /** GET /room_keys/keys?version=: every backed-up session (large: up to maxLargeBodyBytes). */
  backupDownload(version: string): Promise<Record<string, unknown>>;
  readonly userId: string | undefined;
  readonly deviceId: string | undefined;
}
