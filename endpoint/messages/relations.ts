/**
 * What an event's `m.relates_to` says, read defensively: the content is a peer's (or, outside
 * the ciphertext, the homeserver's) choice, so every field is checked for its type and bounded.
 */
export type Relation =
  | { relType: 'm.replace'; eventId: string }
  | { relType: 'm.annotation'; eventId: string; key: string }
  | { relType: 'm.thread'; eventId: string }
  | { relType: 'other'; eventId: string };

export interface Relations {
  relation?: Relation;
  /** A reply (m.in_reply_to) that is not a thread's fallback. */
  replyTo?: string;
}

const MAX_KEY_CHARS = 256;

function record(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

function eventIdOf(value: unknown): string | undefined {
  return typeof value === 'string' && /^\$[\x21-\x7e]{1,254}$/.test(value) ? value : undefined;
}

/**
 * The relations of a decrypted event. `outer` is the encrypted event's own content: senders
 * copy `m.relates_to` there so servers can aggregate, and some put it only there. The
 * authenticated (inner) copy wins when both exist.
 */
export function relationsOf(
  content: Record<string, unknown>,
  outer?: Record<string, unknown>,
): Relations {
  const relates = record(content['m.relates_to']) ?? record(outer?.['m.relates_to']);
  if (relates === undefined) return {};
  const out: Relations = {};
  const reply = eventIdOf(record(relates['m.in_reply_to'])?.event_id);
  const relType = relates.rel_type;
  const eventId = eventIdOf(relates.event_id);
  if (typeof relType === 'string' && eventId !== undefined) {
    if (relType === 'm.replace') out.relation = { relType, eventId };
    else if (relType === 'm.thread') out.relation = { relType, eventId };
    else if (relType === 'm.annotation') {
      const key = relates.key;
      if (typeof key === 'string' && key.length > 0 && key.length <= MAX_KEY_CHARS) {
        out.relation = { relType, eventId, key };
      }
    } else out.relation = { relType: 'other', eventId };
  }
  // In a thread, m.in_reply_to is a fallback for clients without threads unless the sender
  // says it is not (is_falling_back false): only a real reply is shown as one.
  const fallback = out.relation?.relType === 'm.thread' && relates.is_falling_back !== false;
  if (reply !== undefined && !fallback) out.replyTo = reply;
  return out;
}
