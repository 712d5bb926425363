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
  unsigned?: Record<string, unknown>;
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
  readonly userId: string | undefined;
  readonly deviceId: string | undefined;
}
