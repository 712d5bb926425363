import { encryptAttachment as elementEncrypt } from 'matrix-encrypt-attachment';
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StreamEvent } from '../../endpoint/contract.ts';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { type RpcError, isRpcError } from '../../keyvault/common/rpc/index.ts';
import {
  StockPeer,
  type HomeserverUser,
  makeTempDir,
  prepareCompartments,
  startSwtpm,
  startHomeserver,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';

// What a stock client's user does every day, against our endpoint (as a process, through its
// RPC: the gateway adds only HTTP framing, tested in gateway-*.test.ts), real Synapse and stock
// matrix-js-sdk peers: bob (cross-signed, as Element sets up) and carol (no cross-signing).
const synapse = useFixture(() => startHomeserver());
const tpm = useFixture(() => startSwtpm());

let dir: string;
let alice: HomeserverUser;
let bob: StockPeer;
let carol: StockPeer;
let carolUser: HomeserverUser;
let endpoint: SpawnedEndpoint;
let tokens: Record<string, string>;
const stderr: string[] = [];
/** Everything the event stream carried, in order. */
const stream: StreamEvent[] = [];
let streaming = true;
let streamDone: Promise<void> = Promise.resolve();

const poll = { timeoutMs: 30_000, intervalMs: 200 };
const auth = (name = 'full') => ({ token: tokens[name] ?? '' });

beforeAll(async () => {
  dir = await makeTempDir('everyday');
  alice = await synapse().registerUser('alice');
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
  carolUser = await synapse().registerUser('carol');
  carol = await StockPeer.start(synapse().baseUrl, carolUser);
  const prepared = await prepareCompartments(dir, {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients: [
      {
        name: 'full',
        capabilities: [
          'rooms.read',
          'messages.read',
          'messages.send',
          'rooms.join',
          'contacts.read',
          'events.stream',
        ],
        requestsPerMinute: 60_000,
      },
      { name: 'reader', capabilities: ['rooms.read', 'messages.read'], requestsPerMinute: 60_000 },
      {
        name: 'elsewhere',
        capabilities: ['rooms.read', 'rooms.join'],
        rooms: ['!not-this-one:localhost'],
        requestsPerMinute: 60_000,
      },
    ],
  });
  tokens = prepared.tokens;
  endpoint = await spawnEndpoint(prepared.endpointConfig, { onStderr: (l) => stderr.push(l) });
  const { subscription, cursor } = await endpoint.client.call('subscribe', { auth: auth() });
  streamDone = (async () => {
    let after = cursor;
    while (streaming) {
      try {
        const page = await endpoint.client.call('events', {
          auth: auth(),
          subscription,
          after,
          waitMs: 2000,
        });
        stream.push(...page.events);
        after = page.cursor;
      } catch {
        // The endpoint is stopped or paused (the stall test): poll again shortly.
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  })();
}, 240_000);

afterAll(async () => {
  streaming = false;
  await streamDone;
  await endpoint.stop();
  await bob.stop();
  await carol.stop();
  await rm(dir, { recursive: true, force: true });
});

async function refusal(promise: Promise<unknown>): Promise<RpcError> {
  try {
    await promise;
  } catch (e) {
    if (isRpcError(e)) return e;
    throw e;
  }
  throw new Error('the call was not refused');
}

async function rooms() {
  return (await endpoint.client.call('rooms', { auth: auth() })).rooms;
}

async function timeline(roomId: string, limit = 50) {
  return (await endpoint.client.call('timeline', { auth: auth(), roomId, limit })).items;
}

/** A room bob starts with alice invited, joined by alice through the API. */
async function roomWithAlice(options: { encrypted?: boolean; isDirect?: boolean } = {}) {
  const roomId = await bob.createRoom({ invite: [alice.userId], ...options });
  await waitUntil(
    'the invitation',
    async () => (await rooms()).some((r) => r.roomId === roomId),
    poll,
  );
  await endpoint.client.call('join', { auth: auth(), roomId });
  await bob.waitForMember(roomId, alice.userId);
  return roomId;
}

function streamed<T extends StreamEvent['type']>(type: T): Extract<StreamEvent, { type: T }>[] {
  return stream.filter((e): e is Extract<StreamEvent, { type: T }> => e.type === type);
}

describe('a stock user can start a conversation with us', () => {
  it('shows who invited us, and joins through the API; the room allow-list and capability apply', async () => {
    const roomId = await bob.createRoom({ invite: [alice.userId], isDirect: true });
    await waitUntil(
      'the invitation',
      async () => (await rooms()).some((r) => r.roomId === roomId),
      poll,
    );
    const invite = (await rooms()).find((r) => r.roomId === roomId);
    expect(invite).toMatchObject({ membership: 'invite', inviter: bob.userId, encrypted: true });

    const outside = await refusal(
      endpoint.client.call('join', { auth: auth('elsewhere'), roomId }),
    );
    expect(outside.code).toBe('FORBIDDEN_ROOM');
    const reader = await refusal(endpoint.client.call('join', { auth: auth('reader'), roomId }));
    expect(reader.code).toBe('FORBIDDEN_CAPABILITY');

    await endpoint.client.call('join', { auth: auth(), roomId });
    await bob.waitForMember(roomId, alice.userId);
    expect((await rooms()).find((r) => r.roomId === roomId)?.membership).toBe('join');
    await endpoint.client.call('send', { auth: auth(), roomId, body: 'hi bob, I joined' });
    const got = await bob.waitForMessage(roomId, 'hi bob, I joined');
    expect(got.encrypted).toBe(true);
  });

  it('declines an invitation, and refuses to join a room it was not invited to', async () => {
    const roomId = await bob.createRoom({ invite: [alice.userId] });
    await waitUntil(
      'the invitation',
      async () => (await rooms()).some((r) => r.roomId === roomId),
      poll,
    );
    await endpoint.client.call('decline', { auth: auth(), roomId });
    expect((await rooms()).some((r) => r.roomId === roomId)).toBe(false);
    await waitUntil(
      'bob to see the decline',
      () => bob.client.getRoom(roomId)?.getMember(alice.userId)?.membership === 'leave',
      poll,
    );
    const again = await refusal(endpoint.client.call('join', { auth: auth(), roomId }));
    expect(again.code).toBe('NOT_INVITED');
  });
});

describe('unencrypted rooms and plaintext are labelled', () => {
  it('labels an unencrypted room, refuses to send to it, and shows its messages as unencrypted', async () => {
    const roomId = await roomWithAlice({ encrypted: false });
    expect((await rooms()).find((r) => r.roomId === roomId)?.encrypted).toBe(false);
    const refused = await refusal(
      endpoint.client.call('send', { auth: auth(), roomId, body: 'in the clear?' }),
    );
    expect(refused.code).toBe('ROOM_NOT_ENCRYPTED');
    await bob.sendText(roomId, 'plain words');
    await waitUntil(
      'the plaintext message',
      async () => (await timeline(roomId)).some((i) => i.body === 'plain words'),
      poll,
    );
    const item = (await timeline(roomId)).find((i) => i.body === 'plain words');
    expect(item).toMatchObject({ decrypted: false, encrypted: false, verification: 'unencrypted' });
  });

  it('flags plaintext injected into an encrypted room (never decrypted: true)', async () => {
    const roomId = await roomWithAlice();
    expect((await rooms()).find((r) => r.roomId === roomId)?.encrypted).toBe(true);
    const eventId = await bob.sendRawUnencrypted(roomId, 'trust me, I am encrypted');
    await waitUntil(
      'the injected message on the stream',
      () => streamed('message').some((e) => e.item.eventId === eventId),
      poll,
    );
    const live = streamed('message').find((e) => e.item.eventId === eventId)?.item;
    const page = (await timeline(roomId)).find((i) => i.eventId === eventId);
    for (const item of [live, page]) {
      expect(item).toMatchObject({ decrypted: false, encrypted: false, verification: 'warning' });
      expect(item?.reason).toMatch(/unencrypted in an encrypted room/);
    }
  });
});

describe('honest delivery', () => {
  it('refuses a message too large for the homeserver with 413 naming the limit, and delivers one just under it', async () => {
    const roomId = await roomWithAlice();
    const cjk = '漢'.repeat(30_000); // 30,000 characters: 90,000 bytes of UTF-8
    const big = await refusal(endpoint.client.call('send', { auth: auth(), roomId, body: cjk }));
    expect(big.code).toBe('MESSAGE_TOO_LARGE');
    expect(big.message).toMatch(/40000/);
    // ~39,900 bytes of clear event: Synapse must take it once encrypted (the margin is real).
    const near = '漢'.repeat(13_250);
    await endpoint.client.call('send', { auth: auth(), roomId, body: near });
    const got = await bob.waitForMessage(roomId, near, 60_000);
    expect(got.encrypted).toBe(true);
    expect((await endpoint.client.call('failedSends', { auth: auth() })).failed).toEqual([]);
  });

  it('reports a send the homeserver refuses as send-failed, lists it, and retries or discards it', async () => {
    // Not a DM: in room version 12 an invited DM partner is a creator and cannot be silenced.
    const roomId = await roomWithAlice();
    await bob.setEventPowerLevel(roomId, 'm.room.encrypted', 100);
    const first = await endpoint.client.call('send', { auth: auth(), roomId, body: 'refused 1' });
    const second = await endpoint.client.call('send', { auth: auth(), roomId, body: 'refused 2' });
    await waitUntil(
      'both failures on the stream',
      () =>
        [first.txnId, second.txnId].every((t) =>
          streamed('send-failed').some((e) => e.failed.txnId === t),
        ),
      poll,
    );
    const event = streamed('send-failed').find((e) => e.failed.txnId === first.txnId);
    expect(event?.failed).toMatchObject({
      roomId,
      kind: 'text',
      code: 'M_FORBIDDEN',
      preview: 'refused 1',
    });
    const listed = (await endpoint.client.call('failedSends', { auth: auth() })).failed;
    expect(listed.map((f) => f.txnId)).toEqual(expect.arrayContaining([first.txnId, second.txnId]));
    expect((await endpoint.client.call('status', { auth: auth() })).pendingSends).toBe(0);

    await bob.setEventPowerLevel(roomId, 'm.room.encrypted', 0);
    await endpoint.client.call('retrySend', { auth: auth(), txnId: first.txnId });
    await endpoint.client.call('discardSend', { auth: auth(), txnId: second.txnId });
    await bob.waitForMessage(roomId, 'refused 1');
    await waitUntil(
      'the retried send to leave the list',
      async () => (await endpoint.client.call('failedSends', { auth: auth() })).failed.length === 0,
      poll,
    );
    const unknown = await refusal(
      endpoint.client.call('retrySend', { auth: auth(), txnId: second.txnId }),
    );
    expect(unknown.code).toBe('NOT_FOUND');
    // Exactly once: the retry reused the transaction id, the discarded one never went out.
    await bob.sendText(roomId, 'after the retry');
    await bob.waitForMessage(roomId, 'after the retry');
    const bodies = (await timeline(roomId)).map((i) => i.body);
    expect(bodies.filter((b) => b === 'refused 1')).toHaveLength(1);
    expect(bodies).not.toContain('refused 2');
  });

  it('says who a send leaves out, and why, in the answer and on the stream', async () => {
    const roomId = await roomWithAlice();
    await bob.client.invite(roomId, carol.userId);
    await carol.acceptInvite(roomId);
    await waitUntil(
      'carol in the room',
      async () =>
        (await rooms()).find((r) => r.roomId === roomId)?.members.includes(carol.userId) === true,
      poll,
    );
    const sent = await endpoint.client.call('send', {
      auth: auth(),
      roomId,
      body: 'who can read this?',
    });
    expect(sent.excluded).toContainEqual({ userId: carol.userId, reason: 'no-cross-signing' });
    expect(sent.excluded.some((e) => e.userId === bob.userId)).toBe(false);
    await waitUntil(
      'the sent event',
      () => streamed('sent').some((e) => e.txnId === sent.txnId),
      poll,
    );
    const event = streamed('sent').find((e) => e.txnId === sent.txnId);
    expect(event?.excluded).toContainEqual({ userId: carol.userId, reason: 'no-cross-signing' });
    // And it is true: bob reads it, carol cannot.
    const atBob = await bob.waitForMessage(roomId, 'who can read this?');
    await waitUntil('carol to fail to decrypt', () => carol.undecryptable.has(atBob.eventId), poll);
    // Both ways (MSC4153): carol's own message is not shown to alice either.
    const fromCarol = await carol.sendText(roomId, 'carol without cross-signing');
    await waitUntil(
      'carol’s message at alice',
      async () => (await timeline(roomId)).some((i) => i.eventId === fromCarol),
      poll,
    );
    const shown = (await timeline(roomId)).find((i) => i.eventId === fromCarol);
    expect(shown?.kind).toBe('undecryptable');
    expect(shown?.body).toBeUndefined();
  });
});

describe('the live stream does not lose messages after a stall', () => {
  it('delivers all 120 messages that arrived while the endpoint was paused, in order, with no gap', async () => {
    const roomId = await roomWithAlice();
    await bob.sendText(roomId, 'before the pause');
    await waitUntil(
      'the last message before the pause',
      () => streamed('message').some((e) => e.item.body === 'before the pause'),
      poll,
    );
    const gapsBefore = streamed('gap').length;
    endpoint.process.kill('SIGSTOP');
    try {
      await bob.sendMany(roomId, 120, 'while paused');
    } finally {
      endpoint.process.kill('SIGCONT');
    }
    const bodies = () =>
      streamed('message')
        .filter((e) => e.roomId === roomId && e.item.body?.startsWith('while paused') === true)
        .map((e) => e.item.body);
    await waitUntil('all 120 on the stream', () => bodies().length >= 120, {
      timeoutMs: 90_000,
      intervalMs: 500,
    });
    expect(bodies()).toEqual(Array.from({ length: 120 }, (_, i) => `while paused ${i}`));
    expect(streamed('gap').length).toBe(gapsBefore);
  }, 180_000);
});

describe('rich events', () => {
  let roomId: string;
  beforeAll(async () => {
    roomId = await roomWithAlice();
  });

  it("shows an edit in place, marked edited, and ignores someone else's edit", async () => {
    const original = await bob.sendText(roomId, 'the first text');
    const edit = await bob.sendEdit(roomId, original, 'the corrected text');
    await waitUntil(
      'the edit on the stream',
      () => streamed('edit').some((e) => e.eventId === edit),
      poll,
    );
    expect(streamed('edit').find((e) => e.eventId === edit)).toMatchObject({
      roomId,
      target: original,
      body: 'the corrected text',
    });
    // A forged edit from a third member whose messages are shown (so carol cross-signs now:
    // MSC4153 hides the messages of users without cross-signing, edits included).
    await carol.bootstrapCrossSigning(carolUser.password);
    await bob.client.invite(roomId, carol.userId);
    await carol.acceptInvite(roomId);
    const forged = await carol.sendEdit(roomId, original, 'carol rewrote bob');
    await carol.sendText(roomId, 'carol was here');
    await waitUntil(
      'carol’s message',
      async () => (await timeline(roomId)).some((i) => i.sender === carol.userId),
      poll,
    );
    const items = await timeline(roomId);
    const shown = items.find((i) => i.eventId === original);
    expect(shown).toMatchObject({ kind: 'message', body: 'the corrected text', edited: true });
    expect(items.some((i) => i.body?.startsWith('* ') === true)).toBe(false);
    expect(items.some((i) => i.eventId === edit || i.eventId === forged)).toBe(false);
    expect(streamed('edit').some((e) => e.eventId === forged)).toBe(false);

    const notOurs = await refusal(
      endpoint.client.call('send', { auth: auth(), roomId, body: 'mine now', edit: original }),
    );
    expect(notOurs.code).toBe('NOT_OWN_MESSAGE');
  });

  it('counts reactions, shows redactions as redacted (and retracts them on the stream)', async () => {
    const target = await bob.sendText(roomId, 'react to me');
    await bob.react(roomId, target, '👍');
    const gone = await bob.sendText(roomId, 'regrettable');
    await bob.redact(roomId, gone);
    await waitUntil(
      'the redaction on the stream',
      () => streamed('redaction').some((e) => e.target === gone),
      poll,
    );
    expect(streamed('reaction').find((e) => e.target === target)).toMatchObject({
      key: '👍',
      sender: bob.userId,
    });
    const items = await timeline(roomId);
    expect(items.find((i) => i.eventId === target)?.reactions).toEqual([
      { key: '👍', count: 1, senders: [bob.userId], byUs: false },
    ]);
    const redacted = items.find((i) => i.eventId === gone);
    expect(redacted).toMatchObject({ kind: 'redacted' });
    expect(redacted?.body).toBeUndefined();
    expect(redacted?.reason).toBeUndefined();
  });

  it('keeps thread replies in their thread, and passes polls as typed unsupported items', async () => {
    const root = await bob.sendText(roomId, 'a thread root');
    const reply = await bob.sendThreadReply(roomId, root, 'in the thread');
    const poll1 = await bob.sendPoll(roomId, 'lunch?', ['yes', 'no']);
    await waitUntil(
      'the poll',
      async () => (await timeline(roomId)).some((i) => i.eventId === poll1),
      poll,
    );
    const items = await timeline(roomId);
    expect(items.find((i) => i.eventId === reply)).toMatchObject({
      thread: root,
      body: 'in the thread',
    });
    const shownPoll = items.find((i) => i.eventId === poll1);
    expect(shownPoll).toMatchObject({ kind: 'unsupported', type: 'org.matrix.msc3381.poll.start' });
    expect(shownPoll?.body).toMatch(/lunch/);
    expect(items.every((i) => i.kind !== 'message' || i.body !== undefined || i.attachment)).toBe(
      true,
    );
  });

  it('sends edits, reactions, redactions and thread replies a stock client shows natively', async () => {
    const { txnId } = await endpoint.client.call('send', {
      auth: auth(),
      roomId,
      body: 'alice says hi',
    });
    const mine = await bob.waitForMessage(roomId, 'alice says hi');
    expect(txnId).toMatch(/^mte\./);
    await endpoint.client.call('send', {
      auth: auth(),
      roomId,
      body: 'alice says hello',
      edit: mine.eventId,
    });
    const edit = await bob.waitForMessage(
      roomId,
      (m) => m.sender === alice.userId && m.relatesTo?.rel_type === 'm.replace',
    );
    expect(edit.content['m.new_content']).toMatchObject({ body: 'alice says hello' });
    expect(edit.wireRelatesTo).toMatchObject({ rel_type: 'm.replace', event_id: mine.eventId });

    const bobs = await bob.sendText(roomId, 'bob asks');
    await waitUntil(
      'bob’s message at alice',
      async () => (await timeline(roomId)).some((i) => i.eventId === bobs),
      poll,
    );
    await endpoint.client.call('react', { auth: auth(), roomId, eventId: bobs, key: '🎉' });
    const reaction = await bob.waitForMessage(
      roomId,
      (m) => m.type === 'm.reaction' && m.sender === alice.userId,
    );
    expect(reaction.relatesTo).toMatchObject({
      rel_type: 'm.annotation',
      event_id: bobs,
      key: '🎉',
    });

    await endpoint.client.call('send', {
      auth: auth(),
      roomId,
      body: 'threaded answer',
      thread: bobs,
    });
    const threaded = await bob.waitForMessage(roomId, 'threaded answer');
    expect(threaded.relatesTo).toMatchObject({ rel_type: 'm.thread', event_id: bobs });

    await endpoint.client.call('redact', { auth: auth(), roomId, eventId: mine.eventId });
    await bob.waitForRedacted(mine.eventId);
  });
});

describe('encrypted attachments', () => {
  let roomId: string;
  beforeAll(async () => {
    roomId = await roomWithAlice();
  });

  async function download(eventId: string): Promise<{ bytes: Buffer; contentType: string }> {
    const start = await endpoint.client.call('downloadStart', { auth: auth(), roomId, eventId });
    const parts: Buffer[] = [];
    for (let offset = 0, done = false; !done;) {
      const chunk = await endpoint.client.call('downloadChunk', {
        auth: auth(),
        download: start.download,
        offset,
      });
      const data = Buffer.from(chunk.data, 'base64');
      parts.push(data);
      offset += data.length;
      done = chunk.done;
    }
    return { bytes: Buffer.concat(parts), contentType: start.contentType };
  }

  async function upload(bytes: Buffer, contentType: string, name: string) {
    const start = await endpoint.client.call('uploadStart', {
      auth: auth(),
      roomId,
      name,
      contentType,
      size: bytes.length,
    });
    for (let offset = 0; offset < bytes.length; offset += start.chunkBytes) {
      await endpoint.client.call('uploadChunk', {
        auth: auth(),
        upload: start.upload,
        offset,
        data: bytes.subarray(offset, offset + start.chunkBytes).toString('base64'),
      });
    }
    return endpoint.client.call('uploadFinish', { auth: auth(), upload: start.upload });
  }

  const png = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    Buffer.alloc(700_000, 7),
  ]);

  it("downloads a stock peer's encrypted file, checked and decrypted by the endpoint", async () => {
    const bytes = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
    const eventId = await bob.sendEncryptedFile(roomId, bytes, 'report.pdf', 'application/pdf');
    await waitUntil(
      'the file at alice',
      async () => (await timeline(roomId)).some((i) => i.eventId === eventId),
      poll,
    );
    const item = (await timeline(roomId)).find((i) => i.eventId === eventId);
    expect(item?.attachment).toMatchObject({
      msgtype: 'm.file',
      name: 'report.pdf',
      encrypted: true,
    });
    const got = await download(eventId);
    expect(got.bytes.equals(bytes)).toBe(true);
    expect(got.contentType).toBe('application/octet-stream');
  });

  it('uploads a file that a stock peer downloads and decrypts', async () => {
    const sent = await upload(png, 'image/png', 'chart.png');
    expect(sent.txnId).toMatch(/^mte\./);
    const atBob = await bob.waitForMessage(roomId, (m) => m.content.msgtype === 'm.image');
    expect(atBob.content.url).toBeUndefined(); // only the encrypted `file`
    expect(Buffer.from(await bob.downloadEncryptedFile(atBob.content)).equals(png)).toBe(true);
    const back = await download(atBob.eventId);
    expect(back.contentType).toBe('image/png');
  });

  it('refuses a declared image whose bytes are not one, and a tampered download', async () => {
    const fake = await refusal(upload(Buffer.from('<html>not a png</html>'), 'image/png', 'x.png'));
    expect(fake.code).toBe('CONTENT_TYPE_MISMATCH');

    // A file whose ciphertext on the server is not what its event's hash says.
    const plain = new Uint8Array(Buffer.from('the genuine contents'));
    const { data, info } = await elementEncrypt(plain.buffer);
    const tampered = new Uint8Array(data.slice(0));
    tampered[0] = (tampered[0] ?? 0) ^ 1;
    const { content_uri: url } = await bob.client.uploadContent(new Blob([tampered]), {
      type: 'application/octet-stream',
    });
    const { event_id: eventId } = await bob.client.sendMessage(roomId, {
      msgtype: 'm.file',
      body: 'genuine.txt',
      info: { mimetype: 'text/plain', size: plain.length },
      file: { ...info, url },
    } as never);
    expect(createHash('sha256').update(tampered).digest('base64').replace(/=+$/, '')).not.toBe(
      info.hashes?.sha256,
    );
    await waitUntil(
      'the tampered file at alice',
      async () => (await timeline(roomId)).some((i) => i.eventId === eventId),
      poll,
    );
    const refused = await refusal(download(eventId));
    expect(refused.code).toBe('ATTACHMENT_TAMPERED');
  });
});
