import { setTimeout as sleep } from 'node:timers/promises';
import { RpcError } from '../../keyvault/common/rpc/index.ts';
import type { Handlers } from '../../keyvault/common/rpc/index.ts';
import {
  type AuditAction,
  type AuditRecord,
  type AuthorizedClient,
  type Authorizer,
  type Policy,
  auditRecordFor,
  hashToken,
  roomTrust,
} from '../../policy/index.ts';
import {
  ATTACHMENT_CHUNK_BYTES,
  type EndpointContract,
  SEND_METHODS,
  MAX_ATTACHMENT_BYTES,
  MAX_CLEAR_EVENT_BYTES,
  type StreamEvent,
} from '../contract.ts';
import { type Endpoint, IdentityChangedError } from '../device.ts';
import { ClientCode, MatrixApiError } from '../matrix/index.ts';
import {
  AttachmentCode,
  decryptAttachment,
  encryptAttachment,
  isAttachmentError,
  parseEncryptedFile,
} from '../media/index.ts';
import {
  type Outgoing,
  TransferError,
  Transfers,
  attachmentOfContent,
  msgtypeFor,
  sniffImage,
  tooLarge,
} from '../messages/index.ts';
import type { EnqueueOptions, Outbox } from '../outbox.ts';
import { type EventHub, streamOwner } from './events.ts';
import { HealthState } from '../health.ts';
import type { AttestationView } from '../attestation/service.ts';
import type { BackupService } from '../backup/service.ts';
import { VaultCode, VaultError } from '../../keyvault/vault.ts';
import { StoreCode, isStoreError } from '../store/index.ts';
import {
  IdentityError,
  VerificationError,
  acknowledgeIdentity,
  identityOf,
  withdrawVerification,
} from '../verification/index.ts';
import {
  attestationWire,
  exclusionsWire,
  failedSendWire,
  flowWire,
  identityWire,
  timelineItemWire,
} from './wire.ts';

export interface ApiDependencies {
  endpoint: Endpoint;
  outbox: Outbox;
  authorizer: Authorizer;
  /**
   * Resolves once the record is durable; rejects if the log cannot be written. With
   * `appendRefusal` (AuditLog), refusals go there: it counts those a caller can repeat without
   * limit (unknown tokens, rate limits) instead of writing each, so they cannot fill the disk.
   */
  audit: {
    append(record: AuditRecord): Promise<unknown>;
    appendRefusal?(record: AuditRecord): Promise<unknown>;
  };
  policy: () => Policy;
  hub: EventHub;
  /** The vault's and the disk's condition (status, `health` events, refused sends). */
  health?: HealthState;
  /** Remote attestation (endpoint/attestation/); absent when the endpoint was built without. */
  attestation?: AttestationApi;
  /** Attachment uploads and downloads in progress (one per endpoint; made here if absent). */
  transfers?: Transfers;
  /** Server-side key backup (endpoint/backup/); absent when the endpoint runs without. */
  backup?: BackupApi;
}

/** What the backup routes need of endpoint/backup/service.ts. */
export type BackupApi = Pick<BackupService, 'status' | 'create' | 'rotate' | 'recover'>;

/** What the attestation routes need of endpoint/attestation/service.ts. */
export interface AttestationApi {
  attest(userId: string, deviceId: string): Promise<AttestationView>;
  last(userId: string, deviceId: string): Promise<AttestationView | undefined>;
  ownEvidence(nonce: Uint8Array, verifier: { userId: string; deviceId: string }): Promise<string>;
  activate(request: {
    credentialBlob: Uint8Array;
    encryptedSecret: Uint8Array;
    challengeId: string;
  }): Promise<Uint8Array>;
}

/**
 * Every answer must fit in one RPC frame (1 MiB). Lists are cut to these bounds; pages of
 * history are cut by size (PAGE_BUDGET_BYTES), since one message can be ~100 KB of UTF-8.
 */
const MAX_CONTACTS = 200;
const MAX_DEVICES = 20;
const MAX_SHARED_ROOMS = 20;
const MAX_MEMBERS_LISTED = 100;
const MAX_ROOMS_LISTED = 500;
const MAX_FAILED_LISTED = 100;
/** How long the status waits for the store's count of pending sends (see status). */
const STATUS_STORE_WAIT_MS = 250;
export const PAGE_BUDGET_BYTES = 640 * 1024;

/**
 * The endpoint contract's handlers: every call is authorised against the policy and the
 * decision appended (durably) to the audit log before anything is done or refused. If the audit
 * log cannot be written the call fails with AUDIT_UNAVAILABLE and nothing is done.
 */
