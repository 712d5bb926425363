import {
  DecryptedToDeviceEvent,
  DeviceId,
  DeviceLists,
  KeysClaimRequest,
  KeysQueryRequest,
  KeysUploadRequest,
  OlmMachine,
  RoomId,
  RoomMessageRequest,
  ShieldColor,
  SignatureUploadRequest,
  StoreHandle,
  ToDeviceRequest,
  UserId,
  initAsync,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import type { HomeserverApi, RoomEvent, SyncResponse, UiaAuth } from '../matrix/api.ts';
import {
  type CrossSigningOutcome,
  type ExtraMasterSignatures,
  type MasterKeySigner,
  ensureVaultCrossSigning,
} from './cross-signing.ts';
import {
  DEFAULT_TRUST,
  type TrustSettings,
  decryptionSettings,
  encryptionSettings,
} from './settings.ts';
import { DeviceListFailures } from './device-list-failures.ts';
import type { VaultX509Signer } from './x509.ts';

/**
 * A thin adapter around the Rust crypto core's OlmMachine, in the manner of matrix-js-sdk's
 * src/rust-crypto: the machine decides, this file carries its outgoing requests to the
 * homeserver, feeds it sync changes, and turns its results into plain values for the rest of
 * the endpoint. No crypto decision is made here.
 */
export interface DecryptedMessage {
  eventId: string;
  roomId: string;
  sender: string;
  /** Device that sent it, as the crypto core determined (untrusted unless verified). */
  senderDevice: string | undefined;
  ts: number;
  type: string;
  content: Record<string, unknown>;
  encrypted: boolean;
  /** From the event's shield: "verified" only when the sender's device is verified. */
  verification: 'verified' | 'unverified' | 'warning' | 'unencrypted';
  /** The shield's reason, for the UI ("Encrypted by an unverified device", ...). */
  verificationMessage: string | undefined;
}

export interface UndecryptableMessage {
  eventId: string;
  roomId: string;
  sender: string;
  ts: number;
  /** Why, in the core's words (missing room key, withheld, untrusted sender...). */
  reason: string;
}

export interface DeviceInfo {
  deviceId: string;
  /** Signed by its owner's self-signing key: the owner vouches for it (MSC4153). */
  crossSignedByOwner: boolean;
  /** Verified by us (through the owner's verified identity, or locally). */
  verified: boolean;
}

export interface Logger {
  warn(message: string): void;
  info(message: string): void;
}

export interface EngineOptions {
  api: HomeserverApi;
  userId: string;
  deviceId: string;
  /** Durable store (issue 4): the IndexedDB name and the vault's store key. Omit for memory. */
  store?: { name: string; key: Uint8Array };
  trust?: TrustSettings;
  logger?: Logger;
  /**
   * X.509 identities (issue 6, see x509.ts): `caCertsPem` makes peers whose master key carries
   * a valid signature from one of these CAs verified; `signer` (the vault's x509-identity key
   * and the configured chain) signs our own master key when the core does.
   */
  x509?: {
    caCertsPem?: string | undefined;
    signer?: Pick<VaultX509Signer, 'rawSigner' | 'rawValidity'> | undefined;
  };
}

let initialised: Promise<void> | undefined;

export class CryptoEngine {
  readonly machine: OlmMachine;
  readonly #api: HomeserverApi;
  readonly #trust: TrustSettings;
  /** The engine's own trust settings (used where a room has no rule of its own). */
  get trust(): TrustSettings {
    return this.#trust;
  }
  readonly #log: Logger;
  #outgoing: Promise<void> = Promise.resolve();
  #outgoingAgain = false;
  #outgoingRunning = false;
  readonly #roomLocks = new Map<string, Promise<unknown>>();
  readonly #deviceListFailures = new DeviceListFailures();

  private constructor(machine: OlmMachine, options: EngineOptions) {
    this.machine = machine;
    this.#api = options.api;
    this.#trust = options.trust ?? DEFAULT_TRUST;
    this.#log = options.logger ?? { warn: () => undefined, info: () => undefined };
  }

  static async open(options: EngineOptions): Promise<CryptoEngine> {
    initialised ??= initAsync();
    await initialised;
    const userId = new UserId(options.userId);
    const deviceId = new DeviceId(options.deviceId);
    // The 18.9.0 .d.ts types the signer's result without `signature_scheme`, which the
    // runtime requires (without it: no signature, one warning); ours has it.
    const ca = options.x509?.caCertsPem;
    const signer = options.x509?.signer?.rawSigner;
    const validity = options.x509?.signer?.rawValidity;
    let machine: OlmMachine;
    if (options.store) {
      const handle = await StoreHandle.openWithKey(options.store.name, options.store.key);
      machine = await OlmMachine.initFromStore(
        userId,
        deviceId,
        handle,
        undefined,
        ca,
        signer,
        validity,
      );
      handle.free();
    } else {
      machine = await OlmMachine.initialize(
        userId,
        deviceId,
        undefined,
        undefined,
        undefined,
        ca,
        signer,
        validity,
      );
    }
    return new CryptoEngine(machine, options);
  }

  get identityKeys(): { ed25519: string; curve25519: string } {
    const keys = this.machine.identityKeys;
    return { ed25519: keys.ed25519.toBase64(), curve25519: keys.curve25519.toBase64() };
  }

  /**
   * Sends everything the machine wants sent, until it wants nothing more. Calls made while a
   * pass is running schedule one more pass instead of running concurrently.
   */
  processOutgoing(): Promise<void> {
    if (this.#outgoingRunning) {
      this.#outgoingAgain = true;
      return this.#outgoing;
    }
    this.#outgoingRunning = true;
    this.#outgoing = (async () => {
      try {
        do {
          this.#outgoingAgain = false;
          const requests = await this.machine.outgoingRequests();
          for (const request of requests) await this.#send(request);
          // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- set by callers during the awaits
        } while (this.#outgoingAgain);
      } finally {
        this.#outgoingRunning = false;
      }
    })();
    return this.#outgoing;
  }

  /**
   * Feeds one sync response's crypto-relevant parts to the machine. Returns the verification
   * requests that arrived by to-device message (sender and flow id), after the core has taken
   * them in: the core keeps the flows, the caller only learns which ones to look at.
   */
  async receiveSync(sync: SyncResponse): Promise<{ sender: string; flowId: string }[]> {
    return (await this.receiveSyncAll(sync)).verificationRequests;
  }

  /**
   * receiveSync, and also the Olm-decrypted to-device messages of `privateTypes` (our own
   * protocols: attestation), with the sender and device as the decryption established them.
   * Messages of those types that arrived in clear are dropped: they must be encrypted.
   */
  async receiveSyncAll(sync: SyncResponse): Promise<{
    verificationRequests: { sender: string; flowId: string }[];
    privateMessages: PrivateToDeviceMessage[];
  }> {
    const changed = (sync.device_lists?.changed ?? []).flatMap(toUserId);
    const left = (sync.device_lists?.left ?? []).flatMap(toUserId);
    const counts = new Map(Object.entries(sync.device_one_time_keys_count ?? {}));
    const fallback = sync.device_unused_fallback_key_types
      ? new Set(sync.device_unused_fallback_key_types)
      : undefined;
    const processed = await this.machine.receiveSyncChanges(
      JSON.stringify(sync.to_device?.events ?? []),
      new DeviceLists(changed, left),
      counts,
      fallback,
      decryptionSettings(this.#trust),
    );
    // Whoever is in a room we share must be tracked, or we would not know their devices.
    const members = new Set<string>();
    for (const room of Object.values(sync.rooms?.join ?? {})) {
      for (const event of [...(room.state?.events ?? []), ...(room.timeline?.events ?? [])]) {
        if (event.type === 'm.room.member' && typeof event.state_key === 'string') {
          const membership = event.content.membership;
          if (membership === 'join' || membership === 'invite') members.add(event.state_key);
        }
      }
    }
    if (members.size > 0) await this.machine.updateTrackedUsers([...members].flatMap(toUserId));
    const privateMessages = processed
      .flatMap(privateMessageOf)
      .filter((m) => this.privateTypes.has(m.type));
    return { verificationRequests: processed.flatMap(verificationRequestOf), privateMessages };
  }

  /**
   * Sends `content` to one device, Olm-encrypted (claiming a one-time key first if we have no
   * session with it). The device must be known to the core (tracked user, keys queried).
   */
  async sendEncryptedToDevice(
    userId: string,
    deviceId: string,
    type: string,
    content: Record<string, unknown>,
    txnId: string,
  ): Promise<void> {
    // wasm-bindgen takes ownership of an id passed by value: a fresh one for each call.
    const claim = await this.machine.getMissingSessions([new UserId(userId)]);
    if (claim) await this.#send(claim);
    const device = await this.machine.getDevice(new UserId(userId), new DeviceId(deviceId), 5);
    if (!device) throw new Error(`crypto: ${userId} has no known device ${deviceId}`);
    try {
      const encrypted = await device.encryptToDeviceEvent(type, content);
      await this.#api.sendToDevice('m.room.encrypted', txnId, {
        [userId]: { [deviceId]: JSON.parse(encrypted) as object },
      });
    } finally {
      device.free();
    }
  }

  /** Which to-device types receiveSyncAll passes on (set once by the endpoint). */
  privateTypes: ReadonlySet<string> = new Set();

  /**
   * Sets up cross-signing if this account has none yet, so that the MSC4153 default (room
   * keys only to cross-signed devices) includes our own device. With `master` (the service
   * always passes the vault's), the master key stays in the vault and only the subkeys live
   * here (see cross-signing.ts). Without it (tests and benchmarks with no vault), the machine
   * makes all three keys itself, as before issue 6.
   */
  async ensureCrossSigning(
    uia: { user: string; password: string } | undefined,
    master?: {
      signer: MasterKeySigner;
      extraMasterSignatures?: ExtraMasterSignatures;
      replaceForeign?: boolean;
    },
  ): Promise<CrossSigningOutcome> {
    const auth: UiaAuth | undefined = uia && {
      type: 'm.login.password',
      identifier: { type: 'm.id.user', user: uia.user },
      password: uia.password,
    };
    if (master) {
      return ensureVaultCrossSigning({
        machine: this.machine,
        api: this.#api,
        send: (request) => this.#send(request),
        master: master.signer,
        uia: auth,
        extraMasterSignatures: master.extraMasterSignatures,
        replaceForeign: master.replaceForeign,
        warn: (m) => {
          this.#log.warn(m);
        },
        info: (m) => {
          this.#log.info(m);
        },
      });
    }
    const local = await this.machine.crossSigningStatus();
    const haveKeys = local.hasMaster && local.hasSelfSigning && local.hasUserSigning;
    const published = await this.#publishedMasterKey();
    if (haveKeys && published) return 'present';
    if (published && !haveKeys) {
      // The account already has an identity (made by another device, e.g. Element). Replacing
      // it would break every peer's trust in this user; this device waits to be verified.
      this.#log.warn(
        'crypto: this account already has a cross-signing identity; not replacing it. Verify this device from another one.',
      );
      return 'foreign';
    }
    // Keys made by an earlier run that died before the upload are uploaded, not replaced.
    const requests = await this.machine.bootstrapCrossSigning(!haveKeys);
    const uploadKeys: unknown = requests.uploadKeysRequest;
    if (uploadKeys instanceof KeysUploadRequest) await this.#send(uploadKeys);
    await this.#api.deviceSigningUpload(requests.uploadSigningKeysRequest.body, auth);
    await this.#send(requests.uploadSignaturesRequest);
    return haveKeys ? 'uploaded' : 'created';
  }

  /** Whether the homeserver has a master cross-signing key for our own user. */
  async #publishedMasterKey(): Promise<boolean> {
    const userId = this.machine.userId.toString();
    const response = JSON.parse(
      await this.#api.keysQuery(JSON.stringify({ device_keys: { [userId]: [] } })),
    ) as {
      master_keys?: Record<string, unknown>;
    };
    return response.master_keys?.[userId] !== undefined;
  }

  /**
   * Whether the last /keys/query for this user failed because their server did not answer our
   * homeserver (so the devices we know, if any, may be out of date or missing).
   */
  deviceListUnavailable(userId: string): boolean {
    return this.#deviceListFailures.unavailable(userId);
  }

  /** A user's devices as the crypto core knows them, with their trust. */
  async devices(userId: string): Promise<DeviceInfo[]> {
    const devices = await this.machine.getUserDevices(new UserId(userId), 0);
    const out = devices.devices().map((d) => {
      const info: DeviceInfo = {
        deviceId: d.deviceId.toString(),
        crossSignedByOwner: d.isCrossSignedByOwner(),
        verified: d.isVerified(),
      };
      d.free();
      return info;
    });
    devices.free();
    return out;
  }

  /**
   * A device's keys and its owner's cross-signing master key, as the core knows them (from a
   * /keys/query it checked): what an attestation must bind. undefined for an unknown device.
   */
  async deviceKeys(
    userId: string,
    deviceId: string,
  ): Promise<{ ed25519: string; curve25519: string; masterKey: string | undefined } | undefined> {
    // wasm-bindgen takes ownership of an id passed by value: a fresh one for each call.
    const device = await this.machine.getDevice(new UserId(userId), new DeviceId(deviceId), 5);
    if (!device) return undefined;
    try {
      const ed25519 = device.ed25519Key?.toBase64();
      const curve25519 = device.curve25519Key?.toBase64();
      if (!ed25519 || !curve25519) return undefined;
      const identity = await this.machine.getIdentity(new UserId(userId));
      let masterKey: string | undefined;
      if (identity) {
        try {
          masterKey = masterKeyOf(identity.masterKey);
        } finally {
          identity.free();
        }
      }
      return { ed25519, curve25519, masterKey };
    } finally {
      device.free();
    }
  }

  /** Starts tracking these users' devices (room members found outside /sync). */
  async track(userIds: string[]): Promise<void> {
    await this.machine.updateTrackedUsers(userIds.flatMap(toUserId));
  }

  /**
   * Encrypts `content` for a room: makes sure every member's devices are known and have an
   * Olm session, shares the room key per the sharing strategy, then encrypts.
   *
   * `beforeShare` runs after the device lists are fresh and the recipients chosen, just before
   * any room key leaves: a refusal there sends nothing and discards the room's outbound session
   * (the identity-change block must see the identities the keys would go to, not older ones).
   */
  encrypt(
    roomId: string,
    type: string,
    content: object,
    members: string[],
    trust: TrustSettings = this.#trust,
    beforeShare?: (recipients: { userId: string; deviceId: string }[]) => Promise<void>,
  ): Promise<object> {
    return this.#inRoomOrder(roomId, async () => {
      // wasm-bindgen takes ownership of the ids in an array argument: a fresh array per call.
      const users = (): UserId[] => members.flatMap(toUserId);
      await this.machine.updateTrackedUsers(users());
      await this.processOutgoing(); // includes the KeysQuery for newly tracked users
      const claim = await this.machine.getMissingSessions(users());
      if (claim) await this.#send(claim);
      const room = new RoomId(roomId);
      const shares = await this.machine.shareRoomKey(room, users(), encryptionSettings(trust));
      if (beforeShare) {
        try {
          await beforeShare(recipientsOf(shares));
        } catch (e) {
          for (const request of shares) request.free();
          await this.machine.invalidateGroupSession(new RoomId(roomId));
          throw e;
        }
      }
      for (const request of shares) await this.#send(request);
      const encrypted = await this.machine.encryptRoomEvent(room, type, JSON.stringify(content));
      return JSON.parse(encrypted) as object;
    });
  }

  /** Decrypts a room event, keeping who sent it and how far we trust that. */
  async decrypt(
    roomId: string,
    event: RoomEvent,
    trust: TrustSettings = this.#trust,
  ): Promise<DecryptedMessage | UndecryptableMessage> {
    if (event.type !== 'm.room.encrypted') {
      return {
        eventId: event.event_id,
        roomId,
        sender: event.sender,
        senderDevice: undefined,
        ts: event.origin_server_ts,
        type: event.type,
        content: event.content,
        encrypted: false,
        verification: 'unencrypted',
        verificationMessage: undefined,
      };
    }
    try {
      const decrypted = await this.machine.decryptRoomEvent(
        JSON.stringify({ ...event, room_id: roomId }),
        new RoomId(roomId),
        decryptionSettings(trust),
      );
      const clear = JSON.parse(decrypted.event) as { type?: unknown; content?: unknown };
      // Strict mode: no shield at all only for a verified sender's device. The device id is
      // the core's, and trusted only because the strict shield says so.
      const strict = decrypted.shieldState(true);
      const shield = decrypted.shieldState(false);
      const verification =
        shield.color === ShieldColor.Red
          ? 'warning'
          : strict.color === ShieldColor.None
            ? 'verified'
            : 'unverified';
      strict.free();
      const result: DecryptedMessage = {
        eventId: event.event_id,
        roomId,
        sender: decrypted.sender.toString(),
        senderDevice: decrypted.senderDevice?.toString(),
        ts: event.origin_server_ts,
        type: typeof clear.type === 'string' ? clear.type : 'm.room.message',
        content:
          typeof clear.content === 'object' && clear.content !== null
            ? (clear.content as Record<string, unknown>)
            : {},
        encrypted: true,
        verification,
        verificationMessage: shield.message ?? undefined,
      };
      shield.free();
      decrypted.free();
      return result;
    } catch (e) {
      return {
        eventId: event.event_id,
        roomId,
        sender: event.sender,
        ts: event.origin_server_ts,
        reason: decryptionFailure(e),
      };
    }
  }

  close(): void {
    this.machine.close();
  }

  /** Sends one request the machine produced outside its queue (a verification step, say). */
  send(request: OutgoingRequest): Promise<void> {
    return this.#send(request);
  }

  async #send(request: OutgoingRequest): Promise<void> {
    let response: string;
    if (request instanceof KeysUploadRequest) {
      response = await this.#api.keysUpload(request.body);
    } else if (request instanceof KeysQueryRequest) {
      response = await this.#api.keysQuery(request.body);
      this.#deviceListFailures.record(request.body, response);
    } else if (request instanceof KeysClaimRequest) {
      response = await this.#api.keysClaim(request.body);
    } else if (request instanceof SignatureUploadRequest) {
      response = await this.#api.signaturesUpload(request.body);
    } else if (request instanceof ToDeviceRequest) {
      const body = JSON.parse(request.body) as { messages: object };
      await this.#api.sendToDevice(request.event_type, request.txn_id, body.messages);
      response = '{}';
    } else if (request instanceof RoomMessageRequest) {
      const eventId = await this.#api.sendEvent(
        request.room_id,
        request.event_type,
        request.txn_id,
        JSON.parse(request.body) as object,
      );
      response = JSON.stringify({ event_id: eventId });
    } else {
      // Key backup requests never come this way: endpoint/backup asks backupRoomKeys() itself,
      // and only for the version it made and checked.
      this.#log.warn(`crypto: ignoring an outgoing request of type ${String(request.type)}`);
      return;
    }
    // Requests built outside the outgoing queue (a room key share) may carry no id to mark.
    if (request.id) await this.machine.markRequestAsSent(request.id, request.type, response);
  }

  /** shareRoomKey must not run twice at once for one room; different rooms may overlap. */
  #inRoomOrder<T>(roomId: string, run: () => Promise<T>): Promise<T> {
    const previous = this.#roomLocks.get(roomId) ?? Promise.resolve();
    const next = previous.then(run, run);
    this.#roomLocks.set(
      roomId,
      next.catch(() => undefined),
    );
    return next;
  }
}

