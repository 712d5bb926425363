import type { TimelineItemWire } from '../contract.ts';
import { type TimelineItem, isDecrypted } from '../device.ts';

/** Longest undecryptable-reason text passed to a UI (the crypto core's messages are short). */
const MAX_REASON = 500;

/** A timeline item as the local API shows it: text and trust, never keys or raw events. */
export function timelineItemWire(item: TimelineItem): TimelineItemWire {
  if (!isDecrypted(item)) {
    return {
      eventId: item.eventId,
      sender: item.sender,
      ts: item.ts,
      decrypted: false,
      reason: item.reason.slice(0, MAX_REASON),
    };
  }
  const { content } = item;
  const relates = content['m.relates_to'];
  const inReplyTo =
    typeof relates === 'object' && relates !== null && 'm.in_reply_to' in relates
      ? (relates as { 'm.in_reply_to'?: { event_id?: unknown } })['m.in_reply_to']?.event_id
      : undefined;
  return {
    eventId: item.eventId,
    sender: item.sender,
    ...(item.senderDevice === undefined ? {} : { senderDevice: item.senderDevice }),
    ts: item.ts,
    decrypted: true,
    ...(typeof content.body === 'string' ? { body: content.body } : {}),
    ...(typeof content.msgtype === 'string' ? { msgtype: content.msgtype } : {}),
    ...(typeof inReplyTo === 'string' ? { replyTo: inReplyTo } : {}),
    encrypted: item.encrypted,
    verification: item.verification,
  };
}
