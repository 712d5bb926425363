import { z } from 'zod';

/**
 * The message-shaped parts of the endpoint contract (contract.ts): timeline items with their
 * relations, sends of every kind, the outbox's failures, and attachments. Kept apart from the
 * rest of the contract so a reader finds "what a UI sees of a message" in one file.
 */

/** How far we trust a message's sender device (from the crypto core's shields). */
export const verificationState = z.enum(['verified', 'unverified', 'warning', 'unencrypted']);

/**
 * What an item is, so a UI never shows a blank bubble:
 * - `message`: text (m.text, m.notice, m.emote) or an attachment (m.file, m.image, ...);
 * - `unsupported`: an event type this endpoint does not render (a poll, a sticker...): `type`
 *   names it, `body` carries the sender's plain-text fallback when there is one;
 * - `redacted`: removed by its sender or a moderator; nothing of it is left;
 * - `undecryptable`: `reason` says why (no room key, withheld, untrusted sender).
 */
export const itemKind = z.enum(['message', 'unsupported', 'redacted', 'undecryptable']);

/** One reaction key on an item, aggregated over the page (or the stream) it was seen in. */
export const reaction = z
  .object({
    key: z.string().max(256),
    count: z.number().int().min(1),
    /** Up to 20 of the users who reacted with this key. */
    senders: z.array(z.string()).max(20),
    /** One of them is us (for a toggle). */
    byUs: z.boolean(),
  })
  .strict();

/** An attachment, as a UI may show it before downloading (no key, no media URL). */
export const attachmentInfo = z
  .object({
    msgtype: z.enum(['m.file', 'm.image', 'm.video', 'm.audio']),
    name: z.string().max(255),
    mimetype: z.string().max(255).optional(),
    size: z.number().int().min(0).optional(),
    /** Whether the file was sent encrypted (the `file` object); plain `url` files are flagged. */
    encrypted: z.boolean(),
  })
  .strict();

export const timelineItem = z
  .object({
    eventId: z.string(),
    sender: z.string(),
    /** Only for decrypted events, as the crypto core authenticated it. */
    senderDevice: z.string().optional(),
    ts: z.number(),
    kind: itemKind,
    /** The (inner, once decrypted) event type: m.room.message, m.sticker, ... */
    type: z.string().max(255).optional(),
    /** Decrypted here by the crypto core. False for plaintext events: see `encrypted`. */
    decrypted: z.boolean(),
    /** The text: for a message its body (the latest edit's, when edited), else a fallback. */
    body: z.string().optional(),
    /**
     * The sender's HTML (`formatted_body`, format org.matrix.custom.html), unsanitised: hostile
     * markup from another user. Show it only through an allow-list sanitiser (the web UI's
     * sanitize.ts); `body` is the plain-text equivalent.
     */
    formattedBody: z.string().optional(),
    msgtype: z.string().optional(),
    /** The event this one replies to (m.relates_to.m.in_reply_to). */
    replyTo: z.string().optional(),
    /** The thread root this item belongs to (m.relates_to rel_type m.thread). */
    thread: z.string().optional(),
    /** The sender replaced the text (m.replace); `body` is the latest edit's. */
    edited: z.boolean().optional(),
    editedAt: z.number().optional(),
    reactions: z.array(reaction).max(50).optional(),
    attachment: attachmentInfo.optional(),
    /**
     * False for an event that arrived in the clear. In an encrypted room that is suspicious
     * (a homeserver or a broken client can inject it): `verification` is then `warning`.
     */
    encrypted: z.boolean().optional(),
    verification: verificationState.optional(),
    /** Why an event could not be decrypted, or why it is flagged. */
    reason: z.string().optional(),
  })
  .strict();
export type TimelineItemWire = z.infer<typeof timelineItem>;

/** Why a send leaves out a member or one of their devices (README "Who gets room keys"). */
export const exclusionReason = z.enum([
  /** The user has no cross-signing identity: MSC4153 excludes such users. */
  'no-cross-signing',
  /** The device is not signed by its owner's self-signing key. */
  'not-cross-signed',
  /** The room's rule is `verified-only`, and we did not verify this device. */
  'not-verified',
  /** The homeserver lists no device for this user. */
  'no-devices',
  /**
   * The user's server did not answer when our homeserver asked it for their devices (over
   * federation), so no device of theirs is known and none gets the key until it answers.
   */
  'device-list-unavailable',
]);
export const exclusion = z
  .object({
    userId: z.string(),
    /** Absent when the whole user is left out. */
    deviceId: z.string().optional(),
    reason: exclusionReason,
  })
  .strict();
export type ExclusionWire = z.infer<typeof exclusion>;
export const MAX_EXCLUSIONS_LISTED = 100;

/** What a UI asked to send, as the outbox keeps it (shown back in failed sends). */
export const sendKind = z.enum(['text', 'edit', 'reaction', 'redaction', 'attachment']);

export const failedSend = z
  .object({
    txnId: z.string(),
    roomId: z.string(),
    kind: sendKind,
    /** The first 200 characters of the text (or the file's name, the reaction's key). */
    preview: z.string().max(200),
    acceptedAt: z.number(),
    failedAt: z.number(),
    /** The homeserver's refusal, as a code (M_FORBIDDEN, M_TOO_LARGE...) and a sentence. */
    code: z.string().max(64),
    reason: z.string().max(300),
  })
  .strict();
export type FailedSendWire = z.infer<typeof failedSend>;

/**
 * The clear event (type, content and room id, as JSON) may be at most this many bytes: Megolm
 * base64-encodes the ciphertext (x4/3) and the homeserver adds its envelope (signatures, hashes,
 * auth events) under a 65,536-byte limit for the whole event. 40,000 leaves ~9 KB of margin.
 */
export const MAX_CLEAR_EVENT_BYTES = 40_000;

/** Attachments: at most 8 MiB (or the homeserver's smaller upload limit), in 256 KiB chunks. */
export const MAX_ATTACHMENT_BYTES = 8 * 1024 * 1024;
export const ATTACHMENT_CHUNK_BYTES = 256 * 1024;
/** A transfer handle (upload or download): random, per client. */
export const transferId = z
  .string()
  .regex(/^[A-Za-z0-9_-]{22,64}$/, 'expected a transfer id from the start of the transfer');
/** A MIME type: type/subtype, printable, no parameters. */
export const contentType = z
  .string()
  .max(127)
  .regex(
    /^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$/,
    'expected a media type such as "image/png" or "application/pdf" (no parameters)',
  );
/** A file name as shown to peers: no path separators, no control characters. */
export const fileName = z
  .string()
  .min(1)
  .max(255)
  // eslint-disable-next-line no-control-regex -- control characters are what is refused
  .regex(/^[^/\\\u0000-\u001f\u007f]+$/, 'expected a file name without / \\ or control characters');
