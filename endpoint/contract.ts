import { z } from 'zod';
import { defineContract } from '../keyvault/common/rpc/index.ts';
import {
  ATTACHMENT_CHUNK_BYTES,
  MAX_ATTACHMENT_BYTES,
  MAX_EXCLUSIONS_LISTED,
  attachmentInfo,
  contentType,
  exclusion,
  failedSend,
  fileName,
  timelineItem,
  transferId,
} from './contract-messages.ts';

export * from './contract-messages.ts';

/**
 * What the endpoint compartment answers on its channel: the operations of the local API
 * (endpoint/untrusted/gateway exposes them over HTTP), and nothing that yields a key, a raw event or
 * another client's data.
 *
 * Every call carries the UI client's bearer token, exactly as the UI presented it. The gateway
 * forwards it and decides nothing: the endpoint authorises each call against the policy and
 * appends the decision to the audit log before it acts (DESIGN.md §2). A gateway that makes up
 * a token, or strips or renames the client, gets UNAUTHENTICATED; one that replays a revoked
 * token gets the same.
 *
 * Errors are RpcErrors with these codes (the gateway maps them to HTTP statuses):
 * UNAUTHENTICATED, FORBIDDEN_CAPABILITY, FORBIDDEN_ROOM, RATE_LIMITED (with retryAfterMs),
 * INVALID_REQUEST, NOT_FOUND, UPSTREAM_FAILED (the homeserver refused or is unreachable),
 * AUDIT_UNAVAILABLE (the audit log cannot be written: nothing is done unaudited), plus the
 * RPC's own protocol codes.
 */

/** A Matrix room id: `!opaque:server` (or `!opaque` in room version 12); printable ASCII. */
export const roomId = z
  .string()
  .max(255)
  .regex(/^![\x21-\x7e]{1,254}$/, 'expected a room id such as "!abc:example.org"');
/** A Matrix user id, as the spec's grammar bounds it (255 bytes, printable ASCII). */
export const userId = z
  .string()
  .max(255)
  .regex(
    /^@[\x21-\x39\x3b-\x7e]{1,253}:[\x21-\x7e]{1,253}$/,
    'expected a user id such as "@alice:example.org"',
  );
/** A Matrix device id (opaque, printable ASCII). */
export const deviceId = z
  .string()
  .max(255)
  .regex(/^[\x21-\x7e]{1,255}$/, 'expected a device id such as "ABCDEFGHIJ"');
export const eventId = z
  .string()
  .max(255)
  .regex(/^\$[\x21-\x7e]{1,254}$/, 'expected an event id such as "$abc"');
/** The homeserver's pagination token, passed through opaquely (bounded, printable). */
export const pageToken = z
  .string()
  .max(512)
  .regex(/^[\x21-\x7e]{1,512}$/, 'expected a pagination token from a previous page');

export const MAX_TOKEN_CHARS = 512;
export const MAX_BODY_CHARS = 32_768;
export const MAX_PAGE = 100;
export const MAX_INVITES = 50;
export const MAX_EVENT_WAIT_MS = 25_000;
export const MAX_EVENTS_PER_POLL = 100;

/** The caller: the bearer token as presented. Nothing else identifies a client. */
const auth = z.object({ token: z.string().min(1).max(MAX_TOKEN_CHARS) }).strict();

export const deviceInfo = z
  .object({
    deviceId: z.string(),
    /** The owner's self-signing key signed it (MSC4153's "cross-signed"). */
    crossSignedByOwner: z.boolean(),
    /** We verified it, directly or through its owner's verified identity. */
    verified: z.boolean(),
  })
  .strict();

/** A verification flow's id: the to-device transaction id (or a room event id). */
export const flowId = z
  .string()
  .max(255)
  .regex(/^[\x21-\x7e]{1,255}$/, 'expected a verification id from the list of verifications');

/** A user's cross-signing identity, in Element X's states (endpoint/verification/identity.ts). */
export const identityState = z.enum([
  'none',
  'pinned',
  'verified',
  'pin-violation',
  'verification-violation',
]);
export const identity = z
  .object({
    state: identityState,
    /** The master key (unpadded base64 Ed25519), to compare out of band. */
    masterKey: z.string().optional(),
    /** Verified by us at some point (cleared by withdrawing verification). */
    wasVerified: z.boolean(),
  })
  .strict();

