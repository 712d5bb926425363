import { describe, expect, it } from 'vitest';
import type { DecryptedMessage } from '../../endpoint/crypto/engine.ts';
import type { RoomEvent } from '../../endpoint/matrix/api.ts';
import {
  type Classified,
  type EditView,
  type MessageView,
  aggregate,
  attachmentOfContent,
  classify,
  clearEventBytes,
  contentOf,
  outgoingOfEntry,
  tooLarge,
} from '../../endpoint/messages/index.ts';
import { MalformedEntryError } from '../../endpoint/messages/outgoing.ts';

// The timeline a user reads: whose text an item shows, what reactions it has, what is gone.
// And what we send: spec-shaped, so our own classifier (and stock clients) read it as meant.

const ALICE = '@alice:example';
const BOB = '@bob:example';

const msg = (eventId: string, o: Partial<MessageView> = {}): Classified => ({
  role: 'item',
  view: {
    eventId,
    sender: ALICE,
    ts: 1,
    kind: 'message',
    decrypted: true,
    encrypted: true,
    body: 'original',
    verification: 'verified',
    ...o,
  },
});
const editView = (
  eventId: string,
  target: string,
  body: string,
  ts: number,
  sender = ALICE,
): EditView => ({
  eventId,
  sender,
  ts,
  target,
  body,
  encrypted: true,
  verification: 'verified',
});
const edit = (...a: Parameters<typeof editView>): Classified => ({
  role: 'edit',
  edit: editView(...a),
});
const react = (eventId: string, target: string, key: string, sender: string): Classified => ({
  role: 'reaction',
  eventId,
  sender,
  target,
  key,
});
const redact = (target: string): Classified => ({
  role: 'redaction',
  eventId: `$redacts-${target}`,
  sender: '@mod:example',
  target,
});
/** A decrypted (or, with encrypted false, plaintext) event, classified as the device does. */
function classified(eventId: string, content: Record<string, unknown>, encrypted = true, ts = 1) {
  const m: DecryptedMessage = {
    ...{ eventId, roomId: '!r:example', sender: ALICE, senderDevice: encrypted ? 'D' : undefined },
    ...{ ts, type: 'm.room.message', content, encrypted },
    ...{ verification: encrypted ? 'verified' : 'unencrypted', verificationMessage: undefined },
  };
  const outer: RoomEvent = {
    ...{ type: encrypted ? 'm.room.encrypted' : 'm.room.message', event_id: eventId },
    ...{ sender: ALICE, origin_server_ts: ts, content: encrypted ? {} : content },
  };
  return classify(m, outer, true);
}
const agg = (events: Classified[], bundled?: Map<string, EditView>) =>
  aggregate(events, { self: BOB, ...(bundled === undefined ? {} : { bundled }) });
const only = (events: Classified[], bundled?: Map<string, EditView>): MessageView => {
  const items = agg(events, bundled);
  expect(items).toHaveLength(1);
  return items[0] as MessageView;
};