export function apiHandlers(deps: ApiDependencies): Handlers<EndpointContract> {
  const { endpoint, outbox, authorizer, hub } = deps;
  const health = deps.health ?? new HealthState();
  const transfers = deps.transfers ?? new Transfers();
  /** The homeserver's upload limit, asked once (m.upload.size). */
  let uploadLimit: Promise<number> | undefined;
  const maxUpload = (): Promise<number> =>
    (uploadLimit ??= endpoint.api
      .mediaConfig()
      .then((c) => Math.min(MAX_ATTACHMENT_BYTES, c.uploadSize ?? MAX_ATTACHMENT_BYTES))
      .catch(() => {
        uploadLimit = undefined; // asked again next time
        return MAX_ATTACHMENT_BYTES;
      }));

  const guard = async (
    token: string,
    action: string,
    scope: {
      roomId?: string;
      target?: string;
      charge?: boolean;
      audit?: boolean;
      /** Recorded instead of the capability: which trust-changing step this is. */
      operation?: AuditAction;
      /** A room-scoped capability used across rooms: the handler filters by room itself. */
      acrossRooms?: boolean;
    } = {},
  ): Promise<AuthorizedClient> => {
    const decision = authorizer.authorize({
      token,
      action,
      roomId: scope.roomId,
      ...(scope.charge === false ? { charge: false } : {}),
      ...(scope.acrossRooms === true ? { acrossRooms: true } : {}),
    });
    if (scope.audit !== false || !decision.allowed) {
      const record = auditRecordFor({ action, roomId: scope.roomId }, decision);
      const entry: AuditRecord = {
        ...record,
        ...(scope.target === undefined ? {} : { target: scope.target }),
        ...(scope.operation === undefined ? {} : { action: scope.operation }),
      };
      try {
        // Allowed calls are always written, durably, before anything is done.
        await (!decision.allowed && deps.audit.appendRefusal
          ? deps.audit.appendRefusal(entry)
          : deps.audit.append(entry));
      } catch {
        throw new RpcError(
          'AUDIT_UNAVAILABLE',
          'the audit log cannot be written, so nothing is being done',
        );
      }
    }
    if (!decision.allowed) {
      throw new RpcError(
        decision.code,
        decision.reason,
        decision.retryAfterMs === undefined ? {} : { retryAfterMs: decision.retryAfterMs },
      );
    }
    return decision.client;
  };

  const joinedRoom = (roomId: string): void => {
    if (endpoint.room(roomId)?.membership !== 'join') {
      throw new RpcError('NOT_FOUND', 'the endpoint is not joined to this room');
    }
  };

  /**
   * A room a message may be sent to: joined, end-to-end encrypted (this version has no
   * plaintext send path: the policy's encryptionRequired), and a disk with room for it.
   */
  const sendableRoom = (roomId: string): void => {
    joinedRoom(roomId);
    if (endpoint.room(roomId)?.encrypted === false) {
      throw new RpcError(
        'ROOM_NOT_ENCRYPTED',
        'the room is not end-to-end encrypted; this endpoint sends only to encrypted rooms',
      );
    }
    // Refused before anything is written: a send the disk cannot hold must not be queued in
    // memory and sent later behind the client's back (it was told 507).
    if (health.current.storage === 'full') throw storageFull();
    if (health.current.storage === 'failed') {
      throw new RpcError('STORE_UNAVAILABLE', 'the endpoint cannot write its store; see its log');
    }
  };

  /** Queues a message after the checks every send shares; answers who it will leave out. */
  const queue = async (
    roomId: string,
    message: Exclude<Outgoing, { kind: 'redaction' }>,
    body: string,
    options: EnqueueOptions,
  ) => {
    const bytes = tooLarge(roomId, message);
    if (bytes !== undefined) {
      throw new RpcError(
        'MESSAGE_TOO_LARGE',
        `the message would be ${bytes} bytes before encryption; the limit is ${MAX_CLEAR_EVENT_BYTES} (the homeserver refuses events over 64 KiB once encrypted)`,
      );
    }
    // Who the send leaves out is worked out while it is checked and queued, not after.
    const exclusions = endpoint.exclusionsIn(roomId).catch(() => []);
    const changed = await endpoint.changedIdentitiesIn(roomId);
    if (changed.length > 0) {
      throw new RpcError('IDENTITY_CHANGED', new IdentityChangedError(changed).message);
    }
    const entry = await stored(() => outbox.enqueue(roomId, body, options));
    return { txnId: entry.txnId, excluded: exclusionsWire(await exclusions) };
  };

  /** The rooms a client may see, with the policy's rules for each. */
  const visibleRooms = (client: AuthorizedClient) =>
    endpoint.rooms().filter((r) => client.mayAccessRoom(r.roomId));

  const contactsOf = async (client: AuthorizedClient, only?: string) => {
    const byUser = new Map<string, string[]>();
    for (const room of visibleRooms(client)) {
      if (room.membership !== 'join') continue;
      for (const member of room.members) {
        if (member === endpoint.userId || (only !== undefined && member !== only)) continue;
        const rooms = byUser.get(member) ?? [];
        rooms.push(room.roomId);
        byUser.set(member, rooms);
      }
    }
    const users = [...byUser.keys()].sort().slice(0, MAX_CONTACTS);
    const contacts = [];
    for (const userId of users) {
      const devices = await endpoint.engine.devices(userId).catch(() => []);
      const identity = await identityOf(endpoint.engine.machine, userId).catch(() => undefined);
      contacts.push({
        userId,
        rooms: (byUser.get(userId) ?? []).slice(0, MAX_SHARED_ROOMS),
        identity: identityWire(
          identity ?? { state: 'none', masterKey: undefined, wasVerified: false },
        ),
        devices: devices.slice(0, MAX_DEVICES),
      });
    }
    return contacts;
  };

  /**
   * Whom a client may verify, or see verifications and identity changes of: users it shares a
   * visible joined room with, and our own user only for clients with no room allow-list
   * (verifying one of our own devices gives it every room's keys, beyond any allow-list).
   */
  const mayConcern = (client: AuthorizedClient, userId: string): boolean =>
    userId === endpoint.userId
      ? client.rooms === null
      : visibleRooms(client).some((r) => r.membership === 'join' && r.members.includes(userId));

  const concerning = (client: AuthorizedClient, userId: string): void => {
    if (!mayConcern(client, userId)) {
      throw new RpcError('NOT_FOUND', 'no room this client may see is shared with this user');
    }
  };

  /** A joined room with just us and this user, that the client may see. */
  const directRoom = (client: AuthorizedClient, userId: string): string | undefined =>
    visibleRooms(client).find(
      (r) =>
        r.membership === 'join' &&
        r.members.length === 2 &&
        r.members.includes(userId) &&
        r.members.includes(endpoint.userId),
    )?.roomId;

  /** A flow the client may see, or NOT_FOUND (never "exists but forbidden"). */
  const visibleFlow = async (client: AuthorizedClient, flowId: string) => {
    const flow = await verificationStep(() => endpoint.verifications.get(flowId));
    if (!mayConcern(client, flow.userId)) throw new RpcError('NOT_FOUND', 'no such verification');
    return flow;
  };

  /** The user a flow concerns, for the audit record (looked up before authorising). */
  const flowTarget = (flowId: string): { target?: string } => {
    try {
      return { target: endpoint.verifications.get(flowId).userId };
    } catch {
      return {};
    }
  };

  const attestationService = (): AttestationApi => {
    if (!deps.attestation) {
      throw new RpcError('ATTESTATION_UNAVAILABLE', 'attestation is not set up on this endpoint');
    }
    return deps.attestation;
  };
  /** Every verdict goes to the audit log: who asked, about whom, and the outcome's code. */
  const auditResult = async (client: string, view: AttestationView): Promise<void> => {
    try {
      await deps.audit.append({
        client,
        action: 'attestation.result',
        target: view.userId,
        decision: 'info',
        reason: view.state === 'passed' ? 'OK' : (view.failures[0]?.code ?? 'FAILED'),
      });
    } catch {
      throw new RpcError(
        'AUDIT_UNAVAILABLE',
        'the audit log cannot be written, so nothing is being done',
      );
    }
  };

  const backupService = (): BackupApi => {
    if (!deps.backup) {
      throw new RpcError('BACKUP_UNAVAILABLE', 'key backup is not set up on this endpoint');
    }
    return deps.backup;
  };

  /** The outbox's size as the status last read it (see status). */
  let lastPendingCount = 0;

  const handlers: Handlers<EndpointContract> = {
    ready: () => Promise.resolve({}),

    gatewayRefusal: async ({ reason, count }) => {
      const entry: AuditRecord = {
        client: null,
        action: 'gateway.refusal',
        target: null,
        decision: 'deny',
        reason,
      };
      try {
        // Each refusal on its own: the log writes the first few of a window and counts the rest.
        for (let i = 0; i < count; i++) {
          await (deps.audit.appendRefusal
            ? deps.audit.appendRefusal(entry)
            : deps.audit.append(entry));
        }
      } catch {
        throw new RpcError('AUDIT_UNAVAILABLE', 'the audit log cannot be written');
      }
      return {};
    },

    status: async ({ auth }) => {
      const client = await guard(auth.token, 'status');
      // The count is read from the store, which waits behind a compaction, which waits for
      // the vault's counter: while the vault is down that read hangs, and the status must
      // still answer, saying so. So it waits a moment, then gives the last count it read.
      const counted = outbox.pending().then((p) => (lastPendingCount = p.length));
      counted.catch(() => undefined);
      const waited = new AbortController();
      const pendingSends = await Promise.race([
        counted,
        sleep(STATUS_STORE_WAIT_MS, undefined, { signal: waited.signal }).then(
          () => lastPendingCount,
          () => lastPendingCount,
        ),
      ]).finally(() => {
        waited.abort();
      });
      return {
        userId: endpoint.userId,
        deviceId: endpoint.deviceId,
        pendingSends,
        health: health.current,
        client: { name: client.name, capabilities: [...client.capabilities].sort() },
      };
    },

    rooms: async ({ auth }) => {
      const client = await guard(auth.token, 'rooms.read');
      const policy = deps.policy();
      return {
        rooms: visibleRooms(client)
          .slice(0, MAX_ROOMS_LISTED)
          .map((r) => {
            const rules = roomTrust(policy, r.roomId);
            const listed = [...r.members].sort().slice(0, MAX_MEMBERS_LISTED);
            return {
              roomId: r.roomId,
              membership: r.membership,
              members: listed,
              ...(r.inviter === undefined ? {} : { inviter: r.inviter }),
              ...(r.name === undefined ? {} : { name: r.name }),
              ...(r.topic === undefined ? {} : { topic: r.topic }),
              ...displayNamesOf(r.displayNames, listed),
              // Unknown until the endpoint has seen the room's state: shown as encrypted,
              // and sends re-check once it is known.
              encrypted: r.encrypted !== false,
              roomKeyRecipients: rules.roomKeyRecipients,
              showUnverifiedMessages: rules.showUnverifiedMessages,
            };
          }),
      };
    },

    timeline: async ({ auth, roomId, limit, from }) => {
      await guard(auth.token, 'messages.read', { roomId });
      joinedRoom(roomId);
      // A page too large for one answer is fetched again with fewer events (the homeserver's
      // continuation token is per page, so a page cannot be cut after the fact).
      for (let n = limit; ; n = Math.max(1, Math.floor(n / 2))) {
        let page;
        try {
          page = await endpoint.timeline(roomId, {
            limit: n,
            ...(from === undefined ? {} : { from }),
          });
        } catch (e) {
          const tooLarge = e instanceof MatrixApiError && e.errcode === ClientCode.ResponseTooLarge;
          if (tooLarge && n > 1) continue;
          throw upstreamError(e);
        }
        const items = page.items.map(timelineItemWire);
        if (n > 1 && byteSize(items) > PAGE_BUDGET_BYTES) continue;
        return { items, ...(page.next === undefined ? {} : { next: page.next }) };
      }
    },

    send: async ({ auth, roomId, body, replyTo, edit, thread }) => {
      await guard(auth.token, 'messages.send', { roomId });
      sendableRoom(roomId);
      if (edit !== undefined) {
        if (replyTo !== undefined || thread !== undefined) {
          throw new RpcError(
            'INVALID_REQUEST',
            'an edit replaces the text only: leave out replyTo and thread',
          );
        }
        // Stock clients apply an edit only from the item's own sender: refused here rather
        // than sent and silently ignored everywhere.
        const owner = await upstream(() => endpoint.senderOf(roomId, edit));
        if (owner !== endpoint.userId) {
          throw new RpcError('NOT_OWN_MESSAGE', 'only our own messages can be edited');
        }
        return queue(roomId, { kind: 'edit', body, target: edit }, body, {
          kind: 'edit',
          target: edit,
        });
      }
      const replyOptions = {
        ...(replyTo === undefined ? {} : { replyTo }),
        ...(thread === undefined ? {} : { thread }),
      };
      return queue(roomId, { kind: 'text', body, ...replyOptions }, body, {
        kind: 'text',
        ...replyOptions,
      });
    },

    react: async ({ auth, roomId, eventId, key }) => {
      await guard(auth.token, 'messages.send', { roomId });
      sendableRoom(roomId);
      return queue(roomId, { kind: 'reaction', target: eventId, key }, key, {
        kind: 'reaction',
        target: eventId,
      });
    },

    redact: async ({ auth, roomId, eventId, reason }) => {
      await guard(auth.token, 'messages.send', { roomId });
      joinedRoom(roomId);
      if (health.current.storage === 'full') throw storageFull();
      if (health.current.storage === 'failed') {
        throw new RpcError('STORE_UNAVAILABLE', 'the endpoint cannot write its store; see its log');
      }
      const entry = await stored(() =>
        outbox.enqueue(roomId, reason ?? '', { kind: 'redaction', target: eventId }),
      );
      return { txnId: entry.txnId };
    },

    failedSends: async ({ auth }) => {
      const client = await guard(auth.token, 'messages.send', { acrossRooms: true });
      const failed = (await outbox.failed()).filter((f) => client.mayAccessRoom(f.entry.roomId));
      return { failed: failed.slice(-MAX_FAILED_LISTED).map(failedSendWire) };
    },

    retrySend: async ({ auth, txnId }) => {
      const found = (await outbox.failed()).find((f) => f.entry.txnId === txnId);
      await guard(auth.token, 'messages.send', {
        ...(found ? { roomId: found.entry.roomId } : { acrossRooms: true }),
      });
      if (found === undefined) throw new RpcError('NOT_FOUND', 'no failed send with this id');
      sendableRoom(found.entry.roomId);
      if (!(await stored(() => outbox.retry(txnId)))) {
        throw new RpcError('NOT_FOUND', 'no failed send with this id');
      }
      return { txnId };
    },

    discardSend: async ({ auth, txnId }) => {
      const found = (await outbox.failed()).find((f) => f.entry.txnId === txnId);
      await guard(auth.token, 'messages.send', {
        ...(found ? { roomId: found.entry.roomId } : { acrossRooms: true }),
      });
      if (found === undefined || !(await stored(() => outbox.discard(txnId)))) {
        throw new RpcError('NOT_FOUND', 'no failed send with this id');
      }
      return {};
    },

    uploadStart: async ({ auth, roomId, name, contentType, size, caption }) => {
      const client = await guard(auth.token, 'messages.send', { roomId });
      sendableRoom(roomId);
      const limit = await maxUpload();
      if (size > limit) {
        throw new RpcError(
          'ATTACHMENT_TOO_LARGE',
          `the file is ${size} bytes; the limit is ${limit} (this endpoint's, or the homeserver's)`,
        );
      }
      const upload = transfer(() =>
        transfers.startUpload(client.name, {
          roomId,
          name,
          contentType,
          size,
          ...(caption === undefined ? {} : { caption }),
        }),
      );
      return { upload, chunkBytes: ATTACHMENT_CHUNK_BYTES, maxBytes: limit };
    },

    uploadChunk: async ({ auth, upload, offset, data }) => {
      // Paid for and audited at uploadStart, in its room; the token is checked on every chunk.
      const client = await guard(auth.token, 'messages.send', {
        charge: false,
        audit: false,
        acrossRooms: true,
      });
      const bytes = Buffer.from(data, 'base64');
      if (bytes.length > ATTACHMENT_CHUNK_BYTES) {
        throw new RpcError('INVALID_REQUEST', `a chunk is at most ${ATTACHMENT_CHUNK_BYTES} bytes`);
      }
      return { received: transfer(() => transfers.chunk(client.name, upload, offset, bytes)) };
    },

    uploadFinish: async ({ auth, upload }) => {
      const client = await guard(auth.token, 'messages.send', {
        charge: false,
        audit: false,
        acrossRooms: true,
      });
      const { meta, bytes } = transfer(() => transfers.finish(client.name, upload));
      try {
        // The room's rules are checked again: the client's rights or the room may have changed.
        await guard(auth.token, 'messages.send', { roomId: meta.roomId, charge: false });
        sendableRoom(meta.roomId);
        const { msgtype, mismatch } = msgtypeFor(meta.contentType, bytes);
        if (mismatch) {
          throw new RpcError(
            'CONTENT_TYPE_MISMATCH',
            `the file's bytes are not ${meta.contentType}; send it as application/octet-stream`,
          );
        }
        const { ciphertext, file } = encryptAttachment(bytes);
        const url = await upstream(() =>
          endpoint.api.upload(ciphertext, { contentType: 'application/octet-stream' }),
        );
        const attachment = {
          msgtype,
          name: meta.name,
          mimetype: meta.contentType,
          size: meta.size,
          file: { ...file, url },
        };
        const caption = meta.caption;
        return await queue(
          meta.roomId,
          { kind: 'attachment', attachment, ...(caption === undefined ? {} : { caption }) },
          caption ?? '',
          { kind: 'attachment', attachment },
        );
      } finally {
        bytes.fill(0);
      }
    },

    downloadStart: async ({ auth, roomId, eventId }) => {
      const client = await guard(auth.token, 'messages.read', { roomId });
      joinedRoom(roomId);
      const found = await upstream(() => endpoint.attachmentContent(roomId, eventId));
      const attachment = found && attachmentOfContent(found.content);
      if (found === undefined || attachment === undefined) {
        throw new RpcError('NOT_FOUND', 'this event has no attachment');
      }
      if (!attachment.encrypted) {
        throw new RpcError(
          'NOT_FOUND',
          'this attachment was sent unencrypted; the endpoint serves only encrypted files',
        );
      }
      let plain: Uint8Array;
      try {
        const file = parseEncryptedFile(found.content.file);
        const ciphertext = await endpoint.api.download(file.url, {
          maxBytes: MAX_ATTACHMENT_BYTES,
        });
        plain = decryptAttachment(ciphertext, file, { maxBytes: MAX_ATTACHMENT_BYTES });
      } catch (e) {
        if (e instanceof MatrixApiError && e.errcode === ClientCode.ResponseTooLarge) {
          throw new RpcError(
            'ATTACHMENT_TOO_LARGE',
            `the file is larger than ${MAX_ATTACHMENT_BYTES} bytes`,
          );
        }
        if (e instanceof MatrixApiError) throw upstreamError(e);
        if (isAttachmentError(e)) {
          throw new RpcError(
            e.code === AttachmentCode.TooLarge ? 'ATTACHMENT_TOO_LARGE' : e.code,
            e.message,
          );
        }
        throw e;
      }
      const bytes = Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
      // Served as the declared type only for an inline image type its bytes really are.
      const declared = attachment.mimetype;
      const sniffed = sniffImage(bytes);
      const contentType =
        declared !== undefined && sniffed === declared ? declared : 'application/octet-stream';
      const download = transfer(() => transfers.startDownload(client.name, bytes));
      return {
        download,
        size: bytes.length,
        attachment,
        contentType,
        chunkBytes: ATTACHMENT_CHUNK_BYTES,
      };
    },

    downloadChunk: async ({ auth, download, offset }) => {
      const client = await guard(auth.token, 'messages.read', {
        charge: false,
        audit: false,
        acrossRooms: true,
      });
      const { data, done } = transfer(() =>
        transfers.read(client.name, download, offset, ATTACHMENT_CHUNK_BYTES),
      );
      try {
        return { data: data.toString('base64'), done };
      } finally {
        data.fill(0);
      }
    },

    transferCancel: async ({ auth, transfer: id }) => {
      const client = await guard(auth.token, 'status', { charge: false, audit: false });
      if (!transfers.cancel(client.name, id)) {
        throw new RpcError('NOT_FOUND', 'no such transfer (finished, or idle for a minute)');
      }
      return {};
    },

    join: async ({ auth, roomId }) => {
      await guard(auth.token, 'rooms.join', { roomId });
      if (endpoint.room(roomId)?.membership !== 'invite') {
        throw new RpcError('NOT_INVITED', 'there is no invitation to this room');
      }
      await upstream(() => endpoint.join(roomId));
      return {};
    },

    decline: async ({ auth, roomId }) => {
      await guard(auth.token, 'rooms.join', { roomId });
      if (endpoint.room(roomId)?.membership !== 'invite') {
        throw new RpcError('NOT_INVITED', 'there is no invitation to this room');
      }
      await upstream(() => endpoint.leave(roomId));
      return {};
    },

    createRoom: async ({ auth, invite, isDirect, name }) => {
      await guard(auth.token, 'rooms.create');
      const unique = [...new Set(invite)].filter((u) => u !== endpoint.userId);
      const roomId = await upstream(() =>
        endpoint.createRoom({
          invite: unique,
          ...(isDirect === undefined ? {} : { isDirect }),
          ...(name === undefined ? {} : { name }),
        }),
      );
      return { roomId };
    },

    invite: async ({ auth, roomId, userId }) => {
      await guard(auth.token, 'rooms.manage', { roomId });
      joinedRoom(roomId);
      await upstream(() => endpoint.invite(roomId, userId));
      return {};
    },

    leave: async ({ auth, roomId }) => {
      await guard(auth.token, 'rooms.manage', { roomId });
      if (endpoint.room(roomId) === undefined) {
        throw new RpcError('NOT_FOUND', 'the endpoint is not in this room');
      }
      await upstream(() => endpoint.leave(roomId));
      return {};
    },

    contacts: async ({ auth }) => {
      const client = await guard(auth.token, 'contacts.read');
      return { contacts: await contactsOf(client) };
    },

    contact: async ({ auth, userId }) => {
      const client = await guard(auth.token, 'contacts.read', { target: userId });
      const [found] = await contactsOf(client, userId);
      if (found === undefined) {
        throw new RpcError('NOT_FOUND', 'no room this client may see is shared with this user');
      }
      return found;
    },

    subscribe: async ({ auth }) => {
      const client = await guard(auth.token, 'events.stream');
      const result = hub.subscribe(ownerOf(client, auth.token));
      if (!result.ok) throw new RpcError('RATE_LIMITED', result.reason, { retryAfterMs: 1000 });
      return { subscription: result.subscription, cursor: result.cursor };
    },

    events: async ({ auth, subscription, after, waitMs }, ctx) => {
      // Paid for at subscribe; still checked on every poll, so a revoked token stops the stream.
      const client = await guard(auth.token, 'events.stream', { charge: false, audit: false });
      if (!hub.owns(ownerOf(client, auth.token), subscription)) {
        // A reload may have closed it since we authorised: then say why (revoked), not "gone".
        await guard(auth.token, 'events.stream', { charge: false, audit: false });
        throw new RpcError('NOT_FOUND', 'no such event stream (closed, or idle for too long)');
      }
      const mayRead = client.capabilities.has('messages.read');
      const maySend = client.capabilities.has('messages.send');
      const mayVerify = client.capabilities.has('verification');
      const mayContacts = mayVerify || client.capabilities.has('contacts.read');
      const mayAttest = client.capabilities.has('attestation');
      const visible = (event: StreamEvent): boolean => {
        switch (event.type) {
          case 'verification':
            return mayVerify && mayConcern(client, event.flow.userId);
          case 'identity':
            return mayContacts && mayConcern(client, event.userId);
          case 'message':
            return mayRead && client.mayAccessRoom(event.roomId);
          case 'health':
          case 'backup':
            // The endpoint's own condition, like health: a homeserver swapping the backup
            // is something every UI should be able to show.
            return true;
          case 'attestation':
            return mayAttest && mayConcern(client, event.result.userId);
          case 'edit':
          case 'reaction':
          case 'redaction':
          case 'gap':
            return mayRead && client.mayAccessRoom(event.roomId);
          case 'sent':
            return (mayRead || maySend) && client.mayAccessRoom(event.roomId);
          case 'send-failed':
            return maySend && client.mayAccessRoom(event.failed.roomId);
          default:
            return client.mayAccessRoom(event.roomId);
        }
      };
      const page = await hub.poll(after, visible, {
        waitMs,
        max: 100,
        maxBytes: PAGE_BUDGET_BYTES,
        signal: ctx.signal,
        isOpen: () => hub.isOpen(subscription),
      });
      // Closed while we waited: by a policy reload that revoked the token (or took away
      // events.stream), then the stream ends with that refusal now, not at the next poll; or
      // by unsubscribe or idleness, then the next poll says NOT_FOUND.
      if (!hub.isOpen(subscription)) {
        await guard(auth.token, 'events.stream', { charge: false, audit: false });
      }
      return page;
    },

    unsubscribe: async ({ auth, subscription }) => {
      const client = await guard(auth.token, 'events.stream', { charge: false, audit: false });
      if (!hub.unsubscribe(ownerOf(client, auth.token), subscription)) {
        throw new RpcError('NOT_FOUND', 'no such event stream');
      }
      return {};
    },

    verifications: async ({ auth }) => {
      const client = await guard(auth.token, 'verification');
      return {
        verifications: endpoint.verifications
          .list()
          .filter((f) => mayConcern(client, f.userId))
          .map(flowWire),
      };
    },

    verificationRequest: async ({ auth, userId, deviceId }) => {
      const client = await guard(auth.token, 'verification', {
        target: userId,
        operation: 'verification.request',
      });
      concerning(client, userId);
      // A device: that device. A user: in our direct room with them (any of their devices may
      // answer, as with Element), or else their only device.
      const dm = deviceId === undefined ? directRoom(client, userId) : undefined;
      const flow = await verificationStep(() =>
        upstream(() =>
          deviceId !== undefined
            ? endpoint.verifications.request(userId, deviceId)
            : dm !== undefined
              ? endpoint.verifications.requestInRoom(userId, dm)
              : endpoint.verifications.requestUser(userId),
        ),
      );
      return flowWire(flow);
    },

    verification: async ({ auth, flowId }) => {
      const client = await guard(auth.token, 'verification', { audit: false });
      return flowWire(await visibleFlow(client, flowId));
    },

    verificationAccept: async ({ auth, flowId }) => {
      const client = await guard(auth.token, 'verification', {
        ...flowTarget(flowId),
        operation: 'verification.accept',
      });
      await visibleFlow(client, flowId);
      return flowWire(
        await verificationStep(() => upstream(() => endpoint.verifications.accept(flowId))),
      );
    },

    verificationConfirm: async ({ auth, flowId }) => {
      const client = await guard(auth.token, 'verification', {
        ...flowTarget(flowId),
        operation: 'verification.confirm',
      });
      await visibleFlow(client, flowId);
      return flowWire(
        await verificationStep(() => upstream(() => endpoint.verifications.confirm(flowId))),
      );
    },

    verificationCancel: async ({ auth, flowId, mismatch }) => {
      const client = await guard(auth.token, 'verification', {
        ...flowTarget(flowId),
        operation: 'verification.cancel',
      });
      await visibleFlow(client, flowId);
      const code = mismatch === true ? 'm.mismatched_sas' : 'm.user';
      return flowWire(
        await verificationStep(() => upstream(() => endpoint.verifications.cancel(flowId, code))),
      );
    },

    identityAcknowledge: async ({ auth, userId, masterKey }) => {
      const client = await guard(auth.token, 'verification', {
        target: userId,
        operation: 'identity.acknowledge',
      });
      concerning(client, userId);
      await verificationStep(() => acknowledgeIdentity(endpoint.engine.machine, userId, masterKey));
      void outbox.pump(); // messages held back by the change may go now
      return { identity: identityWire(await identityOf(endpoint.engine.machine, userId)) };
    },

    attest: async ({ auth, userId, deviceId }) => {
      const client = await guard(auth.token, 'attestation', {
        target: userId,
        operation: 'attestation.request',
      });
      concerning(client, userId);
      const view = await attestationService().attest(userId, deviceId);
      await auditResult(client.name, view);
      return attestationWire(view);
    },

    attestation: async ({ auth, userId, deviceId }) => {
      const client = await guard(auth.token, 'attestation', { target: userId });
      concerning(client, userId);
      const view = await attestationService().last(userId, deviceId);
      return view ? { result: attestationWire(view) } : {};
    },

    evidence: async ({ auth, nonce, verifier }) => {
      await guard(auth.token, 'attestation', { operation: 'attestation.evidence' });
      try {
        return {
          evidence: await attestationService().ownEvidence(Buffer.from(nonce, 'base64'), verifier),
        };
      } catch (e) {
        if (e instanceof RpcError) throw e;
        throw new RpcError(
          'ATTESTATION_UNAVAILABLE',
          'this endpoint cannot produce evidence right now',
        );
      }
    },

    backupStatus: async ({ auth }) => {
      await guard(auth.token, 'backup');
      return backupCall(() => backupService().status());
    },

    backupCreate: async ({ auth }) => {
      await guard(auth.token, 'backup', { operation: 'backup.create' });
      return backupCall(() => backupService().create());
    },

    backupRotate: async ({ auth }) => {
      await guard(auth.token, 'backup', { operation: 'backup.rotate' });
      return backupCall(() => backupService().rotate());
    },

    backupRecover: async ({ auth }) => {
      await guard(auth.token, 'backup', { operation: 'backup.recover' });
      return backupCall(() => backupService().recover());
    },

    activate: async ({ auth, credentialBlob, encryptedSecret, challengeId }) => {
      await guard(auth.token, 'attestation', { operation: 'attestation.activate' });
      try {
        const proof = await attestationService().activate({
          credentialBlob: Buffer.from(credentialBlob, 'base64'),
          encryptedSecret: Buffer.from(encryptedSecret, 'base64'),
          challengeId,
        });
        return { proof: Buffer.from(proof).toString('base64') };
      } catch (e) {
        if (e instanceof RpcError && e.code === 'VAULT_FOREIGN_OR_TAMPERED') {
          throw new RpcError(
            'INVALID_REQUEST',
            "the credential was not made for this endpoint's EK and attestation key",
          );
        }
        if (e instanceof RpcError) throw e;
        throw new RpcError('ATTESTATION_UNAVAILABLE', 'this endpoint cannot activate credentials');
      }
    },

    identityWithdraw: async ({ auth, userId }) => {
      const client = await guard(auth.token, 'verification', {
        target: userId,
        operation: 'identity.withdraw',
      });
      concerning(client, userId);
      await verificationStep(() => withdrawVerification(endpoint.engine.machine, userId));
      return { identity: identityWire(await identityOf(endpoint.engine.machine, userId)) };
    },
  };
  // Sends run in the foreground: a page of history being decrypted gives way to them.
  for (const method of SEND_METHODS) {
    const handler = handlers[method] as (params: never, ctx: never) => Promise<unknown>;
    (handlers as Record<string, unknown>)[method] = (params: never, ctx: never) =>
      endpoint.foreground.run(() => handler(params, ctx));
  }
  return handlers;
}

