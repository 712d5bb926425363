import { MAX_CLEAR_EVENT_BYTES } from '../contract-messages.ts';

/**
 * The events a UI may ask us to send, as the outbox keeps them, and the Matrix content each
 * becomes. Content shapes follow the spec (m.replace with m.new_content, m.annotation,
 * m.thread with its reply fallback, encrypted files), so stock clients show them natively.
 */
export interface OutgoingAttachment {
  msgtype: 'm.file' | 'm.image' | 'm.video' | 'm.audio';
  name: string;
  mimetype: string;
  size: number;
  /** The spec's encrypted-file object (url, key, iv, hashes): sealed in the store only. */
  file: Record<string, unknown>;
}

export type Outgoing =
  | { kind: 'text'; body: string; replyTo?: string; thread?: string }
  | { kind: 'edit'; body: string; target: string }
  | { kind: 'reaction'; target: string; key: string }
  | { kind: 'redaction'; target: string; reason?: string }
  | { kind: 'attachment'; attachment: OutgoingAttachment; caption?: string };

/** The event type and content of an outgoing message (redactions have their own endpoint). */
export function contentOf(message: Exclude<Outgoing, { kind: 'redaction' }>): {
  type: string;
  content: Record<string, unknown>;
} {
  switch (message.kind) {
    case 'text': {
      const content: Record<string, unknown> = { msgtype: 'm.text', body: message.body };
      if (message.thread !== undefined) {
        content['m.relates_to'] = {
          rel_type: 'm.thread',
          event_id: message.thread,
          // Clients without threads show it as a reply: to what it answers, else the root.
          is_falling_back: message.replyTo === undefined,
          'm.in_reply_to': { event_id: message.replyTo ?? message.thread },
        };
      } else if (message.replyTo !== undefined) {
        content['m.relates_to'] = { 'm.in_reply_to': { event_id: message.replyTo } };
      }
      return { type: 'm.room.message', content };
    }
    case 'edit':
      return {
        type: 'm.room.message',
        content: {
          msgtype: 'm.text',
          body: `* ${message.body}`,
          'm.new_content': { msgtype: 'm.text', body: message.body },
          'm.relates_to': { rel_type: 'm.replace', event_id: message.target },
        },
      };
    case 'reaction':
      return {
        type: 'm.reaction',
        content: {
          'm.relates_to': { rel_type: 'm.annotation', event_id: message.target, key: message.key },
        },
      };
    case 'attachment': {
      const { attachment, caption } = message;
      return {
        type: 'm.room.message',
        content: {
          msgtype: attachment.msgtype,
          body: caption ?? attachment.name,
          ...(caption === undefined ? {} : { filename: attachment.name }),
          info: { mimetype: attachment.mimetype, size: attachment.size },
          file: attachment.file,
        },
      };
    }
  }
}

/**
 * The size the crypto core will encrypt: the clear event's JSON as UTF-8 (what MSC and the
 * homeserver's limit are about is the encrypted event; see MAX_CLEAR_EVENT_BYTES).
 */
export function clearEventBytes(roomId: string, type: string, content: object): number {
  return Buffer.byteLength(JSON.stringify({ type, content, room_id: roomId }), 'utf8');
}

/** undefined when it fits; else the size, for the refusal's sentence. */
export function tooLarge(
  roomId: string,
  message: Exclude<Outgoing, { kind: 'redaction' }>,
): number | undefined {
  const { type, content } = contentOf(message);
  const bytes = clearEventBytes(roomId, type, content);
  return bytes > MAX_CLEAR_EVENT_BYTES ? bytes : undefined;
}

/** A short, safe description for lists of failed sends (never the file's key). */
export function previewOf(message: Outgoing): string {
  switch (message.kind) {
    case 'text':
    case 'edit':
      return message.body.slice(0, 200);
    case 'reaction':
      return message.key.slice(0, 200);
    case 'redaction':
      return (message.reason ?? '').slice(0, 200);
    case 'attachment':
      return message.attachment.name.slice(0, 200);
  }
}

/** The fields of an outbox entry that say what to send (endpoint/outbox.ts). */
export interface StoredOutgoing {
  kind: Outgoing['kind'];
  body: string;
  replyTo?: string | undefined;
  target?: string | undefined;
  thread?: string | undefined;
  attachment?: OutgoingAttachment | undefined;
}

/**
 * An outbox entry as the message to send. An entry missing what its kind needs (written by
 * hand, or damaged) is refused for good rather than sent wrong.
 */
export function outgoingOfEntry(entry: StoredOutgoing): Outgoing {
  const need = (value: string | undefined): string => {
    if (value === undefined) throw new MalformedEntryError(entry.kind);
    return value;
  };
  switch (entry.kind) {
    case 'text':
      return {
        kind: 'text',
        body: entry.body,
        ...(entry.replyTo === undefined ? {} : { replyTo: entry.replyTo }),
        ...(entry.thread === undefined ? {} : { thread: entry.thread }),
      };
    case 'edit':
      return { kind: 'edit', body: entry.body, target: need(entry.target) };
    case 'reaction':
      return { kind: 'reaction', target: need(entry.target), key: entry.body };
    case 'redaction':
      return {
        kind: 'redaction',
        target: need(entry.target),
        ...(entry.body === '' ? {} : { reason: entry.body }),
      };
    case 'attachment':
      if (entry.attachment === undefined) throw new MalformedEntryError(entry.kind);
      return {
        kind: 'attachment',
        attachment: entry.attachment,
        ...(entry.body === '' ? {} : { caption: entry.body }),
      };
  }
}

/** Permanent (the outbox sets the entry aside): 4xx-like and not retryable. */
export class MalformedEntryError extends Error {
  readonly status = 400;
  readonly errcode = 'MALFORMED_ENTRY';
  readonly retryable = false;
  constructor(kind: string) {
    super(`a queued ${kind} lacks what it needs to be sent`);
    this.name = 'MalformedEntryError';
  }
}