export const verificationPhase = z.enum([
  'requested',
  'ready',
  'started',
  'compare',
  'confirmed',
  'done',
  'cancelled',
]);
export const verificationFlow = z
  .object({
    flowId,
    userId: z.string(),
    deviceId: deviceId.optional(),
    /** We sent the request (true), or the other side did. */
    weStarted: z.boolean(),
    phase: verificationPhase,
    /** From `compare` on: what both screens must show. */
    sas: z
      .object({
        emoji: z.array(z.object({ symbol: z.string(), name: z.string() }).strict()).max(7),
        decimals: z.tuple([z.number().int(), z.number().int(), z.number().int()]),
      })
      .strict()
      .optional(),
    cancelled: z
      .object({ code: z.string(), reason: z.string(), byUs: z.boolean() })
      .strict()
      .optional(),
    /** Until the flow is cancelled for inactivity (m.timeout). */
    timeRemainingMs: z.number().int().min(0),
  })
  .strict();
export type VerificationFlowWire = z.infer<typeof verificationFlow>;

export const contact = z
  .object({
    userId: z.string(),
    /** Rooms (that this client may see) we share with the contact. */
    rooms: z.array(z.string()),
    identity,
    devices: z.array(deviceInfo),
  })
  .strict();

export const roomSummary = z
  .object({
    roomId: z.string(),
    membership: z.enum(['join', 'invite']),
    members: z.array(z.string()),
    /** For an invitation: who invited us (the sender of our m.room.member invite event). */
    inviter: z.string().optional(),
    /**
     * m.room.name and m.room.topic, and members' display names (only those who set one, only
     * members listed): text other users chose. Show it as text, with the user id wherever a
     * name could pass for another member's.
     */
    name: z.string().max(255).optional(),
    topic: z.string().max(1000).optional(),
    displayNames: z.record(z.string(), z.string().max(256)).optional(),
    /** The room has m.room.encryption. Unencrypted rooms are shown, never sent to. */
    encrypted: z.boolean(),
    /** Who gets room keys and whose messages show, as the policy sets it for this room. */
    roomKeyRecipients: z.enum(['verified-only', 'cross-signed', 'tofu', 'attested-only']),
    showUnverifiedMessages: z.boolean(),
  })
  .strict();

/** A peer device's attestation verdict (endpoint/attestation/service.ts). */
export const attestationResult = z
  .object({
    userId: z.string(),
    deviceId: z.string(),
    state: z.enum(['passed', 'failed', 'pending']),
    at: z.number().int(),
    /** One entry per reason, with the verifier's stable code (attestation/codes.ts). */
    failures: z.array(z.object({ code: z.string(), message: z.string() }).strict()).max(64),
    facts: z
      .object({
        akName: z.string(),
        /** How the AK is known to be in a genuine TPM: ak-certificate or credential-activation. */
        enrolment: z.string(),
        manufacturer: z.string().optional(),
        pcrs: z.array(z.object({ pcr: z.number().int(), digest: z.string() }).strict()).max(24),
        rebooted: z.boolean(),
        eventLog: z.string(),
      })
      .strict()
      .optional(),
  })
  .strict();

/** The vault's and the homeserver's reachability and the disk's room (endpoint/health.ts). */
export const health = z
  .object({
    vault: z.enum(['available', 'unavailable']),
    homeserver: z.enum(['reachable', 'unreachable']),
    storage: z.enum(['ok', 'full', 'failed']),
    reason: z.string().max(600).optional(),
  })
  .strict();

/** What the event stream carries. `seq` increases by one per event the endpoint saw. */
/** The key backup (endpoint/backup): state, counts, and why uploads stopped, if they did. */
export const backupStatus = z
  .object({
    /** no-key: the vault has none yet; off: no backup made; refused: uploads stopped. */
    state: z.enum(['no-key', 'off', 'active', 'refused']),
    key: z
      .object({
        mode: z.enum(['vault', 'recovery-key', 'escrow']),
        publicKey: z.string(),
        /** The vault holds the private half (vault mode, or a key imported to restore). */
        canDecrypt: z.boolean(),
      })
      .strict()
      .optional(),
    version: z.string().optional(),
    counts: z.object({ total: z.number().int(), backedUp: z.number().int() }).strict(),
    /** Room keys the policy kept out of the backup (rooms.backup: not-attested-only). */
    skipped: z.number().int(),
    serverCount: z.number().int().optional(),
    refusal: z.object({ code: z.string(), message: z.string() }).strict().optional(),
    lastError: z.string().optional(),
    /** The vault's key is not the one the version uses (a new key was made): rotate. */
    rotateNeeded: z.boolean().optional(),
  })
  .strict();