describe('aggregate: edits', () => {
  it('the latest edit by the item’s own sender wins, by ts, whatever the page order', () => {
    const events = [edit('$e3', '$m', 'two', 20), msg('$m'), edit('$e1', '$m', 'one', 10)];
    events.push(edit('$e2', '$m', 'three', 30));
    expect(only(events)).toMatchObject({ body: 'three', edited: true, editedAt: 30 });
    expect(only(events.reverse()).body).toBe('three');
  });

  it('ties on ts are broken by event id, independently of order', () => {
    const a = edit('$aaa', '$m', 'from a', 5);
    const b = edit('$bbb', '$m', 'from b', 5);
    expect(only([msg('$m'), a, b]).body).toBe('from b');
    expect(only([b, a, msg('$m')]).body).toBe('from b');
  });

  it('an “edit” by someone else is ignored, even when it is the newest', () => {
    const v = only([
      msg('$m'),
      edit('$mine', '$m', 'mine', 2),
      edit('$x', '$m', 'forged', 99, BOB),
    ]);
    expect(v.body).toBe('mine');
    const untouched = only([msg('$m'), edit('$x', '$m', 'forged', 99, BOB)]);
    expect(untouched.body).toBe('original');
    expect(untouched.edited).toBeUndefined();
  });

  it('a redacted edit is ignored: the previous text (or the original) shows again', () => {
    const events = [msg('$m'), edit('$e1', '$m', 'first', 2), edit('$e2', '$m', 'regret', 3)];
    expect(only([...events, redact('$e2')]).body).toBe('first');
    const v = only([msg('$m'), edit('$e1', '$m', 'regret', 2), redact('$e1')]);
    expect(v.body).toBe('original');
    expect(v.edited).toBeUndefined();
  });

  it('an edit gives no text to what is not a message (undecryptable, unsupported)', () => {
    for (const kind of ['undecryptable', 'unsupported'] as const) {
      const v = only([msg('$u', { kind, body: 'as received' }), edit('$e', '$u', 'injected', 2)]);
      expect(v.body).toBe('as received');
      expect(v.edited).toBeUndefined();
    }
  });

  it('a bundled edit (newer than the page) applies; a bundled edit by another user does not', () => {
    const bundled = new Map([['$m', editView('$b', '$m', 'bundled', 50)]]);
    expect(only([msg('$m'), edit('$e', '$m', 'on page', 10)], bundled)).toMatchObject({
      body: 'bundled',
      editedAt: 50,
    });
    const forged = new Map([['$m', editView('$b', '$m', 'forged', 50, BOB)]]);
    expect(only([msg('$m')], forged).body).toBe('original');
  });

  // FIXME(endpoint): a plaintext m.replace, which the homeserver can write with any sender,
  // replaces the text of an encrypted, verified message that keeps its 'verified' shield:
  // EditView carries no encryption status. The spec: "If the original event was encrypted,
  // the replacement should be too." Remove `.fails` once fixed.
  const original = () => classified('$m', { msgtype: 'm.text', body: 'wire 100 to account A' });
  const forged = () =>
    classified(
      '$f',
      {
        msgtype: 'm.text',
        body: '* wire 100 to account B',
        'm.new_content': { msgtype: 'm.text', body: 'wire 100 to account B' },
        'm.relates_to': { rel_type: 'm.replace', event_id: '$m' },
      },
      false,
      2,
    );

  it('a plaintext edit on the page does not replace encrypted text', () => {
    const v = only([original(), forged()]);
    expect(v.verification).toBe('verified');
    expect(v.body).toBe('wire 100 to account A');
  });

  it('a plaintext edit bundled by the homeserver does not replace encrypted text', () => {
    const f = forged();
    const bundled = new Map(f.role === 'edit' ? [['$m', f.edit]] : []);
    const v = only([original()], bundled);
    expect(v.body).toBe('wire 100 to account A');
  });
});

describe('aggregate: reactions, redactions, items', () => {
  it('reactions are counted per key, one per sender; redacted ones are not counted', () => {
    const v = only([
      msg('$m'),
      react('$r1', '$m', '👍', BOB),
      react('$r2', '$m', '👍', BOB),
      react('$r3', '$m', '👍', '@carol:example'),
      react('$r4', '$m', '❤️', BOB),
      react('$r5', '$m', '🎉', '@carol:example'),
      react('$r6', '$other', '👍', '@dave:example'),
      redact('$r5'),
    ]);
    expect(v.reactions).toEqual([
      // The page is read as bob (agg's `self`): his own reactions are marked.
      { key: '👍', count: 2, senders: [BOB, '@carol:example'], byUs: true },
      { key: '❤️', count: 1, senders: [BOB], byUs: true },
    ]);
    expect(only([msg('$m'), react('$r', '$m', 'x', BOB), redact('$r')]).reactions).toBeUndefined();
  });

  it('an item has at most 50 reaction keys', () => {
    const reactions = Array.from({ length: 60 }, (_, i) => react(`$r${i}`, '$m', `k${i}`, BOB));
    expect(only([msg('$m'), ...reactions]).reactions).toHaveLength(50);
  });

  it('a redacted item loses its text, attachment, edits and reactions', () => {
    const attachment = { msgtype: 'm.file' as const, name: 'secret.pdf', encrypted: true };
    const events = [msg('$m', { attachment, replyTo: '$q', thread: '$t' })];
    events.push(edit('$e', '$m', 'edited', 2), react('$r', '$m', '👍', BOB), redact('$m'));
    expect(only(events)).toEqual({
      eventId: '$m',
      sender: ALICE,
      ts: 1,
      kind: 'redacted',
      decrypted: false,
      encrypted: true,
    });
  });

  it('edits, reactions and redactions are not items; the items keep their order', () => {
    const items = agg([
      msg('$c', { ts: 3 }),
      edit('$e', '$a', 'x', 9),
      msg('$a', { ts: 1 }),
      react('$r', '$a', '👍', BOB),
      redact('$gone'),
      msg('$b', { ts: 2 }),
    ]);
    expect(items.map((i) => i.eventId)).toEqual(['$c', '$a', '$b']);
  });
});

