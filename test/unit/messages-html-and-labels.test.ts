import { describe, expect, it } from 'vitest';
import type { DecryptedMessage } from '../../endpoint/crypto/engine.ts';
import type { RoomEvent } from '../../endpoint/matrix/api.ts';
import { aggregate, classify } from '../../endpoint/messages/index.ts';
import { MAX_ROOM_NAME, MAX_TOPIC, labelsOf } from '../../endpoint/sync/loop.ts';

// The web UI renders a sender's HTML and a room's name: what reaches it must be exactly what
// the sender chose (never stale markup beside edited text), and bounded.

const ALICE = '@alice:example';

function event(content: Record<string, unknown>, eventId = '$item', ts = 1000): DecryptedMessage {
  return {
    eventId,
    roomId: '!room:example',
    sender: ALICE,
    senderDevice: 'ALICEDEV',
    ts,
    type: 'm.room.message',
    content,
    encrypted: true,
    verification: 'verified',
    verificationMessage: undefined,
  };
}

function outer(i: DecryptedMessage): RoomEvent {
  return {
    type: 'm.room.encrypted',
    event_id: i.eventId,
    sender: i.sender,
    origin_server_ts: i.ts,
    content: { algorithm: 'm.megolm.v1.aes-sha2' },
  };
}

const classified = (i: DecryptedMessage) => classify(i, outer(i), true);

describe('formattedBody', () => {
  it('carries HTML only in the format the spec defines', () => {
    const html = classified(
      event({
        msgtype: 'm.text',
        body: 'hi',
        format: 'org.matrix.custom.html',
        formatted_body: '<b>hi</b>',
      }),
    );
    expect(html).toMatchObject({ role: 'item', view: { body: 'hi', formattedBody: '<b>hi</b>' } });
    const other = classified(
      event({ msgtype: 'm.text', body: 'hi', format: 'text/markdown', formatted_body: '**hi**' }),
    );
    expect(other.role === 'item' && 'formattedBody' in other.view).toBe(false);
    const notString = classified(
      event({ msgtype: 'm.text', body: 'hi', format: 'org.matrix.custom.html', formatted_body: 7 }),
    );
    expect(notString.role === 'item' && 'formattedBody' in notString.view).toBe(false);
  });

  it("an edit's HTML replaces the old, and an edit without HTML removes it", () => {
    const original = classified(
      event({
        msgtype: 'm.text',
        body: 'old',
        format: 'org.matrix.custom.html',
        formatted_body: '<i>old</i>',
      }),
    );
    const edit = (newContent: Record<string, unknown>, id: string, ts: number) =>
      classified(
        event(
          {
            msgtype: 'm.text',
            body: '* new',
            'm.new_content': newContent,
            'm.relates_to': { rel_type: 'm.replace', event_id: '$item' },
          },
          id,
          ts,
        ),
      );
    const withHtml = edit(
      {
        msgtype: 'm.text',
        body: 'new',
        format: 'org.matrix.custom.html',
        formatted_body: '<b>new</b>',
      },
      '$e1',
      2000,
    );
    expect(aggregate([original, withHtml], { self: '@me:example' })[0]).toMatchObject({
      body: 'new',
      formattedBody: '<b>new</b>',
      edited: true,
    });
    const plain = edit({ msgtype: 'm.text', body: 'plain now' }, '$e2', 3000);
    const [shown] = aggregate([original, withHtml, plain], { self: '@me:example' });
    expect(shown?.body).toBe('plain now');
    expect(shown && 'formattedBody' in shown).toBe(false);
  });
});

describe('room labels', () => {
  const state = (type: string, content: Record<string, unknown>, stateKey = '') => ({
    type,
    state_key: stateKey,
    content,
  });

  it('the newest name and topic win; an empty one removes; other state keys are ignored', () => {
    expect(
      labelsOf([
        state('m.room.name', { name: 'First' }),
        state('m.room.topic', { topic: 'About' }),
        state('m.room.name', { name: 'Second' }),
        state('m.room.name', { name: 'Not this' }, 'x'),
      ]),
    ).toEqual({ name: 'Second', topic: 'About' });
    expect(labelsOf([state('m.room.name', { name: '' }), state('m.room.topic', {})])).toEqual({
      name: null,
      topic: null,
    });
    expect(labelsOf([state('m.room.member', { membership: 'join' }, ALICE)])).toEqual({});
  });

  it('cuts over-long names and topics instead of refusing the sync', () => {
    const labels = labelsOf([
      state('m.room.name', { name: 'n'.repeat(10_000) }),
      state('m.room.topic', { topic: 't'.repeat(10_000) }),
    ]);
    expect(labels.name?.length).toBe(MAX_ROOM_NAME);
    expect(labels.topic?.length).toBe(MAX_TOPIC);
  });
});
