import type { z } from 'zod';
import type {
  CreateRoomOptions,
  HomeserverApi,
  LoginResult,
  Member,
  MessagesPage,
  RoomEvent,
  SyncResponse,
  UiaAuth,
} from './api.ts';
import { ClientCode, MatrixApiError, isMatrixApiError, localError, redact } from './errors.ts';
import {
  type HomeserverLogger,
  type HttpRequest,
  type HttpResponse,
  HttpTransport,
  type RetryPolicy,
  type RetryTiming,
  defaultTiming,
  silentLogger,
} from './http.ts';
import { MediaTransport } from './media-http.ts';
import { MediaCalls } from './media.ts';
import {
  emptyResponse,
  errorBody,
  eventIdResponse,
  eventResponse,
  eventSchemas,
  jsonObject,
  keysClaimResponse,
  keysQueryResponse,
  keysUploadResponse,
  backupUploaded,
  backupVersionCreated,
  loginResponse,
  roomIdResponse,
  signaturesUploadResponse,
  uiaChallenge,
  validate,
} from './schemas.ts';

export interface HomeserverClientOptions {
  /** The homeserver's base URL, e.g. https://matrix.example.org (a path prefix is kept). */
  baseUrl: string;
  /** A session restored from storage, instead of calling login(). */
  session?: LoginResult;
  logger?: HomeserverLogger;
  /** The client's lifetime: aborting it ends every call and every retry loop. */
  signal?: AbortSignal;
  timing?: Partial<RetryTiming>;
  /** Attempts for calls that do not retry forever (everything but sync and sends). */
  attempts?: number;
  /** Per-request timeout for everything but sync. */
  requestTimeoutMs?: number;
  /** Added to sync's server-side timeout: the server may answer a little late. */
  syncTimeoutMarginMs?: number;
  maxBodyBytes?: number;
  /** Also bounds /keys/query, which grows with the number of devices in shared rooms. */
  maxLargeBodyBytes?: number;
}

const MiB = 1024 * 1024;

/**
 * What the endpoint syncs when the caller names no filter. Presence, typing, receipts and
 * account data are not used by the endpoint, so the server need not send them. Members are
 * never lazy-loaded: room keys must go to every member's devices, so the crypto engine needs
 * the full member list.
 */
const defaultSyncFilter = JSON.stringify({
  presence: { not_types: ['*'] },
  account_data: { not_types: ['*'] },
  room: {
    ephemeral: { not_types: ['*'] },
    account_data: { not_types: ['*'] },
    state: { lazy_load_members: false },
    timeline: { limit: 50 },
  },
});

const megolm = 'm.megolm.v1.aes-sha2';

interface Call {
  endpoint: string;
  method: HttpRequest['method'];
  path: string;
  query?: Record<string, string | undefined>;
  /** An object is sent as JSON; a string is sent as it is (the crypto engine's bodies). */
  body?: object | string;
  auth?: boolean;
  retry?: 'until-aborted' | 'bounded';
  idempotent?: boolean;
  signal?: AbortSignal | undefined;
  timeoutMs?: number;
  maxBytes?: number;
  passStatuses?: readonly number[];
  extraSecrets?: readonly string[];
  onRetry?: (() => void) | undefined;
}

export class HomeserverClient implements HomeserverApi {
  readonly #http: HttpTransport;
  readonly #media: MediaCalls;
  readonly #logger: HomeserverLogger;
  readonly #attempts: number;
  readonly #requestTimeoutMs: number;
  readonly #syncMarginMs: number;
  readonly #maxBytes: number;
  readonly #maxLargeBytes: number;
  readonly #events: ReturnType<typeof eventSchemas>;
  #session: LoginResult | undefined;