describe('outgoing content', () => {
  it('text, replies and threads have the spec’s shapes, and read back as meant', () => {
    expect(contentOf({ kind: 'text', body: 'hi' })).toEqual({
      type: 'm.room.message',
      content: { msgtype: 'm.text', body: 'hi' },
    });
    expect(contentOf({ kind: 'text', body: 'r', replyTo: '$q' }).content['m.relates_to']).toEqual({
      'm.in_reply_to': { event_id: '$q' },
    });
    const inThread = contentOf({ kind: 'text', body: 't', thread: '$root' }).content;
    expect(inThread['m.relates_to']).toEqual({
      rel_type: 'm.thread',
      event_id: '$root',
      is_falling_back: true,
      'm.in_reply_to': { event_id: '$root' },
    });
    const answer = contentOf({ kind: 'text', body: 'a', thread: '$root', replyTo: '$q' }).content;
    expect(answer['m.relates_to']).toEqual({
      rel_type: 'm.thread',
      event_id: '$root',
      is_falling_back: false,
      'm.in_reply_to': { event_id: '$q' },
    });
    const back = (content: Record<string, unknown>) => classified('$x', content);
    const view = (content: Record<string, unknown>) => {
      const c = back(content);
      if (c.role !== 'item') throw new Error(c.role);
      return c.view;
    };
    expect(view(inThread).thread).toBe('$root');
    expect(view(inThread).replyTo).toBeUndefined();
    expect(view(answer)).toMatchObject({ thread: '$root', replyTo: '$q' });
    const e = contentOf({ kind: 'edit', body: 'fixed', target: '$m' });
    expect(e).toEqual({
      type: 'm.room.message',
      content: {
        msgtype: 'm.text',
        body: '* fixed',
        'm.new_content': { msgtype: 'm.text', body: 'fixed' },
        'm.relates_to': { rel_type: 'm.replace', event_id: '$m' },
      },
    });
    expect(back(e.content)).toMatchObject({ role: 'edit', edit: { target: '$m', body: 'fixed' } });
    expect(contentOf({ kind: 'reaction', target: '$m', key: '👍' })).toEqual({
      type: 'm.reaction',
      content: { 'm.relates_to': { rel_type: 'm.annotation', event_id: '$m', key: '👍' } },
    });
  });

  it('an attachment carries the encrypted `file` and no plain url; a caption is the body', () => {
    const file = { url: 'mxc://example/c', key: { k: 'secret' }, iv: 'iv', hashes: {}, v: 'v2' };
    const attachment = {
      msgtype: 'm.image' as const,
      name: 'cat.png',
      mimetype: 'image/png',
      size: 9,
      file,
    };
    const plain = contentOf({ kind: 'attachment', attachment }).content;
    expect(plain).toEqual({
      msgtype: 'm.image',
      body: 'cat.png',
      info: { mimetype: 'image/png', size: 9 },
      file,
    });
    const captioned = contentOf({ kind: 'attachment', attachment, caption: 'my cat' }).content;
    expect(captioned).toMatchObject({ body: 'my cat', filename: 'cat.png' });
    expect(captioned).not.toHaveProperty('url');
    expect(attachmentOfContent(captioned)).toEqual({
      msgtype: 'm.image',
      name: 'cat.png',
      mimetype: 'image/png',
      size: 9,
      encrypted: true,
    });
  });

  it('the size limit is in UTF-8 bytes of the clear event, not characters', () => {
    const cjk = (n: number) => ({ kind: 'text' as const, body: '字'.repeat(n) });
    const big = tooLarge('!r:example', cjk(30_000));
    expect(big).toBeGreaterThan(40_000);
    expect(big).toBe(
      clearEventBytes('!r:example', 'm.room.message', contentOf(cjk(30_000)).content),
    );
    expect(tooLarge('!r:example', cjk(13_000))).toBeUndefined();
    expect(tooLarge('!r:example', { kind: 'text', body: 'a'.repeat(30_000) })).toBeUndefined();
    // An edit carries its text twice (the fallback and m.new_content).
    expect(
      tooLarge('!r:example', { kind: 'edit', body: '字'.repeat(13_000), target: '$m' }),
    ).toBeGreaterThan(40_000);
  });

  it('a queued entry missing what its kind needs is refused for good, never sent wrong', () => {
    for (const entry of [
      { kind: 'edit' as const, body: 'x' },
      { kind: 'reaction' as const, body: '👍' },
      { kind: 'redaction' as const, body: '' },
      { kind: 'attachment' as const, body: 'caption' },
    ]) {
      const error = (() => {
        try {
          outgoingOfEntry(entry);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(error, entry.kind).toBeInstanceOf(MalformedEntryError);
      expect(error).toMatchObject({ status: 400, retryable: false, errcode: 'MALFORMED_ENTRY' });
    }
    expect(outgoingOfEntry({ kind: 'reaction', body: '👍', target: '$m' })).toEqual({
      kind: 'reaction',
      target: '$m',
      key: '👍',
    });
    expect(outgoingOfEntry({ kind: 'redaction', body: '', target: '$m' })).toEqual({
      kind: 'redaction',
      target: '$m',
    });
  });
});