export type BackupStatusWire = z.infer<typeof backupStatus>;

export const recoverResult = z
  .object({
    version: z.string(),
    total: z.number().int(),
    imported: z.number().int(),
    failed: z.record(z.string(), z.number().int()),
  })
  .strict();

export const streamEvent = z.discriminatedUnion('type', [
  z
    .object({
      seq: z.number().int(),
      /**
       * The key backup changed state (made, refused: the homeserver swapped the version or
       * key, back to active), or a restore moved on (`progress`).
       */
      type: z.literal('backup'),
      status: backupStatus.optional(),
      progress: z
        .object({
          phase: z.enum(['download', 'decrypt', 'import']),
          done: z.number().int(),
          total: z.number().int(),
        })
        .strict()
        .optional(),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      type: z.literal('message'),
      roomId: z.string(),
      item: timelineItem,
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /**
       * Our own membership of a room changed (invited, joined, left), or a joined room's name or
       * topic did (`join` again): refetch the room list.
       */
      type: z.literal('room'),
      roomId: z.string(),
      membership: z.enum(['invite', 'join', 'leave']),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** Someone else's membership of a room changed, or their display name did. */
      type: z.literal('member'),
      roomId: z.string(),
      userId: z.string(),
      membership: z.string(),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** A verification flow moved on (only to clients with the `verification` capability). */
      type: z.literal('verification'),
      flow: verificationFlow,
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** A contact's identity changed: new, verified, or a violation to resolve. */
      type: z.literal('identity'),
      userId: z.string(),
      identity,
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** The endpoint's own condition changed: its vault or its disk (endpoint/health.ts). */
      type: z.literal('health'),
      health,
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** A peer device's attestation finished (passed or failed). */
      type: z.literal('attestation'),
      result: attestationResult,
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** The sender replaced an item's text (m.replace): show `body` in place of the old. */
      type: z.literal('edit'),
      roomId: z.string(),
      target: z.string(),
      eventId: z.string(),
      body: z.string(),
      /** The new HTML (unsanitised), when the edit has one; absent: show `body` as text. */
      formattedBody: z.string().optional(),
      msgtype: z.string().optional(),
      ts: z.number(),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** Someone reacted to an item (m.annotation). `eventId` is the reaction's own id. */
      type: z.literal('reaction'),
      roomId: z.string(),
      target: z.string(),
      eventId: z.string(),
      key: z.string().max(256),
      sender: z.string(),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** An item (a message, or a reaction) was redacted: remove what was shown of it. */
      type: z.literal('redaction'),
      roomId: z.string(),
      target: z.string(),
      sender: z.string(),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /**
       * Events of a room were missed (more arrived while the endpoint was away than it
       * fetches back): refetch the room's timeline.
       */
      type: z.literal('gap'),
      roomId: z.string(),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** A queued send reached the homeserver; `excluded`: who could not read it, and why. */
      type: z.literal('sent'),
      roomId: z.string(),
      txnId: z.string(),
      eventId: z.string(),
      excluded: z.array(exclusion).max(MAX_EXCLUSIONS_LISTED),
    })
    .strict(),
  z
    .object({
      seq: z.number().int(),
      /** The outbox gave up on a send (the homeserver refused it): see failedSends. */
      type: z.literal('send-failed'),
      failed: failedSend,
    })
    .strict(),
]);
export type StreamEvent = z.infer<typeof streamEvent>;

const subscription = z
  .string()
  .regex(/^[A-Za-z0-9_-]{22,64}$/, 'expected a subscription id from subscribe');

const empty = z.object({}).strict();

export const MAX_REACTION_CHARS = 64;
export const MAX_FAILED_LISTED = 100;
const outboxTxnId = z
  .string()
  .regex(/^mte\.[0-9a-f]{24}$/, 'expected a transaction id from the list of failed sends');
const sendResult = z
  .object({
    txnId: z.string(),
    excluded: z.array(exclusion).max(MAX_EXCLUSIONS_LISTED),
  })
  .strict();

/** Why the gateway's browser listener refused a request (the audit reason). */
export const GATEWAY_REFUSALS = [
  'FORBIDDEN_HOST',
  'FORBIDDEN_ORIGIN',
  'CROSS_SITE',
  'PREFLIGHT',
] as const;
export type GatewayRefusal = (typeof GATEWAY_REFUSALS)[number];

