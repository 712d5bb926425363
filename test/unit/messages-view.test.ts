import { describe, expect, it } from 'vitest';
import type { DecryptedMessage, UndecryptableMessage } from '../../endpoint/crypto/engine.ts';
import type { RoomEvent } from '../../endpoint/matrix/api.ts';
import {
  PLAINTEXT_IN_ENCRYPTED_ROOM,
  attachmentOfContent,
  classify,
  redactedView,
  redactionTarget,
  relationsOf,
} from '../../endpoint/messages/index.ts';

// What the endpoint makes of a room event decides what a UI shows: a wrong shield, a reply
// that is not one, or someone else's text shown as an edit are what a user would act on.

const ALICE = '@alice:example';

/** An event the crypto core decrypted (encrypted) or passed through (plaintext). */
function item(
  content: Record<string, unknown>,
  o: { type?: string; encrypted?: boolean; eventId?: string } = {},
): DecryptedMessage {
  const encrypted = o.encrypted ?? true;
  return {
    eventId: o.eventId ?? '$item',
    roomId: '!room:example',
    sender: ALICE,
    senderDevice: encrypted ? 'ALICEDEV' : undefined,
    ts: 1000,
    type: o.type ?? 'm.room.message',
    content,
    encrypted,
    verification: encrypted ? 'verified' : 'unencrypted',
    verificationMessage: undefined,
  };
}

/** The event as the homeserver sent it: the plaintext itself, or the encrypted envelope. */
function outerOf(i: DecryptedMessage, envelope: Record<string, unknown> = {}): RoomEvent {
  return {
    type: i.encrypted ? 'm.room.encrypted' : i.type,
    event_id: i.eventId,
    sender: i.sender,
    origin_server_ts: i.ts,
    content: i.encrypted ? { algorithm: 'm.megolm.v1.aes-sha2', ...envelope } : i.content,
  };
}

function classified(i: DecryptedMessage, roomEncrypted = true, envelope = {}) {
  return classify(i, outerOf(i, envelope), roomEncrypted);
}

function view(i: DecryptedMessage, roomEncrypted = true, envelope = {}) {
  const c = classified(i, roomEncrypted, envelope);
  if (c.role !== 'item') throw new Error(`expected an item, got ${c.role}`);
  return c.view;
}

const NONE = { role: 'none' };
const text = (body: string, extra: Record<string, unknown> = {}) => ({
  msgtype: 'm.text',
  body,
  ...extra,
});

describe('classify: the shield', () => {
  it('an encrypted m.text is a message with its body and the core’s verification', () => {
    expect(view(item(text('hi')))).toMatchObject({
      kind: 'message',
      body: 'hi',
      decrypted: true,
      encrypted: true,
      verification: 'verified',
      senderDevice: 'ALICEDEV',
    });
  });

  it('plaintext in an encrypted room is flagged as a warning, never as encrypted', () => {
    const v = view(item(text('trust me'), { encrypted: false }), true);
    expect(v).toMatchObject({ kind: 'message', body: 'trust me', verification: 'warning' });
    expect(v.decrypted).toBe(false);
    expect(v.encrypted).toBe(false);
    expect(v.reason).toBe(PLAINTEXT_IN_ENCRYPTED_ROOM);
  });

  it('plaintext in an unencrypted room is marked unencrypted, without a warning', () => {
    const v = view(item(text('hello'), { encrypted: false }), false);
    expect(v.verification).toBe('unencrypted');
    expect(v.encrypted).toBe(false);
    expect(v.reason).toBeUndefined();
  });

  it('an undecryptable event is an item of its own kind with the reason, and no text', () => {
    const u: UndecryptableMessage = {
      eventId: '$u',
      roomId: '!room:example',
      sender: ALICE,
      ts: 5,
      reason: 'missing room key',
    };
    // The envelope's cleartext is the homeserver's: none of it shows.
    const envelope = { body: 'homeserver text', 'm.relates_to': { 'm.in_reply_to': '$x' } };
    const outer = { ...outerOf(item({})), event_id: '$u', content: envelope };
    expect(classify(u, outer, true)).toEqual({
      role: 'item',
      view: {
        eventId: '$u',
        sender: ALICE,
        ts: 5,
        kind: 'undecryptable',
        decrypted: false,
        encrypted: true,
        reason: 'missing room key',
      },
    });
  });
});