export type OutgoingRequest =
  | Awaited<ReturnType<OlmMachine['outgoingRequests']>>[number]
  | KeysClaimRequest
  | ToDeviceRequest
  | RoomMessageRequest;

export interface PrivateToDeviceMessage {
  type: string;
  /** The Olm sender, its device and its Curve25519 key, as the decryption established them. */
  sender: string;
  senderDevice: string;
  senderCurve25519: string;
  content: unknown;
}

/** One of our own Olm-encrypted to-device messages, or nothing. */
function privateMessageOf(
  event: Awaited<ReturnType<OlmMachine['receiveSyncChanges']>>[number],
): PrivateToDeviceMessage[] {
  // Not freed here: verificationRequestOf frees every event after this has looked at it.
  if (!(event instanceof DecryptedToDeviceEvent)) return [];
  try {
    const raw = JSON.parse(event.rawEvent) as {
      type?: unknown;
      sender?: unknown;
      content?: unknown;
    };
    const info = event.encryptionInfo;
    const device = info.senderDevice?.toString();
    if (typeof raw.type !== 'string' || !device) return [];
    return [
      {
        type: raw.type,
        sender: info.sender.toString(),
        senderDevice: device,
        senderCurve25519: info.senderCurve25519Key,
        content: raw.content,
      },
    ];
  } catch {
    return [];
  }
}

