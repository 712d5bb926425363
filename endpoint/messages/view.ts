import type { DecryptedMessage, UndecryptableMessage } from '../crypto/engine.ts';
import type { RoomEvent } from '../matrix/api.ts';
import { type Relations, relationsOf } from './relations.ts';

/**
 * What the endpoint makes of one room event: an item to show, or a change to an item (an
 * edit, a reaction, a redaction), or nothing for a UI (a verification step, state). The local
 * API's timeline and event stream are built from these (aggregate.ts, device.ts).
 */
export type ItemKind = 'message' | 'unsupported' | 'redacted' | 'undecryptable';

export interface AttachmentView {
  msgtype: 'm.file' | 'm.image' | 'm.video' | 'm.audio';
  name: string;
  mimetype?: string;
  size?: number;
  encrypted: boolean;
}

export interface MessageView {
  eventId: string;
  sender: string;
  senderDevice?: string;
  ts: number;
  kind: ItemKind;
  type?: string;
  decrypted: boolean;
  encrypted: boolean;
  body?: string;
  /**
   * The sender's HTML (`formatted_body` with format org.matrix.custom.html), exactly as sent:
   * hostile markup that a UI must sanitise before showing. Absent for other formats.
   */
  formattedBody?: string;
  msgtype?: string;
  replyTo?: string;
  thread?: string;
  edited?: boolean;
  editedAt?: number;
  /** Per key: how many reacted, up to 20 of them by name, and whether we are among them. */
  reactions?: { key: string; count: number; senders: string[]; byUs: boolean }[];
  attachment?: AttachmentView;
  verification?: 'verified' | 'unverified' | 'warning' | 'unencrypted';
  reason?: string;
}

export interface EditView {
  eventId: string;
  sender: string;
  ts: number;
  target: string;
  body: string;
  /** The new content's HTML, as for MessageView.formattedBody. */
  formattedBody?: string;
  msgtype?: string;
  /**
   * The edit itself arrived encrypted. An encrypted item is replaced only by an encrypted edit
   * (the spec): the homeserver can invent a plaintext event with any sender.
   */
  encrypted: boolean;
  verification?: MessageView['verification'];
}

export type Classified =
  | { role: 'item'; view: MessageView }
  | { role: 'edit'; edit: EditView }
  | { role: 'reaction'; eventId: string; sender: string; target: string; key: string }
  | { role: 'redaction'; eventId: string; sender: string; target: string }
  | { role: 'none' };

export type Decrypted = DecryptedMessage | UndecryptableMessage;

export const PLAINTEXT_IN_ENCRYPTED_ROOM =
  'sent unencrypted in an encrypted room: the homeserver or a broken client may have written it';

const TEXT_TYPES = new Set(['m.text', 'm.notice', 'm.emote']);
const FILE_TYPES = new Set(['m.file', 'm.image', 'm.video', 'm.audio']);

/** Whether the homeserver says this event was redacted (its content is gone). */
export function isRedacted(event: RoomEvent): boolean {
  return typeof event.unsigned?.redacted_because === 'object';
}

/** The event a redaction removes: `content.redacts` (room v11) or the top-level field. */
export function redactionTarget(event: RoomEvent): string | undefined {
  const target = typeof event.content.redacts === 'string' ? event.content.redacts : event.redacts;
  return typeof target === 'string' && target.startsWith('$') ? target : undefined;
}

/** Which outer event types can be a timeline item (state events never are). */
export function mayBeItem(event: RoomEvent): boolean {
  return event.state_key === undefined && !event.type.startsWith('m.key.verification.');
}

/** A redacted event, as shown: who and when, nothing of what. */
export function redactedView(event: RoomEvent): MessageView {
  return {
    eventId: event.event_id,
    sender: event.sender,
    ts: event.origin_server_ts,
    kind: 'redacted',
    decrypted: false,
    encrypted: event.type === 'm.room.encrypted',
  };
}

/**
 * Classifies a decrypted (or plaintext) event. `outer` is the event as the homeserver sent it.
 * `roomEncrypted`: the room has m.room.encryption, so plaintext in it is flagged.
 */
