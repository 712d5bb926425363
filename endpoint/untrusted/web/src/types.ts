/**
 * What the gateway answers, as the endpoint contract (endpoint/contract.ts) defines it. Written
 * out here rather than imported: the contract pulls in zod and Node code that a browser bundle
 * must not carry. test/unit/web-types.test.ts checks at compile time that the contract's types
 * still fit these.
 *
 * Every string in here that another Matrix user chose (bodies, HTML, names, topics, file names,
 * reaction keys, user and device ids) is hostile: it is only ever shown as text, or through
 * sanitize.ts.
 */

export type Capability =
  | 'rooms.read'
  | 'messages.read'
  | 'messages.send'
  | 'rooms.create'
  | 'rooms.manage'
  | 'rooms.join'
  | 'contacts.read'
  | 'verification'
  | 'attestation'
  | 'events.stream';

export interface Health {
  vault: 'available' | 'unavailable';
  homeserver: 'reachable' | 'unreachable';
  storage: 'ok' | 'full' | 'failed';
  reason?: string | undefined;
}

export interface Status {
  userId: string;
  deviceId: string;
  pendingSends: number;
  health: Health;
  client: { name: string; capabilities: string[] };
}

export interface RoomSummary {
  roomId: string;
  membership: 'join' | 'invite';
  members: string[];
  inviter?: string | undefined;
  name?: string | undefined;
  topic?: string | undefined;
  displayNames?: Record<string, string> | undefined;
  encrypted: boolean;
  roomKeyRecipients: string;
  showUnverifiedMessages: boolean;
}

export interface Reaction {
  key: string;
  count: number;
  senders: string[];
  byUs: boolean;
}

export interface AttachmentInfo {
  msgtype: string;
  name: string;
  mimetype?: string | undefined;
  size?: number | undefined;
  encrypted: boolean;
}

export type ItemKind = 'message' | 'unsupported' | 'redacted' | 'undecryptable';
export type VerificationState = 'verified' | 'unverified' | 'warning' | 'unencrypted';

export interface TimelineItem {
  eventId: string;
  sender: string;
  senderDevice?: string | undefined;
  ts: number;
  kind: ItemKind;
  type?: string | undefined;
  decrypted: boolean;
  body?: string | undefined;
  formattedBody?: string | undefined;
  msgtype?: string | undefined;
  replyTo?: string | undefined;
  thread?: string | undefined;
  edited?: boolean | undefined;
  editedAt?: number | undefined;
  reactions?: Reaction[] | undefined;
  attachment?: AttachmentInfo | undefined;
  encrypted?: boolean | undefined;
  verification?: VerificationState | undefined;
  reason?: string | undefined;
}

export interface TimelinePage {
  items: TimelineItem[];
  /** Pass as `from` for the page before this one. */
  next?: string | undefined;
}

export interface Exclusion {
  userId: string;
  deviceId?: string | undefined;
  reason: string;
}

export interface SendResult {
  txnId: string;
  excluded: Exclusion[];
}

export type IdentityState =
  'none' | 'pinned' | 'verified' | 'pin-violation' | 'verification-violation';

export interface Identity {
  state: IdentityState;
  masterKey?: string | undefined;
  wasVerified: boolean;
}

export interface DeviceInfo {
  deviceId: string;
  crossSignedByOwner: boolean;
  verified: boolean;
}

export interface Contact {
  userId: string;
  rooms: string[];
  identity: Identity;
  devices: DeviceInfo[];
}

export type VerificationPhase =
  'requested' | 'ready' | 'started' | 'compare' | 'confirmed' | 'done' | 'cancelled';

export interface VerificationFlow {
  flowId: string;
  userId: string;
  deviceId?: string | undefined;
  weStarted: boolean;
  phase: VerificationPhase;
  sas?:
    | {
        emoji: { symbol: string; name: string }[];
        decimals: [number, number, number];
      }
    | undefined;
  cancelled?: { code: string; reason: string; byUs: boolean } | undefined;
  timeRemainingMs: number;
}

export interface AttestationResult {
  userId: string;
  deviceId: string;
  state: 'passed' | 'failed' | 'pending';
  at: number;
  failures: { code: string; message: string }[];
  facts?:
    | {
        akName: string;
        enrolment: string;
        manufacturer?: string | undefined;
        pcrs: { pcr: number; digest: string }[];
        rebooted: boolean;
        eventLog: string;
      }
    | undefined;
}

export interface FailedSend {
  txnId: string;
  roomId: string;
  kind: string;
  preview: string;
  acceptedAt: number;
  failedAt: number;
  code: string;
  reason: string;
}

/** The key backup's state (GET /v1/backup; `backup` events). */
export interface BackupStatus {
  state: 'no-key' | 'off' | 'active' | 'refused';
  key?:
    | { mode: 'vault' | 'recovery-key' | 'escrow'; publicKey: string; canDecrypt: boolean }
    | undefined;
  version?: string | undefined;
  counts: { total: number; backedUp: number };
  skipped: number;
  serverCount?: number | undefined;
  refusal?: { code: string; message: string } | undefined;
  lastError?: string | undefined;
}

/** The stream's events (`event:` is the `type`). */
export type StreamEvent =
  | { seq: number; type: 'message'; roomId: string; item: TimelineItem }
  | { seq: number; type: 'room'; roomId: string; membership: 'invite' | 'join' | 'leave' }
  | { seq: number; type: 'member'; roomId: string; userId: string; membership: string }
  | { seq: number; type: 'verification'; flow: VerificationFlow }
  | { seq: number; type: 'identity'; userId: string; identity: Identity }
  | { seq: number; type: 'health'; health: Health }
  | { seq: number; type: 'attestation'; result: AttestationResult }
  | {
      seq: number;
      type: 'backup';
      status?: BackupStatus | undefined;
      progress?:
        { phase: 'download' | 'decrypt' | 'import'; done: number; total: number } | undefined;
    }
  | {
      seq: number;
      type: 'edit';
      roomId: string;
      target: string;
      eventId: string;
      body: string;
      formattedBody?: string | undefined;
      msgtype?: string | undefined;
      ts: number;
    }
  | {
      seq: number;
      type: 'reaction';
      roomId: string;
      target: string;
      eventId: string;
      key: string;
      sender: string;
    }
  | { seq: number; type: 'redaction'; roomId: string; target: string; sender: string }
  | { seq: number; type: 'gap'; roomId: string }
  | {
      seq: number;
      type: 'sent';
      roomId: string;
      txnId: string;
      eventId: string;
      excluded: Exclusion[];
    }
  | { seq: number; type: 'send-failed'; failed: FailedSend };

/** `event: gap` without a room: this stream dropped events; refetch every timeline. */
export interface StreamGap {
  after: number;
  cursor: number;
}

/** `event: error`: ends the stream. */
export interface StreamError {
  error: { code: string; message: string };
  lastEventId: number;
}