export const endpointContract = defineContract({
  /** No token: answers once start-up is complete (for the launcher). Reveals nothing. */
  ready: { params: empty, result: empty },
  /**
   * No token: the gateway refused a browser's request before any call (a Host that is not
   * the UI's, a foreign Origin, a cross-site fetch, a CORS preflight). Written to the audit log
   * like a refusal of an unknown token, so a flood is counted, not written line by line. It
   * grants nothing: the gateway could make as many unknown-token refusals.
   */
  gatewayRefusal: {
    params: z
      .object({
        reason: z.enum(GATEWAY_REFUSALS),
        /** Refusals of this reason since the last report (the gateway coalesces floods). */
        count: z.number().int().min(1).max(10_000),
      })
      .strict(),
    result: empty,
  },
  /** Any valid token: who the endpoint is, and who the caller is. */
  status: {
    params: z.object({ auth }).strict(),
    result: z
      .object({
        userId: z.string(),
        deviceId: z.string(),
        /** Sends accepted (durably queued) and not yet acknowledged by the homeserver. */
        pendingSends: z.number().int(),
        health,
        client: z.object({ name: z.string(), capabilities: z.array(z.string()) }).strict(),
      })
      .strict(),
  },
  /** rooms.read: joined and invited rooms the client may see. */
  rooms: {
    params: z.object({ auth }).strict(),
    result: z.object({ rooms: z.array(roomSummary) }).strict(),
  },
  /** messages.read: one page of history, newest first, decrypted here. */
  timeline: {
    params: z
      .object({
        auth,
        roomId,
        limit: z.number().int().min(1).max(MAX_PAGE),
        from: pageToken.optional(),
      })
      .strict(),
    result: z.object({ items: z.array(timelineItem), next: z.string().optional() }).strict(),
  },
  /**
   * messages.send: resolves once the message is durably queued; it is sent exactly once.
   * `edit`: replaces the text of one of our own messages (m.replace). `thread`: a reply in the
   * thread with this root. `excluded`: members and devices that, as the endpoint knows them
   * now, will not get the room key (the `sent` event says who was left out at sending time).
   * Refused with MESSAGE_TOO_LARGE when the event would pass the homeserver's size limit.
   */
  send: {
    params: z
      .object({
        auth,
        roomId,
        body: z.string().min(1).max(MAX_BODY_CHARS),
        replyTo: eventId.optional(),
        edit: eventId.optional(),
        thread: eventId.optional(),
      })
      .strict(),
    result: sendResult,
  },
  /** messages.send: a reaction (m.annotation) to an item, queued like a message. */
  react: {
    params: z
      .object({ auth, roomId, eventId, key: z.string().min(1).max(MAX_REACTION_CHARS) })
      .strict(),
    result: sendResult,
  },
  /** messages.send: redacts an item (ours, or anyone's where our power level allows). */
  redact: {
    params: z
      .object({ auth, roomId, eventId, reason: z.string().min(1).max(255).optional() })
      .strict(),
    result: z.object({ txnId: z.string() }).strict(),
  },
  /** messages.send: the sends the outbox gave up on, in rooms this client may see. */
  failedSends: {
    params: z.object({ auth }).strict(),
    result: z.object({ failed: z.array(failedSend).max(MAX_FAILED_LISTED) }).strict(),
  },
  /** messages.send: queues a failed send again, with the same transaction id. */
  retrySend: {
    params: z.object({ auth, txnId: outboxTxnId }).strict(),
    result: z.object({ txnId: z.string() }).strict(),
  },
  /** messages.send: drops a failed send for good. */
  discardSend: {
    params: z.object({ auth, txnId: outboxTxnId }).strict(),
    result: empty,
  },
  /**
   * messages.send: starts an attachment upload of `size` bytes. The bytes follow in chunks of
   * at most `chunkBytes` (uploadChunk, in order); uploadFinish encrypts them (AES-256-CTR, the
   * spec's encrypted file), uploads the ciphertext and queues the m.file / m.image message.
   * Unfinished uploads are dropped after a minute without a chunk.
   */
  uploadStart: {
    params: z
      .object({
        auth,
        roomId,
        name: fileName,
        contentType,
        size: z.number().int().min(1).max(MAX_ATTACHMENT_BYTES),
        caption: z.string().min(1).max(1024).optional(),
      })
      .strict(),
    result: z
      .object({ upload: transferId, chunkBytes: z.number().int(), maxBytes: z.number().int() })
      .strict(),
  },
  uploadChunk: {
    params: z
      .object({
        auth,
        upload: transferId,
        offset: z.number().int().min(0),
        data: z.base64().max(Math.ceil(ATTACHMENT_CHUNK_BYTES / 3) * 4),
      })
      .strict(),
    /** All bytes the endpoint holds of this upload so far (the next chunk's offset). */
    result: z.object({ received: z.number().int() }).strict(),
  },
  uploadFinish: {
    params: z.object({ auth, upload: transferId }).strict(),
    result: sendResult,
  },
  /**
   * messages.read: opens an item's attachment. The endpoint fetches the ciphertext, checks its
   * SHA-256 against the (encrypted) event and decrypts it before anything is served: a
   * tampered file is refused (ATTACHMENT_TAMPERED), never served in part.
   */
  downloadStart: {
    params: z.object({ auth, roomId, eventId }).strict(),
    result: z
      .object({
        download: transferId,
        size: z.number().int(),
        attachment: attachmentInfo,
        /** The type to serve it as: the declared one only for images whose bytes match it. */
        contentType,
        chunkBytes: z.number().int(),
      })
      .strict(),
  },
  downloadChunk: {
    params: z.object({ auth, download: transferId, offset: z.number().int().min(0) }).strict(),
    result: z
      .object({
        data: z.base64().max(Math.ceil(ATTACHMENT_CHUNK_BYTES / 3) * 4),
        done: z.boolean(),
      })
      .strict(),
  },
  /**
   * Any valid token: drops one of the caller's unfinished uploads or unread downloads now
   * (a UI that gave up), freeing its memory and its slot instead of waiting a minute.
   */
  transferCancel: {
    params: z.object({ auth, transfer: transferId }).strict(),
    result: empty,
  },
  /** rooms.join: accepts an invitation (the room's allow-list in the policy applies). */
  join: {
    params: z.object({ auth, roomId }).strict(),
    result: empty,
  },
  /** rooms.join: declines an invitation. */
  decline: {
    params: z.object({ auth, roomId }).strict(),
    result: empty,
  },
  /** rooms.create: an encrypted room (or DM), inviting these users. */
  createRoom: {
    params: z
      .object({
        auth,
        invite: z.array(userId).max(MAX_INVITES),
        isDirect: z.boolean().optional(),
        name: z.string().min(1).max(255).optional(),
      })
      .strict(),
    result: z.object({ roomId: z.string() }).strict(),
  },
  /** rooms.manage */
  invite: {
    params: z.object({ auth, roomId, userId }).strict(),
    result: empty,
  },
  /** rooms.manage */
  leave: {
    params: z.object({ auth, roomId }).strict(),
    result: empty,
  },
  /** contacts.read: the users we share (visible) rooms with, their devices and trust. */
  contacts: {
    params: z.object({ auth }).strict(),
    result: z.object({ contacts: z.array(contact) }).strict(),
  },
  /** contacts.read: one user, who must share a visible room with us. */
  contact: {
    params: z.object({ auth, userId }).strict(),
    result: contact,
  },
  /**
   * events.stream: opens a subscription (one per SSE connection). Counted against the client's
   * rate and audited; the polls that follow are not charged, but each re-checks the token.
   */
  subscribe: {
    params: z.object({ auth }).strict(),
    /** `cursor`: the seq of the newest event already seen; poll for events after it. */
    result: z.object({ subscription, cursor: z.number().int() }).strict(),
  },
  /** Long poll: events after `after`, waiting up to waitMs for the first. */
  events: {
    params: z
      .object({
        auth,
        subscription,
        after: z.number().int().min(-1),
        waitMs: z.number().int().min(0).max(MAX_EVENT_WAIT_MS),
      })
      .strict(),
    result: z
      .object({
        events: z.array(streamEvent).max(MAX_EVENTS_PER_POLL),
        /** Pass as `after` next time. */
        cursor: z.number().int(),
        /** Events after `after` were dropped from the buffer: refetch timelines. */
        gap: z.boolean(),
      })
      .strict(),
  },
  unsubscribe: {
    params: z.object({ auth, subscription }).strict(),
    result: empty,
  },
  /** verification: the flows in progress or recently finished, with our own devices or contacts. */
  verifications: {
    params: z.object({ auth }).strict(),
    result: z.object({ verifications: z.array(verificationFlow).max(64) }).strict(),
  },
  /**
   * verification: asks one device of a contact (or of our own user) to verify by SAS; without
   * a device, the contact in our direct room with them (any of their devices may answer), or
   * else their one (cross-signed) device, CONFLICT when they have several.
   */
  verificationRequest: {
    params: z.object({ auth, userId, deviceId: deviceId.optional() }).strict(),
    result: verificationFlow,
  },
  verification: {
    params: z.object({ auth, flowId }).strict(),
    result: verificationFlow,
  },
  /** verification: accept an incoming request. */
  verificationAccept: {
    params: z.object({ auth, flowId }).strict(),
    result: verificationFlow,
  },
  /** verification: the emoji match (the other side is then verified and cross-signed by us). */
  verificationConfirm: {
    params: z.object({ auth, flowId }).strict(),
    result: verificationFlow,
  },
  /** verification: stop, at any step; `mismatch` when the emoji differ. */
  verificationCancel: {
    params: z.object({ auth, flowId, mismatch: z.boolean().optional() }).strict(),
    result: verificationFlow,
  },
  /**
   * verification: accept a contact's changed identity (pin the new master key). `masterKey`:
   * the key the user was shown; refused (CONFLICT) if the identity changed again since.
   */
  identityAcknowledge: {
    params: z
      .object({
        auth,
        userId,
        masterKey: z
          .string()
          .max(64)
          .regex(/^[A-Za-z0-9+/]{43}$/, 'expected an unpadded base64 Ed25519 key')
          .optional(),
      })
      .strict(),
    result: z.object({ identity }).strict(),
  },
  /**
   * attestation: ask a peer device to prove, with a TPM quote, that its keys live in a
   * genuine measured TPM; answers with the verdict (or a timeout failure after 20 s).
   */
  attest: {
    params: z.object({ auth, userId, deviceId }).strict(),
    result: attestationResult,
  },
  /** attestation: the last verdict for a peer device, if its keys did not change since. */
  attestation: {
    params: z.object({ auth, userId, deviceId }).strict(),
    result: z.object({ result: attestationResult.optional() }).strict(),
  },
  /**
   * attestation: our own evidence for a nonce an auditor chose, to check offline with
   * `node attestation/main.ts verify` (the statement is JSON text, attestation/README.md).
   */
  evidence: {
    params: z
      .object({
        auth,
        nonce: z
          .base64()
          .max(44)
          .refine((s) => Buffer.from(s, 'base64').length === 32, 'expected 32 bytes'),
        verifier: z.object({ userId, deviceId }).strict(),
      })
      .strict(),
    result: z.object({ evidence: z.string().max(48 * 1024) }).strict(),
  },
  /**
   * attestation: credential activation for an institution's attestation CA (attestation/
   * enrol): the vault runs TPM2_ActivateCredential on what the CA made for our EK and AK and
   * answers the proof, never the credential.
   */
  activate: {
    params: z
      .object({
        auth,
        credentialBlob: z.base64().max(700),
        encryptedSecret: z.base64().max(1400),
        challengeId: z.string().regex(/^[A-Za-z0-9_-]{16,64}$/),
      })
      .strict(),
    result: z.object({ proof: z.base64().max(44) }).strict(),
  },
  /** verification: stop requiring that this contact stays verified. */
  identityWithdraw: {
    params: z.object({ auth, userId }).strict(),
    result: z.object({ identity }).strict(),
  },
  /** backup: the key backup's state and counts. */
  backupStatus: { params: z.object({ auth }).strict(), result: backupStatus },
  /** backup: make a backup version with the vault's backup key and upload every room key. */
  backupCreate: { params: z.object({ auth }).strict(), result: backupStatus },
  /** backup: a new version, every key uploaded to it, then the old one deleted. */
  backupRotate: {
    params: z.object({ auth }).strict(),
    result: backupStatus.extend({ deletedVersion: z.string().optional() }).strict(),
  },
  /** backup: restore room keys from the current backup (the vault decrypts them). */
  backupRecover: { params: z.object({ auth }).strict(), result: recoverResult },
});
export type EndpointContract = typeof endpointContract;

/**
 * Calls that send (a message, a reaction, a redaction, an attachment's chunks). A send's work
 * is a durable write, not homeserver round trips, and a person waits on it: the gateway gives
 * them slots of their own, and the endpoint runs them ahead of long reads (foreground.ts).
 */
export const SEND_METHODS: ReadonlySet<keyof EndpointContract> = new Set<keyof EndpointContract>([
  'send',
  'react',
  'redact',
  'retrySend',
  'discardSend',
  'uploadStart',
  'uploadChunk',
  'uploadFinish',
]);