describe('classify: edits, reactions, redactions', () => {
  it('an m.replace with m.new_content is an edit of its target; without it, a plain message', () => {
    const edit = item({
      ...text('* fixed'),
      'm.new_content': { msgtype: 'm.notice', body: 'fixed' },
      'm.relates_to': { rel_type: 'm.replace', event_id: '$orig' },
    });
    expect(classified(edit)).toEqual({
      role: 'edit',
      edit: {
        eventId: '$item',
        sender: ALICE,
        ts: 1000,
        target: '$orig',
        body: 'fixed',
        msgtype: 'm.notice',
        encrypted: true,
        verification: 'verified',
      },
    });
    // Not an edit a client may apply: shown as the message it is, so that a relation the
    // homeserver adds to an envelope cannot hide it.
    const relatesTo = { rel_type: 'm.replace', event_id: '$orig' };
    const plain = classified(item({ ...text('* x'), 'm.relates_to': relatesTo }));
    expect(plain).toMatchObject({ role: 'item', view: { kind: 'message', body: '* x' } });
    const badBody = { ...text('* x'), 'm.new_content': { body: 42 }, 'm.relates_to': relatesTo };
    expect(classified(item(badBody))).toMatchObject({ role: 'item', view: { body: '* x' } });
  });

  it('an m.reaction annotation is a reaction; without a key, or with an oversized one, nothing', () => {
    const reaction = (relates: unknown) =>
      classified(item({ 'm.relates_to': relates }, { type: 'm.reaction' }));
    expect(reaction({ rel_type: 'm.annotation', event_id: '$t', key: '👍' })).toEqual({
      role: 'reaction',
      eventId: '$item',
      sender: ALICE,
      target: '$t',
      key: '👍',
    });
    const annotation = { rel_type: 'm.annotation', event_id: '$t' };
    for (const key of [undefined, '', 'k'.repeat(300), 7]) {
      expect(reaction({ ...annotation, key }), String(key)).toEqual(NONE);
    }
    expect(reaction({ ...annotation, key: 'k'.repeat(256) })).toMatchObject({ role: 'reaction' });
    expect(reaction({ rel_type: 'm.reference', event_id: '$t', key: '👍' })).toEqual(NONE);
    expect(reaction(undefined)).toEqual(NONE);
  });

  it('a redaction names its target from content.redacts (v11) or the top-level field', () => {
    const redaction = (content: Record<string, unknown>, redacts?: string): RoomEvent => ({
      type: 'm.room.redaction',
      event_id: '$r',
      sender: '@mod:example',
      origin_server_ts: 9,
      content,
      ...(redacts === undefined ? {} : { redacts }),
    });
    const plain = (e: RoomEvent) =>
      item(e.content, { type: e.type, encrypted: false, eventId: '$r' });
    const v11 = redaction({ redacts: '$gone' });
    const old = redaction({}, '$old');
    expect(classify(plain(v11), v11, true)).toEqual({
      role: 'redaction',
      eventId: '$r',
      sender: '@mod:example',
      target: '$gone',
    });
    expect(classify(plain(old), old, true)).toMatchObject({ role: 'redaction', target: '$old' });
    expect(redactionTarget(redaction({ redacts: '$v11' }, '$legacy'))).toBe('$v11');
    expect(redactionTarget(redaction({ redacts: 'no-dollar' }))).toBeUndefined();
    const none = redaction({});
    expect(classify(plain(none), none, true)).toEqual(NONE);
  });

  it('in-room verification steps are not items', () => {
    for (const type of ['m.key.verification.start', 'm.key.verification.done']) {
      expect(classified(item({ transaction_id: 't' }, { type }))).toEqual(NONE);
    }
  });
});