function storageFull(): RpcError {
  return new RpcError(
    'STORAGE_FULL',
    "the endpoint's disk is full: nothing new can be stored until space is freed; it recovers by itself",
  );
}

/** Store failures as codes a UI can act on: a full disk is not an internal error. */
async function stored<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (caught) {
    // The IndexedDB layer wraps the store's error in a DOMException; its cause is the StoreError.
    const e: unknown =
      caught instanceof Error && isStoreError(caught.cause) ? caught.cause : caught;
    if (isStoreError(e, StoreCode.Full)) throw storageFull();
    if (isStoreError(e)) {
      throw new RpcError('STORE_UNAVAILABLE', 'the endpoint cannot write its store; see its log');
    }
    throw e;
  }
}

/** Verification and identity refusals, as RPC errors with the same code and sentence. */
async function verificationStep<T>(work: () => T | Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (e instanceof VerificationError || e instanceof IdentityError) {
      throw new RpcError(e.code, e.message);
    }
    throw e;
  }
}

/** Transfer refusals (messages/transfers.ts) as RPC errors with the same code. */
function transfer<T>(work: () => T): T {
  try {
    return work();
  } catch (e) {
    if (e instanceof TransferError) {
      throw new RpcError(
        e.code,
        e.message,
        e.code === 'RATE_LIMITED' ? { retryAfterMs: 5000 } : {},
      );
    }
    throw e;
  }
}

