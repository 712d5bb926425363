import { EventTimeline, EventType } from 'matrix-js-sdk';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ReceivedMessage, StockPeer, startSynapse } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// The stock peer's richer helpers (edits, reactions, redactions, threads, polls, encrypted
// files, misbehaving sends, power levels), proved peer to peer before our endpoint is judged
// with them: if one of these fails, the fixture is wrong, not the endpoint.
const synapse = useFixture(() => startSynapse());
const peers: StockPeer[] = [];
let alice: StockPeer;
let bob: StockPeer;
let room: string;

afterAll(async () => {
  for (const p of peers) await p.stop();
});

async function peerFor(localpart: string): Promise<StockPeer> {
  const user = await synapse().registerUser(localpart);
  const peer = await StockPeer.start(synapse().baseUrl, user);
  peers.push(peer);
  await peer.bootstrapCrossSigning(user.password);
  return peer;
}

/** What `peer` received from `from` in the shared room, matching `test`. */
function from(
  peer: StockPeer,
  sender: StockPeer,
  test: (m: ReceivedMessage) => boolean,
): Promise<ReceivedMessage> {
  return peer.waitForMessage(room, (m) => m.sender === sender.userId && test(m));
}

beforeAll(async () => {
  [alice, bob] = await Promise.all([peerFor('alice'), peerFor('bob')]);
  room = await alice.createRoom({ invite: [bob.userId], isDirect: true });
  await bob.acceptInvite(room);
  await alice.waitForMember(room, bob.userId);
}, 60_000);