describe('classify: content shown', () => {
  it('a poll start is unsupported, shown by its MSC1767 text fallback', () => {
    const type = 'org.matrix.msc3381.poll.start';
    const poll = item({ 'org.matrix.msc1767.text': 'Lunch? 1. Pizza 2. Sushi' }, { type });
    expect(view(poll)).toMatchObject({
      kind: 'unsupported',
      type,
      body: 'Lunch? 1. Pizza 2. Sushi',
    });
    const extensible = item(
      { 'm.text': [{ body: 'first representation' }] },
      { type: 'm.message' },
    );
    expect(view(extensible)).toMatchObject({ kind: 'unsupported', body: 'first representation' });
  });

  it('a thread’s m.in_reply_to fallback is not a reply unless is_falling_back is false', () => {
    const thread = { rel_type: 'm.thread', event_id: '$root', 'm.in_reply_to': { event_id: '$l' } };
    const threaded = (extra: Record<string, unknown>) =>
      view(item(text('in thread', { 'm.relates_to': { ...thread, ...extra } })));
    const fallback = threaded({ is_falling_back: true });
    expect(fallback.thread).toBe('$root');
    expect(fallback.replyTo).toBeUndefined();
    expect(threaded({}).replyTo).toBeUndefined();
    expect(threaded({ is_falling_back: 'false' }).replyTo).toBeUndefined();
    expect(threaded({ is_falling_back: false })).toMatchObject({ thread: '$root', replyTo: '$l' });
    const reply = view(
      item(text('re', { 'm.relates_to': { 'm.in_reply_to': { event_id: '$q' } } })),
    );
    expect(reply.replyTo).toBe('$q');
    expect(reply.thread).toBeUndefined();
  });

  it('malformed relation fields are ignored rather than trusted', () => {
    const malformed = [
      { rel_type: 'm.thread', event_id: 42 },
      { rel_type: 'm.thread', event_id: ['$root'] },
      { rel_type: 'm.thread', event_id: 'root' },
      { rel_type: 'm.thread', event_id: `$${'a'.repeat(300)}` },
      { rel_type: 'm.thread', event_id: '$with space' },
      { rel_type: 7, event_id: '$root' },
      { 'm.in_reply_to': { event_id: 'noDollar' } },
      { 'm.in_reply_to': [{ event_id: '$q' }] },
      { 'm.in_reply_to': '$q' },
    ];
    for (const relates of malformed) {
      expect(relationsOf({ 'm.relates_to': relates }), JSON.stringify(relates)).toEqual({});
    }
    expect(relationsOf({ 'm.relates_to': [{ rel_type: 'm.thread', event_id: '$r' }] })).toEqual({});
    expect(relationsOf({ 'm.relates_to': 'm.thread' })).toEqual({});
    const v = view(item(text('x', { 'm.relates_to': { rel_type: 'm.thread', event_id: 1 } })));
    expect(v.thread).toBeUndefined();
  });

  it('the authenticated relation wins over the homeserver’s envelope; the envelope fills in', () => {
    const inner = text('in thread', {
      'm.relates_to': { rel_type: 'm.thread', event_id: '$root' },
    });
    const envelope = { 'm.relates_to': { rel_type: 'm.replace', event_id: '$victim' } };
    expect(view(item(inner), true, envelope)).toMatchObject({ kind: 'message', thread: '$root' });
    expect(relationsOf({ 'm.relates_to': {} }, envelope)).toEqual({});
    // Senders may keep the relation only in the clear: a reaction's is read from there.
    const annotation = { 'm.relates_to': { rel_type: 'm.annotation', event_id: '$t', key: '🎉' } };
    const reaction = classified(item({}, { type: 'm.reaction' }), true, annotation);
    expect(reaction).toMatchObject({ role: 'reaction', target: '$t', key: '🎉' });
  });
});

describe('attachments', () => {
  const file = { url: 'mxc://example/f', key: {}, iv: 'iv', hashes: {}, v: 'v2' };

  it('a file’s name comes from filename, else body; the body is a caption only when it differs', () => {
    const captioned = view(
      item({ msgtype: 'm.file', body: 'see attached', filename: 'report.pdf', file }),
    );
    expect(captioned).toMatchObject({ kind: 'message', body: 'see attached' });
    expect(captioned.attachment).toMatchObject({
      msgtype: 'm.file',
      name: 'report.pdf',
      encrypted: true,
    });
    const same = view(item({ msgtype: 'm.image', body: 'cat.png', filename: 'cat.png', file }));
    expect(same.body).toBeUndefined();
    const legacy = view(item({ msgtype: 'm.image', body: 'cat.png', file }));
    expect(legacy.attachment?.name).toBe('cat.png');
    expect(legacy.body).toBeUndefined();
    expect(attachmentOfContent({ msgtype: 'm.video' })?.name).toBe('attachment');
    expect(attachmentOfContent({ msgtype: 'm.file', body: 'n'.repeat(1000) })?.name).toHaveLength(
      255,
    );
    expect(attachmentOfContent(text('not a file'))).toBeUndefined();
  });

  it('a size is kept only when it is a safe non-negative integer', () => {
    const sizeOf = (size: unknown) =>
      attachmentOfContent({ msgtype: 'm.file', body: 'f', info: { size, mimetype: 'text/plain' } })
        ?.size;
    expect(sizeOf(0)).toBe(0);
    expect(sizeOf(1234)).toBe(1234);
    for (const bad of [-1, 1.5, '10', 2 ** 53, Number.NaN, Infinity, null]) {
      expect(sizeOf(bad), String(bad)).toBeUndefined();
    }
  });

  it('an attachment is encrypted only when it carries a `file` object', () => {
    const enc = (extra: Record<string, unknown>) =>
      attachmentOfContent({ msgtype: 'm.image', body: 'p.png', ...extra })?.encrypted;
    expect(enc({ file })).toBe(true);
    expect(enc({ url: 'mxc://example/plain' })).toBe(false);
    expect(enc({ file: 'mxc://example/f' })).toBe(false);
    expect(enc({ file: [file] })).toBe(false);
    expect(enc({ file: null })).toBe(false);
  });
});

describe('redactedView', () => {
  it('keeps who and when, nothing of what', () => {
    const event: RoomEvent = {
      type: 'm.room.encrypted',
      event_id: '$x',
      sender: ALICE,
      origin_server_ts: 3,
      content: { body: 'leftover' },
      unsigned: { redacted_because: {} },
    };
    expect(redactedView(event)).toEqual({
      eventId: '$x',
      sender: ALICE,
      ts: 3,
      kind: 'redacted',
      decrypted: false,
      encrypted: true,
    });
    expect(redactedView({ ...event, type: 'm.room.message' }).encrypted).toBe(false);
  });
});