function byteSize(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value), 'utf8');
}

/**
 * A backup call: homeserver failures as upstream() makes them, and the vault's refusals of a
 * restore (no key, another key, a tampered key file) as one code a UI can show.
 */
async function backupCall<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await upstream(work);
  } catch (e) {
    if (e instanceof VaultError && e.code !== VaultCode.Unavailable) {
      throw new RpcError('BACKUP_CANNOT_DECRYPT', e.message);
    }
    throw e;
  }
}

/** Homeserver failures, as codes a UI can act on. Nothing of the server's body is passed on. */
async function upstream<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    throw upstreamError(e);
  }
}

function upstreamError(e: unknown): unknown {
  if (!(e instanceof MatrixApiError)) return e;
  if (e.status === 403 || e.status === 404) {
    return new RpcError('NOT_FOUND', `the homeserver refused (${e.errcode})`);
  }
  if (e.status === 400) {
    return new RpcError('INVALID_REQUEST', `the homeserver refused the request (${e.errcode})`);
  }
  return new RpcError('UPSTREAM_FAILED', `the homeserver failed (${e.errcode})`);
}

/** The hub's owner key for a client's streams: its name and the hash of the token it used. */
function ownerOf(client: AuthorizedClient, token: string): string {
  return streamOwner(client.name, hashToken(token).toString('hex'));
}

/** The display names of the members listed (at most as many as there are), or nothing. */
function displayNamesOf(
  names: Readonly<Record<string, string>> | undefined,
  listed: readonly string[],
): { displayNames?: Record<string, string> } {
  if (names === undefined) return {};
  const shown: Record<string, string> = {};
  for (const userId of listed) {
    const name = names[userId];
    if (name !== undefined) shown[userId] = name;
  }
  return Object.keys(shown).length > 0 ? { displayNames: shown } : {};
}