/** A to-device m.key.verification.request, as the core passed it on (clear or decrypted). */
function verificationRequestOf(
  event: Awaited<ReturnType<OlmMachine['receiveSyncChanges']>>[number],
): { sender: string; flowId: string }[] {
  try {
    const raw = JSON.parse(event.rawEvent) as {
      type?: unknown;
      sender?: unknown;
      content?: { transaction_id?: unknown };
    };
    if (raw.type !== 'm.key.verification.request') return [];
    const flowId = raw.content?.transaction_id;
    if (typeof raw.sender !== 'string' || typeof flowId !== 'string') return [];
    return [{ sender: raw.sender, flowId }];
  } catch {
    return []; // not JSON: the core already rejected it
  } finally {
    event.free();
  }
}

function toUserId(id: string): UserId[] {
  try {
    return [new UserId(id)];
  } catch {
    return []; // a malformed id from the server is dropped, not fatal
  }
}

/**
 * The crypto core throws MegolmDecryptionError objects that are not Errors: their text is in
 * `description`, their kind in `code`. Never "[object Object]".
 */
function decryptionFailure(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === 'object' && e !== null) {
    const { description, message, code } = e as Record<string, unknown>;
    for (const text of [description, message]) if (typeof text === 'string' && text) return text;
    if (typeof code === 'string' || typeof code === 'number') return `decryption failed (${code})`;
  }
  return typeof e === 'string' ? e : 'decryption failed';
}

/** The devices a set of room-key to-device requests would reach (their messages map). */
function recipientsOf(requests: ToDeviceRequest[]): { userId: string; deviceId: string }[] {
  const out: { userId: string; deviceId: string }[] = [];
  for (const request of requests) {
    try {
      const body = JSON.parse(request.body) as {
        messages?: Record<string, Record<string, unknown>>;
      };
      for (const [userId, devices] of Object.entries(body.messages ?? {})) {
        for (const deviceId of Object.keys(devices)) out.push({ userId, deviceId });
      }
    } catch {
      // A body the core made that is not JSON: nothing to list (the send would fail anyway).
    }
  }
  return out;
}

/** The core gives a cross-signing master key as its JSON; callers want the key itself. */
export function masterKeyOf(json: string): string | undefined {
  try {
    const parsed = JSON.parse(json) as { keys?: Record<string, unknown> };
    const key = Object.values(parsed.keys ?? {})[0];
    return typeof key === 'string' ? key : undefined;
  } catch {
    return undefined;
  }
}