  constructor(options: HomeserverClientOptions) {
    this.#logger = options.logger ?? silentLogger;
    const transport = {
      baseUrl: options.baseUrl,
      timing: { ...defaultTiming, ...options.timing },
      logger: this.#logger,
      signal: options.signal,
    };
    this.#http = new HttpTransport(transport);
    this.#attempts = options.attempts ?? 4;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.#syncMarginMs = options.syncTimeoutMarginMs ?? 30_000;
    this.#maxBytes = options.maxBodyBytes ?? MiB;
    this.#media = new MediaCalls({
      transport: new MediaTransport(transport),
      token: () => this.#session?.accessToken,
      logger: this.#logger,
      attempts: this.#attempts,
      timeoutMs: this.#requestTimeoutMs,
      maxBytes: this.#maxBytes,
    });
    this.#maxLargeBytes = options.maxLargeBodyBytes ?? 16 * MiB;
    this.#session = options.session;
    this.#events = eventSchemas((what, count) => {
      this.#logger.warn(`dropped ${count} malformed ${what}(s) from the homeserver`);
    });
  }

  get userId(): string | undefined {
    return this.#session?.userId;
  }

  get deviceId(): string | undefined {
    return this.#session?.deviceId;
  }

  /** The session to persist (sealed) so a restart can skip login. Holds the access token. */
  get session(): LoginResult | undefined {
    return this.#session;
  }

  async login(user: string, password: string, deviceId?: string): Promise<LoginResult> {
    const endpoint = 'POST /login';
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: '/login',
      body: {
        type: 'm.login.password',
        identifier: { type: 'm.id.user', user },
        password,
        ...(deviceId !== undefined ? { device_id: deviceId } : {}),
      },
      auth: false,
      // A repeated login after a lost response would leave a stray token (or device) behind.
      idempotent: false,
      extraSecrets: [password],
    });
    const body = this.#validate(loginResponse, res, endpoint);
    // The crypto store is bound to one device: silently becoming another device would mean
    // new identity keys, so a server that ignores the requested id is refused.
    if (deviceId !== undefined && body.device_id !== deviceId) {
      throw this.#bad(endpoint, res.status, 'device_id differs from the one requested');
    }
    // Servers may canonicalise the case of a localpart, so compare case-insensitively.
    if (user.startsWith('@') && body.user_id.toLowerCase() !== user.toLowerCase()) {
      throw this.#bad(endpoint, res.status, 'user_id differs from the one requested');
    }
    this.#session = {
      userId: body.user_id,
      deviceId: body.device_id,
      accessToken: body.access_token,
    };
    return this.#session;
  }

  async logout(): Promise<void> {
    const endpoint = 'POST /logout';
    try {
      const res = await this.#send({ endpoint, method: 'POST', path: '/logout', body: {} });
      this.#validate(emptyResponse, res, endpoint);
    } catch (e) {
      // A token the server no longer knows is as logged out as it gets.
      if (!(e instanceof MatrixApiError && e.errcode === 'M_UNKNOWN_TOKEN')) throw e;
    }
    this.#session = undefined;
  }

  async sync(options: {
    since?: string;
    timeoutMs?: number;
    filter?: string;
    signal?: AbortSignal;
    onRetry?: () => void;
  }): Promise<SyncResponse> {
    const endpoint = 'GET /sync';
    const timeoutMs = options.timeoutMs ?? 0;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0) {
      throw localError(ClientCode.BadRequest, `${endpoint}: timeoutMs must be an integer >= 0`);
    }
    const res = await this.#send({
      endpoint,
      method: 'GET',
      path: '/sync',
      query: {
        since: options.since,
        timeout: String(timeoutMs),
        filter: options.filter ?? defaultSyncFilter,
      },
      retry: 'until-aborted',
      signal: options.signal,
      onRetry: options.onRetry,
      timeoutMs: timeoutMs + this.#syncMarginMs,
      maxBytes: this.#maxLargeBytes,
    });
    return this.#validate(this.#events.sync, res, endpoint);
  }

  async createRoom(options: CreateRoomOptions): Promise<string> {
    const endpoint = 'POST /createRoom';
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: '/createRoom',
      body: {
        preset: 'private_chat',
        is_direct: options.isDirect ?? false,
        invite: options.invite ?? [],
        ...(options.name !== undefined ? { name: options.name } : {}),
        // In the initial state, so no event is ever sent in the room before encryption is on.
        initial_state:
          options.encrypted === false
            ? []
            : [{ type: 'm.room.encryption', state_key: '', content: { algorithm: megolm } }],
      },
      // Repeating a createRoom whose response was lost would create a second room.
      idempotent: false,
    });
    return this.#validate(roomIdResponse, res, endpoint).room_id;
  }

  async invite(roomId: string, userId: string): Promise<void> {
    const endpoint = 'POST /rooms/{roomId}/invite';
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: path`/rooms/${roomId}/invite`,
      body: { user_id: userId },
    });
    this.#validate(emptyResponse, res, endpoint);
  }

  async join(roomIdOrAlias: string): Promise<string> {
    const endpoint = 'POST /join/{roomIdOrAlias}';
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: path`/join/${roomIdOrAlias}`,
      body: {},
    });
    return this.#validate(roomIdResponse, res, endpoint).room_id;
  }

  async leave(roomId: string): Promise<void> {
    const endpoint = 'POST /rooms/{roomId}/leave';
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: path`/rooms/${roomId}/leave`,
      body: {},
    });
    this.#validate(emptyResponse, res, endpoint);
  }

  async members(roomId: string): Promise<Member[]> {
    const endpoint = 'GET /rooms/{roomId}/members';
    // Large rooms have large member lists: the large bound, and no one who already left.
    const res = await this.#send({
      endpoint,
      method: 'GET',
      path: path`/rooms/${roomId}/members`,
      query: { not_membership: 'leave' },
      maxBytes: this.#maxLargeBytes,
    });
    return this.#validate(this.#events.members, res, endpoint).chunk.map((event) => ({
      userId: event.state_key,
      membership: event.content.membership,
    }));
  }

  async messages(
    roomId: string,
    options: { from?: string; dir: 'b' | 'f'; limit: number },
  ): Promise<MessagesPage> {
    const endpoint = 'GET /rooms/{roomId}/messages';
    if (!Number.isSafeInteger(options.limit) || options.limit < 1) {
      throw localError(ClientCode.BadRequest, `${endpoint}: limit must be an integer >= 1`);
    }
    const res = await this.#send({
      endpoint,
      method: 'GET',
      path: path`/rooms/${roomId}/messages`,
      query: { from: options.from, dir: options.dir, limit: String(options.limit) },
      // Events may be up to 64 KiB each: a page of 100 can be several MiB.
      maxBytes: this.#maxLargeBytes,
    });
    return this.#validate(this.#events.messages, res, endpoint);
  }

  async sendEvent(
    roomId: string,
    type: string,
    txnId: string,
    content: object,
    options: { signal?: AbortSignal } = {},
  ): Promise<string> {
    const endpoint = 'PUT /rooms/{roomId}/send/{eventType}/{txnId}';
    const res = await this.#send({
      endpoint,
      method: 'PUT',
      path: path`/rooms/${roomId}/send/${type}/${txnId}`,
      body: content,
      // The txnId makes a repeat harmless: the server answers with the first event's id.
      retry: 'until-aborted',
      signal: options.signal,
    });
    return this.#validate(eventIdResponse, res, endpoint).event_id;
  }

  async sendToDevice(
    type: string,
    txnId: string,
    messages: object,
    options: { signal?: AbortSignal } = {},
  ): Promise<void> {
    const endpoint = 'PUT /sendToDevice/{eventType}/{txnId}';
    const res = await this.#send({
      endpoint,
      method: 'PUT',
      path: path`/sendToDevice/${type}/${txnId}`,
      body: { messages },
      retry: 'until-aborted',
      signal: options.signal,
    });
    this.#validate(emptyResponse, res, endpoint);
  }

  keysUpload(body: string): Promise<string> {
    return this.#passThrough('POST /keys/upload', '/keys/upload', body, keysUploadResponse);
  }

  keysQuery(body: string): Promise<string> {
    return this.#passThrough('POST /keys/query', '/keys/query', body, keysQueryResponse, {
      maxBytes: this.#maxLargeBytes,
    });
  }

  keysClaim(body: string): Promise<string> {
    return this.#passThrough('POST /keys/claim', '/keys/claim', body, keysClaimResponse);
  }

  signaturesUpload(body: string): Promise<string> {
    return this.#passThrough(
      'POST /keys/signatures/upload',
      '/keys/signatures/upload',
      body,
      signaturesUploadResponse,
    );
  }

  async deviceSigningUpload(body: string, auth?: UiaAuth): Promise<string> {
    const endpoint = 'POST /keys/device_signing/upload';
    const request = jsonObjectBody(body, endpoint);
    const call = (payload: object): Promise<HttpResponse> =>
      this.#send({
        endpoint,
        method: 'POST',
        path: '/keys/device_signing/upload',
        body: payload,
        passStatuses: [401],
        extraSecrets: auth ? [auth.password] : [],
      });
    const first = await call(request);
    if (first.status !== 401) {
      this.#validate(emptyResponse, first, endpoint);
      return first.text;
    }
    const challenge = this.#uiaChallenge(first, endpoint);
    if (!auth) {
      throw new MatrixApiError({
        status: 401,
        errcode: ClientCode.UiaRequired,
        message: `${endpoint}: the homeserver requires user-interactive auth; call again with auth`,
        retryable: false,
      });
    }
    if (!challenge.flows.some((f) => f.stages.length === 1 && f.stages[0] === auth.type)) {
      throw new MatrixApiError({
        status: 401,
        errcode: ClientCode.UiaRequired,
        message: `${endpoint}: the homeserver offers no single-stage ${auth.type} flow`,
        retryable: false,
      });
    }
    const session = challenge.session ?? auth.session;
    const second = await call({
      ...request,
      auth: { ...auth, ...(session !== undefined ? { session } : {}) },
    });
    if (second.status === 401) {
      // Still 401 after auth: the password was wrong (M_FORBIDDEN) or the session is gone.
      const err = errorBody.safeParse(second.json);
      const errcode = (err.success ? err.data.errcode : undefined) ?? ClientCode.UiaRequired;
      throw new MatrixApiError({
        status: 401,
        errcode,
        message: `${endpoint}: 401 ${errcode}: user-interactive auth was refused`,
        retryable: false,
      });
    }
    this.#validate(emptyResponse, second, endpoint);
    return second.text;
  }

  upload(
    bytes: Uint8Array,
    options: { contentType: string; filename?: string; signal?: AbortSignal },
  ): Promise<string> {
    return this.#media.upload(bytes, options);
  }

  download(mxc: string, options: { maxBytes: number; signal?: AbortSignal }): Promise<Uint8Array> {
    return this.#media.download(mxc, options);
  }

  mediaConfig(): Promise<{ uploadSize?: number }> {
    return this.#media.config();
  }

  async event(roomId: string, eventId: string): Promise<RoomEvent> {
    const endpoint = 'GET /rooms/{roomId}/event/{eventId}';
    const res = await this.#send({
      endpoint,
      method: 'GET',
      path: path`/rooms/${roomId}/event/${eventId}`,
    });
    const { room_id: claimedRoom, ...event } = this.#validate(eventResponse, res, endpoint);
    // The event is trusted as the one asked for only if it says so.
    if (event.event_id !== eventId) {
      throw this.#bad(endpoint, res.status, 'event_id differs from the one requested');
    }
    if (claimedRoom !== undefined && claimedRoom !== roomId) {
      throw this.#bad(endpoint, res.status, 'room_id differs from the one requested');
    }
    return event;
  }

  async redact(
    roomId: string,
    eventId: string,
    txnId: string,
    reason?: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<string> {
    const endpoint = 'PUT /rooms/{roomId}/redact/{eventId}/{txnId}';
    const res = await this.#send({
      endpoint,
      method: 'PUT',
      path: path`/rooms/${roomId}/redact/${eventId}/${txnId}`,
      body: reason !== undefined ? { reason } : {},
      // As for sendEvent: the txnId makes a repeat harmless.
      retry: 'until-aborted',
      signal: options.signal,
    });
    return this.#validate(eventIdResponse, res, endpoint).event_id;
  }

  async roomState(
    roomId: string,
    type: string,
    stateKey: string,
  ): Promise<Record<string, unknown> | undefined> {
    const endpoint = 'GET /rooms/{roomId}/state/{eventType}/{stateKey}';
    // The spec makes the trailing segment optional for the empty state key, the common case
    // (m.room.encryption, m.room.name), which path`` would refuse as a segment.
    const route =
      stateKey === ''
        ? path`/rooms/${roomId}/state/${type}`
        : path`/rooms/${roomId}/state/${type}/${stateKey}`;
    let res: HttpResponse;
    try {
      res = await this.#send({ endpoint, method: 'GET', path: route });
    } catch (e) {
      if (isMatrixApiError(e, 'M_NOT_FOUND') && e.status === 404) return undefined;
      throw e;
    }
    return this.#validate(jsonObject, res, endpoint);
  }

  async backupVersion(): Promise<Record<string, unknown> | undefined> {
    const endpoint = 'GET /room_keys/version';
    let res: HttpResponse;
    try {
      res = await this.#send({ endpoint, method: 'GET', path: '/room_keys/version' });
    } catch (e) {
      if (isMatrixApiError(e, 'M_NOT_FOUND') && e.status === 404) return undefined;
      throw e;
    }
    return this.#validate(jsonObject, res, endpoint);
  }

  async backupCreateVersion(algorithm: string, authData: object): Promise<string> {
    const endpoint = 'POST /room_keys/version';
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: '/room_keys/version',
      body: { algorithm, auth_data: authData },
      // A retry after a lost answer would make a second version; the caller asks again.
      idempotent: false,
    });
    return this.#validate(backupVersionCreated, res, endpoint).version;
  }

  async backupDeleteVersion(version: string): Promise<void> {
    const endpoint = 'DELETE /room_keys/version/{version}';
    try {
      await this.#send({ endpoint, method: 'DELETE', path: path`/room_keys/version/${version}` });
    } catch (e) {
      if (isMatrixApiError(e, 'M_NOT_FOUND') && e.status === 404) return;
      throw e;
    }
  }

  async backupUpload(version: string, body: string): Promise<string> {
    const endpoint = 'PUT /room_keys/keys';
    jsonObjectBody(body, endpoint);
    const res = await this.#send({
      endpoint,
      method: 'PUT',
      path: '/room_keys/keys',
      query: { version },
      body,
      maxBytes: this.#maxLargeBytes,
    });
    this.#validate(backupUploaded, res, endpoint);
    return res.text;
  }

  async backupDownload(version: string): Promise<Record<string, unknown>> {
    const endpoint = 'GET /room_keys/keys';
    const res = await this.#send({
      endpoint,
      method: 'GET',
      path: '/room_keys/keys',
      query: { version },
      maxBytes: this.#maxLargeBytes,
    });
    return this.#validate(jsonObject, res, endpoint);
  }

  /** A 401 that is not a UIA challenge (a bad token, say) is an ordinary 401 error. */
  #uiaChallenge(res: HttpResponse, endpoint: string): z.infer<typeof uiaChallenge> {
    const challenge = uiaChallenge.safeParse(res.json);
    if (challenge.success) return challenge.data;
    const err = errorBody.safeParse(res.json);
    const errcode = (err.success ? err.data.errcode : undefined) ?? ClientCode.HttpError;
    const detail = err.success && err.data.error ? `: ${err.data.error.slice(0, 200)}` : '';
    throw new MatrixApiError({
      status: 401,
      errcode,
      message: redact(`${endpoint}: 401 ${errcode}${detail}`, this.#secrets()),
      retryable: false,
    });
  }

  async #passThrough(
    endpoint: string,
    route: string,
    body: string,
    schema: z.ZodType,
    options: { maxBytes?: number } = {},
  ): Promise<string> {
    jsonObjectBody(body, endpoint);
    const res = await this.#send({
      endpoint,
      method: 'POST',
      path: route,
      body,
      ...(options.maxBytes !== undefined ? { maxBytes: options.maxBytes } : {}),
    });
    this.#validate(schema, res, endpoint);
    return res.text;
  }

  #send(call: Call): Promise<HttpResponse> {
    const auth = call.auth ?? true;
    const token = this.#session?.accessToken;
    if (auth && token === undefined) {
      throw localError(ClientCode.NotLoggedIn, `${call.endpoint}: not logged in`);
    }
    const retry: RetryPolicy =
      call.retry === 'until-aborted'
        ? { kind: 'until-aborted' }
        : { kind: 'bounded', attempts: this.#attempts };
    return this.#http.request({
      endpoint: call.endpoint,
      method: call.method,
      path: call.path,
      ...(call.query ? { query: call.query } : {}),
      ...(call.body !== undefined
        ? { body: typeof call.body === 'string' ? call.body : JSON.stringify(call.body) }
        : {}),
      accessToken: auth ? token : undefined,
      maxBytes: call.maxBytes ?? this.#maxBytes,
      timeoutMs: call.timeoutMs ?? this.#requestTimeoutMs,
      retry,
      idempotent: call.idempotent ?? true,
      signal: call.signal,
      ...(call.passStatuses ? { passStatuses: call.passStatuses } : {}),
      secrets: [...this.#secrets(), ...(call.extraSecrets ?? [])],
      onRetry: call.onRetry,
    });
  }

  #validate<T>(schema: z.ZodType<T>, res: HttpResponse, endpoint: string): T {
    return validate(schema, res.json, endpoint, res.status, this.#secrets());
  }

  #bad(endpoint: string, status: number, what: string): MatrixApiError {
    return new MatrixApiError({
      status,
      errcode: ClientCode.BadResponse,
      message: `${endpoint}: ${what}`,
      retryable: false,
    });
  }

  #secrets(): string[] {
    return this.#session ? [this.#session.accessToken] : [];
  }
}

/**
 * Encodes each interpolated value as one path segment. "." and ".." are refused: URL parsers
 * resolve them (even percent-encoded) and would send the request to a different endpoint.
 */
function path(strings: TemplateStringsArray, ...params: string[]): string {
  let out = strings[0] ?? '';
  params.forEach((param, i) => {
    if (param === '' || param === '.' || param === '..') {
      throw localError(
        ClientCode.BadRequest,
        `path parameter ${i + 1} must not be "", "." or ".."`,
      );
    }
    out += encodeURIComponent(param) + (strings[i + 1] ?? '');
  });
  return out;
}

/** The crypto engine's request bodies must be JSON objects; checked before anything is sent. */
function jsonObjectBody(body: string, endpoint: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw localError(ClientCode.BadRequest, `${endpoint}: request body is not JSON`);
  }
  const object = jsonObject.safeParse(parsed);
  if (!object.success) {
    throw localError(ClientCode.BadRequest, `${endpoint}: request body is not a JSON object`);
  }
  return object.data;
}