describe('the stock peer, peer to peer, in an encrypted DM', () => {
  it('creates the DM as Element does', () => {
    const state = alice.client.getRoom(room)?.getLiveTimeline().getState(EventTimeline.FORWARDS);
    expect(state?.getStateEvents('m.room.encryption', '')?.getContent()).toMatchObject({
      algorithm: 'm.megolm.v1.aes-sha2',
    });
    expect(alice.client.getAccountData(EventType.Direct)?.getContent()).toMatchObject({
      [bob.userId]: [room],
    });
    const invite = alice.client
      .getRoom(room)
      ?.getLiveTimeline()
      .getEvents()
      .find((e) => e.getType() === 'm.room.member' && e.getStateKey() === bob.userId)
      ?.getContent<{ membership?: string; is_direct?: boolean }>();
    expect(invite).toMatchObject({ membership: 'invite', is_direct: true });
    // trusted_private_chat: the invitee gets the creator's power (in room version 12, Synapse's
    // default, that makes both creators, whose power no power_levels event can lower).
    const dm = alice.client.getRoom(room);
    expect(dm?.getMember(bob.userId)?.powerLevel).toBe(dm?.getMember(alice.userId)?.powerLevel);
  });

  it('an edit arrives with m.new_content and the "* " fallback, and the SDK applies it', async () => {
    const original = await alice.sendText(room, 'teh original');
    await from(bob, alice, (m) => m.eventId === original);
    const edit = await alice.sendEdit(room, original, 'the original');

    const atBob = await from(bob, alice, (m) => m.eventId === edit);
    expect(atBob).toMatchObject({
      type: 'm.room.message',
      encrypted: true,
      body: '* the original',
      content: { 'm.new_content': { msgtype: 'm.text', body: 'the original' } },
      relatesTo: { rel_type: 'm.replace', event_id: original },
      // The relation also travels in the clear, where the server can aggregate it.
      wireRelatesTo: { rel_type: 'm.replace', event_id: original },
      redacted: false,
    });
    // What Element would show for the original: the edited text.
    await expect
      .poll(
        () =>
          bob.client.getRoom(room)?.findEventById(original)?.getContent<{ body?: string }>().body,
      )
      .toBe('the original');
  });

  it('a reaction arrives as an m.annotation, and the SDK sends it in the clear', async () => {
    const target = await alice.sendText(room, 'react to me');
    await from(bob, alice, (m) => m.eventId === target);
    const reaction = await bob.react(room, target, '👍');

    const atAlice = await from(alice, bob, (m) => m.eventId === reaction);
    expect(atAlice).toMatchObject({
      type: 'm.reaction',
      // matrix-js-sdk never encrypts m.reaction, even in an encrypted room.
      encrypted: false,
      relatesTo: { rel_type: 'm.annotation', event_id: target, key: '👍' },
    });
  });

  it('a redaction is recorded with its target, and the target is seen redacted', async () => {
    const doomed = await alice.sendText(room, 'regrettable');
    const kept = await alice.sendText(room, 'fine');
    await from(bob, alice, (m) => m.eventId === kept);
    expect(bob.isRedacted(doomed)).toBe(false);

    const redaction = await alice.redact(room, doomed, 'oops');
    const atBob = await from(bob, alice, (m) => m.eventId === redaction);
    expect(atBob).toMatchObject({
      type: 'm.room.redaction',
      encrypted: false,
      redacts: doomed,
      content: { reason: 'oops' },
    });
    await bob.waitForRedacted(doomed, 10_000);
    expect(bob.client.getRoom(room)?.findEventById(doomed)?.isRedacted()).toBe(true);
    expect(bob.isRedacted(kept)).toBe(false);
    // The record keeps what arrived, flagged, though the SDK has emptied the event itself.
    expect(bob.messages.find((m) => m.eventId === doomed)).toMatchObject({
      body: 'regrettable',
      redacted: true,
    });
  });

  it('thread replies carry m.thread with the reply fallback to the latest in the thread', async () => {
    const root = await alice.sendText(room, 'thread root');
    await from(bob, alice, (m) => m.eventId === root);
    const first = await bob.sendThreadReply(room, root, 'first in thread');
    const atAlice = await from(alice, bob, (m) => m.eventId === first);
    expect(atAlice).toMatchObject({
      encrypted: true,
      body: 'first in thread',
      relatesTo: {
        rel_type: 'm.thread',
        event_id: root,
        is_falling_back: true,
        'm.in_reply_to': { event_id: root },
      },
    });

    const second = await bob.sendThreadReply(room, root, 'second in thread');
    await expect(from(alice, bob, (m) => m.eventId === second)).resolves.toMatchObject({
      relatesTo: { rel_type: 'm.thread', event_id: root, 'm.in_reply_to': { event_id: first } },
    });
  });

  it('a reply carries m.in_reply_to and mentions the replied-to sender', async () => {
    const asked = await alice.sendText(room, 'a question');
    await from(bob, alice, (m) => m.eventId === asked);
    const reply = await bob.sendReply(room, asked, 'an answer');
    await expect(from(alice, bob, (m) => m.eventId === reply)).resolves.toMatchObject({
      encrypted: true,
      relatesTo: { 'm.in_reply_to': { event_id: asked } },
      content: { 'm.mentions': { user_ids: [alice.userId] } },
    });
  });

  it('a poll arrives encrypted as org.matrix.msc3381.poll.start with its text fallback', async () => {
    const poll = await alice.sendPoll(room, 'Lunch?', ['pizza', 'soup']);
    const atBob = await from(bob, alice, (m) => m.eventId === poll);
    expect(atBob).toMatchObject({
      type: 'org.matrix.msc3381.poll.start',
      encrypted: true,
      content: {
        'org.matrix.msc3381.poll.start': {
          question: { 'org.matrix.msc1767.text': 'Lunch?' },
          kind: 'org.matrix.msc3381.poll.disclosed',
          max_selections: 1,
          answers: [{ 'org.matrix.msc1767.text': 'pizza' }, { 'org.matrix.msc1767.text': 'soup' }],
        },
        'org.matrix.msc1767.text': 'Lunch?\n1. pizza\n2. soup',
      },
    });
  });

  it('an encrypted file makes the round trip, and a wrong hash is refused', async () => {
    const bytes = new Uint8Array(randomBytes(200_000));
    const sent = await alice.sendEncryptedFile(room, bytes, 'secret.bin', 'application/pdf');
    const atBob = await from(bob, alice, (m) => m.eventId === sent);
    expect(atBob).toMatchObject({
      encrypted: true,
      body: 'secret.bin',
      content: {
        msgtype: 'm.file',
        info: { mimetype: 'application/pdf', size: bytes.byteLength },
        file: { v: 'v2', url: expect.stringMatching(/^mxc:\/\//) as unknown },
      },
    });
    expect(atBob.content).not.toHaveProperty('url');
    expect(Buffer.from(await bob.downloadEncryptedFile(sent)).equals(bytes)).toBe(true);

    const file = atBob.content.file as Record<string, unknown>;
    await expect(
      bob.downloadEncryptedFile({
        ...atBob.content,
        file: { ...file, hashes: { sha256: 'AAAA' } },
      }),
    ).rejects.toThrow(/sha256/);

    const image = new Uint8Array(randomBytes(1_000));
    const picture = await bob.sendEncryptedFile(room, image, 'x.png', 'image/png', 'm.image');
    const atAlice = await from(alice, bob, (m) => m.eventId === picture);
    expect(atAlice.content).toMatchObject({ msgtype: 'm.image', info: { mimetype: 'image/png' } });
    expect(Buffer.from(await alice.downloadEncryptedFile(atAlice.content)).equals(image)).toBe(
      true,
    );
  });

  it('a raw send in the encrypted room arrives unencrypted', async () => {
    const raw = await alice.sendRawUnencrypted(room, 'in the clear');
    await expect(from(bob, alice, (m) => m.eventId === raw)).resolves.toMatchObject({
      type: 'm.room.message',
      body: 'in the clear',
      encrypted: false,
    });
  });

  it('sendMany sends in order, and they arrive in order', async () => {
    const ids = await alice.sendMany(room, 8, 'burst');
    const last = ids.at(-1) ?? '';
    await from(bob, alice, (m) => m.eventId === last);
    const seen = bob.messages.filter((m) => m.roomId === room && ids.includes(m.eventId));
    expect(seen.map((m) => m.eventId)).toEqual(ids);
    expect(seen.map((m) => m.body)).toEqual(ids.map((_, i) => `burst ${i}`));
  });

  it('a raised power level makes the homeserver refuse the other peer with 403', async () => {
    // Not the DM: there bob has alice's level, and no level she can set is above it.
    const group = await alice.createRoom({ invite: [bob.userId], name: 'levels' });
    await bob.acceptInvite(group);
    await alice.waitForMember(group, bob.userId);
    expect(alice.client.getRoom(group)?.getMember(bob.userId)?.powerLevel).toBe(0);

    // Encrypted sends go out as m.room.encrypted: raising m.room.message does not stop them…
    await alice.setEventPowerLevel(group, 'm.room.message', 100);
    await expect(bob.sendRawUnencrypted(group, 'plain, refused')).rejects.toMatchObject({
      httpStatus: 403,
      errcode: 'M_FORBIDDEN',
    });
    const stillOk = await bob.sendText(group, 'encrypted, still allowed');
    await alice.waitForMessage(group, (m) => m.eventId === stillOk);

    // …raising m.room.encrypted does.
    await alice.setEventPowerLevel(group, 'm.room.encrypted', 100);
    await expect(bob.sendText(group, 'encrypted, refused')).rejects.toMatchObject({
      httpStatus: 403,
      errcode: 'M_FORBIDDEN',
    });
    // Both raises are in force: the second started from the first.
    const levels = alice.client
      .getRoom(group)
      ?.getLiveTimeline()
      .getState(EventTimeline.FORWARDS)
      ?.getStateEvents('m.room.power_levels', '')
      ?.getContent();
    expect(levels).toMatchObject({
      events: { 'm.room.message': 100, 'm.room.encrypted': 100 },
    });
  });
});