export function classify(item: Decrypted, outer: RoomEvent, roomEncrypted: boolean): Classified {
  if (outer.type === 'm.room.redaction') {
    const target = redactionTarget(outer);
    return target === undefined
      ? { role: 'none' }
      : { role: 'redaction', eventId: outer.event_id, sender: outer.sender, target };
  }
  if (!('content' in item)) {
    return {
      role: 'item',
      view: {
        eventId: item.eventId,
        sender: item.sender,
        ts: item.ts,
        kind: 'undecryptable',
        decrypted: false,
        encrypted: true,
        reason: item.reason,
      },
    };
  }
  const { content, type } = item;
  if (type.startsWith('m.key.verification.')) return { role: 'none' };
  const relations = relationsOf(content, item.encrypted ? outer.content : undefined);
  const relation = relations.relation;
  if (type === 'm.reaction') {
    if (relation?.relType !== 'm.annotation') return { role: 'none' };
    return {
      role: 'reaction',
      eventId: item.eventId,
      sender: item.sender,
      target: relation.eventId,
      key: relation.key,
    };
  }
  if (type === 'm.room.message' && relation?.relType === 'm.replace') {
    const replacement = record(content['m.new_content']);
    const body = replacement?.body;
    // Without new content it is no edit a client may apply (the spec): it stays an ordinary
    // message, so a relation the homeserver adds to the envelope cannot hide it.
    if (typeof body === 'string') {
      return {
        role: 'edit',
        edit: {
          eventId: item.eventId,
          sender: item.sender,
          ts: item.ts,
          target: relation.eventId,
          body,
          ...formattedOf(replacement ?? {}),
          ...(typeof replacement?.msgtype === 'string' ? { msgtype: replacement.msgtype } : {}),
          encrypted: item.encrypted,
          verification: item.encrypted
            ? item.verification
            : roomEncrypted
              ? 'warning'
              : 'unencrypted',
        },
      };
    }
  }
  return { role: 'item', view: messageView(item, relations, roomEncrypted) };
}

function messageView(
  item: DecryptedMessage,
  relations: Relations,
  roomEncrypted: boolean,
): MessageView {
  const { content, type } = item;
  const msgtype = typeof content.msgtype === 'string' ? content.msgtype : undefined;
  const view: MessageView = {
    eventId: item.eventId,
    sender: item.sender,
    ...(item.senderDevice === undefined ? {} : { senderDevice: item.senderDevice }),
    ts: item.ts,
    kind: 'unsupported',
    type,
    decrypted: item.encrypted,
    encrypted: item.encrypted,
    ...(msgtype === undefined ? {} : { msgtype }),
    ...(relations.replyTo === undefined ? {} : { replyTo: relations.replyTo }),
    ...(relations.relation?.relType === 'm.thread' ? { thread: relations.relation.eventId } : {}),
  };
  if (item.encrypted) {
    view.verification = item.verification;
  } else if (roomEncrypted) {
    view.verification = 'warning';
    view.reason = PLAINTEXT_IN_ENCRYPTED_ROOM;
  } else {
    view.verification = 'unencrypted';
  }
  if (type === 'm.room.message' && msgtype !== undefined && TEXT_TYPES.has(msgtype)) {
    view.kind = 'message';
    if (typeof content.body === 'string') view.body = content.body;
    Object.assign(view, formattedOf(content));
    return view;
  }
  if (type === 'm.room.message' && msgtype !== undefined && FILE_TYPES.has(msgtype)) {
    const attachment = attachmentOf(msgtype as AttachmentView['msgtype'], content);
    view.kind = 'message';
    view.attachment = attachment;
    // With a separate filename, the body is a caption (spec v1.10 media captions).
    if (typeof content.filename === 'string' && typeof content.body === 'string') {
      if (content.body !== content.filename) view.body = content.body;
    }
    return view;
  }
  const fallback = fallbackText(content);
  if (fallback !== undefined) view.body = fallback;
  return view;
}

/** The HTML of a message (or of an edit's new content), when it is in the one format the spec defines. */
function formattedOf(content: Record<string, unknown>): { formattedBody?: string } {
  return content.format === 'org.matrix.custom.html' && typeof content.formatted_body === 'string'
    ? { formattedBody: content.formatted_body }
    : {};
}

/** The attachment an m.room.message carries, if its msgtype is a file's. */
export function attachmentOfContent(content: Record<string, unknown>): AttachmentView | undefined {
  const msgtype = content.msgtype;
  if (typeof msgtype !== 'string' || !FILE_TYPES.has(msgtype)) return undefined;
  return attachmentOf(msgtype as AttachmentView['msgtype'], content);
}

function attachmentOf(
  msgtype: AttachmentView['msgtype'],
  content: Record<string, unknown>,
): AttachmentView {
  const info = record(content.info);
  const name =
    typeof content.filename === 'string'
      ? content.filename
      : typeof content.body === 'string'
        ? content.body
        : 'attachment';
  const size = info?.size;
  return {
    msgtype,
    name: name.slice(0, 255),
    ...(typeof info?.mimetype === 'string' ? { mimetype: info.mimetype.slice(0, 255) } : {}),
    ...(typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 ? { size } : {}),
    encrypted: record(content.file) !== undefined,
  };
}

/** The plain-text fallback of an event we do not render (MSC1767 text, or a body). */
function fallbackText(content: Record<string, unknown>): string | undefined {
  if (typeof content.body === 'string') return content.body;
  const text = content['org.matrix.msc1767.text'] ?? content['m.text'];
  if (typeof text === 'string') return text;
  if (Array.isArray(text)) {
    const first = record(text[0]);
    if (typeof first?.body === 'string') return first.body;
  }
  return undefined;
}

function record(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}
