import { readFile, rm } from 'node:fs/promises';
import { connect as tlsConnect } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StreamEvent, VerificationFlowWire } from '../../endpoint/contract.ts';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { isRpcError } from '../../keyvault/common/rpc/index.ts';
import {
  type Homeserver,
  type HomeserverUser,
  type SasOutcome,
  type Swtpm,
  StockPeer,
  makeTempDir,
  prepareCompartments,
  startDendrite,
  startFederation,
  startSwtpm,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { freePort, waitUntil } from '../fixtures/process.ts';

// The case Matrix exists for: people on different servers. Our endpoint (a process, through its
// RPC, keys in a swtpm vault) is alice on Synapse, with stock matrix-js-sdk clients bob, carol
// and dave on Dendrite; then erin on Dendrite, with frank on Synapse. The servers federate over TLS on loopback, each checking the other's
// certificate against a test CA. What federation changes for the endpoint: device lists that
// arrive late over federation, /keys/query answered by a remote server (or not at all),
// to-device messages between servers, membership learned later.
// Two homeservers, each allowed its own start-up time.
const federation = useFixture(() => startFederation(), 240_000);
const tpm = useFixture(() => startSwtpm());
const tpm2 = useFixture(() => startSwtpm());
const synapse = () => federation().synapse;
const dendrite = () => federation().dendrite;

const poll = { timeoutMs: 60_000, intervalMs: 200 };
const stops: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

/**
 * Our endpoint as a user of `hs`: its process, a token with every capability, and its event
 * stream read the whole time (as the gateway's SSE would).
 */
interface Ours {
  user: HomeserverUser;
  call: SpawnedEndpoint['client']['call'];
  auth: () => { token: string };
  stream: StreamEvent[];
}

async function startOurs(hs: Homeserver, swtpm: Swtpm, name: string): Promise<Ours> {
  const dir = await makeTempDir(`federation-${name}`);
  const user = await hs.registerUser(name);
  const prepared = await prepareCompartments(dir, { homeserver: hs.baseUrl, tpm: swtpm, user });
  const token = prepared.tokens.test ?? '';
  const endpoint = await spawnEndpoint(prepared.endpointConfig, { onStderr: () => undefined });
  const call: Ours['call'] = (method, params) => endpoint.client.call(method, params);
  const auth = () => ({ token });
  const stream: StreamEvent[] = [];
  const streaming = { on: true };
  let streamDone: Promise<void> = Promise.resolve();
  stops.push(async () => {
    streaming.on = false;
    await streamDone;
    await endpoint.stop();
    await rm(dir, { recursive: true, force: true });
  });
  const { subscription, cursor } = await call('subscribe', { auth: auth() });
  streamDone = (async () => {
    let after = cursor;
    while (streaming.on) {
      try {
        const page = await call('events', { auth: auth(), subscription, after, waitMs: 2000 });
        stream.push(...page.events);
        after = page.cursor;
      } catch {
        await sleep(200);
      }
    }
  })();
  return { user, call, auth, stream };
}

/** A stock client, cross-signed as Element sets itself up unless `crossSign` is false. */
async function stockPeer(
  hs: Homeserver,
  user: HomeserverUser,
  crossSign = true,
): Promise<StockPeer> {
  const peer = await StockPeer.start(hs.baseUrl, user);
  stops.push(() => peer.stop());
  if (crossSign) await peer.bootstrapCrossSigning(user.password);
  return peer;
}

async function members(ours: Ours, roomId: string): Promise<string[]> {
  const { rooms } = await ours.call('rooms', { auth: ours.auth() });
  return rooms.find((r) => r.roomId === roomId)?.members ?? [];
}

async function sentEvent(
  ours: Ours,
  txnId: string,
): Promise<Extract<StreamEvent, { type: 'sent' }>> {
  return waitUntil(
    `the sent event of ${txnId}`,
    () =>
      ours.stream.find((e) => e.type === 'sent' && e.txnId === txnId) as
        Extract<StreamEvent, { type: 'sent' }> | undefined,
    poll,
  );
}

async function decryptedAt(ours: Ours, roomId: string, body: string): Promise<void> {
  await waitUntil(
    `"${body}" decrypted by our endpoint`,
    async () => {
      const { items } = await ours.call('timeline', { auth: ours.auth(), roomId, limit: 50 });
      return items.some((i) => i.body === body && i.encrypted === true);
    },
    poll,
  );
}

async function devicesAt(ours: Ours, userId: string) {
  return (await ours.call('contact', { auth: ours.auth(), userId })).devices;
}

/** The Megolm session an encrypted event was sent with, as the receiving client got it. */
function sessionOf(peer: StockPeer, roomId: string, eventId: string): unknown {
  return peer.client.getRoom(roomId)?.findEventById(eventId)?.getWireContent().session_id;
}

/**
 * An invitation to a server already in the room reaches the invitee by /invite and the room by
 * a separate transaction: Dendrite refuses a join it cannot yet authorise from its own copy of
 * the room, so the invitee waits until a member on the same server sees the invitation.
 */
async function inviteSeenOnServer(
  witness: StockPeer,
  roomId: string,
  userId: string,
): Promise<void> {
  await waitUntil(
    `${userId}'s invitation in ${witness.userId}'s copy of the room`,
    () => witness.client.getRoom(roomId)?.getMember(userId)?.membership === 'invite',
    poll,
  );
}

/** A user's membership in Synapse's copy of a room, through the admin API. */
async function membershipOnSynapse(
  admin: HomeserverUser,
  roomId: string,
  userId: string,
): Promise<string | undefined> {
  const res = await fetch(
    `${synapse().baseUrl}/_synapse/admin/v1/rooms/${encodeURIComponent(roomId)}/state`,
    { headers: { authorization: `Bearer ${admin.accessToken}` } },
  );
  const body = (await res.json()) as {
    state?: { type: string; state_key?: string; content: { membership?: string } }[];
  };
  return body.state?.find((e) => e.type === 'm.room.member' && e.state_key === userId)?.content
    .membership;
}

/** Completes a TLS handshake with `port`, checking the certificate against `ca` (or not). */
function tlsHandshake(port: number, ca: string | undefined): Promise<string> {
  return new Promise((resolve) => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ...(ca === undefined ? { rejectUnauthorized: false } : { ca }),
    });
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve('ok');
    });
    socket.once('error', (e: NodeJS.ErrnoException) => {
      socket.destroy();
      resolve(e.code ?? e.message);
    });
    socket.setTimeout(10_000, () => {
      socket.destroy();
      resolve('timeout');
    });
  });
}

describe('our endpoint on Synapse, stock clients on Dendrite', () => {
  let alice: Ours;
  let bobUser: HomeserverUser;
  let bob: StockPeer;
  let room: string;
  const call: Ours['call'] = (method, params) => alice.call(method, params);
  const auth = () => alice.auth();

  beforeAll(async () => {
    alice = await startOurs(synapse(), tpm(), 'alice');
    bobUser = await dendrite().registerUser('bob');
    bob = await stockPeer(dendrite(), bobUser);
  }, 240_000);

  it('messages go both ways in an encrypted room', async () => {
    expect(alice.user.userId).toBe(`@alice:${synapse().serverName}`);
    expect(bob.userId).toBe(`@bob:${dendrite().serverName}`);
    ({ roomId: room } = await call('createRoom', { auth: auth(), invite: [bob.userId] }));
    await bob.acceptInvite(room);
    await bob.waitForMember(room, alice.user.userId);
    await waitUntil(
      'bob in the room at our endpoint',
      async () => (await members(alice, room)).includes(bob.userId),
      poll,
    );

    const sent = await call('send', {
      auth: auth(),
      roomId: room,
      body: 'hello bob, across servers',
    });
    expect(sent.excluded).toEqual([]);
    const atBob = await bob.waitForMessage(room, 'hello bob, across servers', 60_000);
    expect(atBob).toMatchObject({ sender: alice.user.userId, encrypted: true });

    await bob.sendText(room, 'hello alice, from Dendrite');
    await decryptedAt(alice, room, 'hello alice, from Dendrite');
  });

  it('a server whose certificate is not from the test CA is refused: an invitation to it fails', async () => {
    const f = federation();
    const port = await freePort();
    const rogue = await startDendrite({
      federation: { port, ...(await f.certificate('rogue', 'self')), caFile: f.ca.certFile },
    });
    stops.push(() => rogue.stop());
    // It is up and speaks TLS (its listener may come up just after its client API); only its
    // certificate is not one the CA issued.
    await waitUntil(
      "the rogue server's TLS listener",
      async () => (await tlsHandshake(port, undefined)) === 'ok',
      poll,
    );
    expect(await tlsHandshake(port, await readFile(f.ca.certFile, 'utf8'))).toBe(
      'DEPTH_ZERO_SELF_SIGNED_CERT',
    );
    expect(await tlsHandshake(f.gate.port, await readFile(f.ca.certFile, 'utf8'))).toBe('ok');

    const eve = await rogue.registerUser('eve');
    const refused = await call('invite', { auth: auth(), roomId: room, userId: eve.userId }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isRpcError(refused)).toBe(true);
    expect(await members(alice, room)).not.toContain(eve.userId);
  });

  it('a device bob adds on Dendrite gets no key while our server cannot see it cross-signed', async () => {
    const second = await dendrite().login(bobUser.localpart, bobUser.password);
    const bob2 = await stockPeer(dendrite(), second, false);
    // Its device list update travels Dendrite → Synapse as an EDU before our endpoint sees it.
    await waitUntil(
      "bob's new device at our endpoint",
      async () => (await devicesAt(alice, bob.userId)).some((d) => d.deviceId === bob2.deviceId),
      poll,
    );
    const before = await call('send', { auth: auth(), roomId: room, body: 'before bob signs it' });
    const notSigned = { userId: bob.userId, deviceId: bob2.deviceId, reason: 'not-cross-signed' };
    expect(before.excluded).toContainEqual(notSigned);
    const { eventId: withheld } = await sentEvent(alice, before.txnId);
    await bob.waitForMessage(room, 'before bob signs it', 60_000);
    await waitUntil(
      'the new device to be told its key is withheld',
      () => bob2.undecryptable.get(withheld) === 'MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE',
      poll,
    );

    // Dendrite 0.13.8 sends no device list update when bob signs the device (it sends the
    // cross-signing keys alone), so Synapse keeps its copy without the signature: for users
    // on Synapse the device stays not cross-signed. Bob's own server has the signature.
    await bob.crossSignOwnDevice(bob2.deviceId);
    await waitUntil(
      "the device signed on bob's server",
      async () =>
        (await bob.crypto.getDeviceVerificationStatus(bob.userId, bob2.deviceId))?.signedByOwner,
      poll,
    );
    await sleep(5_000);
    const after = await call('send', { auth: auth(), roomId: room, body: 'bob signed it' });
    const { eventId: stillWithheld } = await sentEvent(alice, after.txnId);
    const shown = (await devicesAt(alice, bob.userId)).find((d) => d.deviceId === bob2.deviceId);
    if (shown?.crossSignedByOwner) {
      // A Dendrite that does send the update: the device reads what follows.
      expect(after.excluded).toEqual([]);
      await bob2.waitForMessage(room, 'bob signed it', 60_000);
    } else {
      // The safe failure: it stays excluded, and the send says so.
      expect(after.excluded).toContainEqual(notSigned);
      await waitUntil(
        'the device to be told again',
        () => bob2.undecryptable.get(stillWithheld) === 'MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE',
        poll,
      );
    }
  });

  it('SAS verification across servers: both show the same emoji, both end verified', async () => {
    const done = new Promise<SasOutcome>((resolve) => {
      bob.acceptVerifications(resolve);
    });
    const flow = await call('verificationRequest', {
      auth: auth(),
      userId: bob.userId,
      deviceId: bob.deviceId,
    });
    const compare = await phase(alice, flow.flowId, 'compare');
    await call('verificationConfirm', { auth: auth(), flowId: flow.flowId });
    await phase(alice, flow.flowId, 'done');
    const outcome = await done;
    expect(outcome).toMatchObject({ otherUserId: alice.user.userId });
    expect(compare.sas?.emoji.map((e) => [e.symbol, e.name])).toEqual(outcome.emoji);
    expect(compare.sas?.decimals).toEqual(outcome.decimals);
    await waitUntil(
      'bob to see our identity verified',
      async () => (await bob.crypto.getUserVerificationStatus(alice.user.userId)).isVerified(),
      poll,
    );
    await waitUntil(
      'bob verified at our endpoint',
      async () =>
        (await call('contact', { auth: auth(), userId: bob.userId })).identity.state === 'verified',
      poll,
    );
  });

  it('a remote member who leaves gets no key for what follows: the session rotates', async () => {
    const dave = await stockPeer(dendrite(), await dendrite().registerUser('dave'));
    await call('invite', { auth: auth(), roomId: room, userId: dave.userId });
    await inviteSeenOnServer(bob, room, dave.userId);
    await dave.acceptInvite(room, 60_000);
    await waitUntil(
      'dave in the room at our endpoint',
      async () => (await members(alice, room)).includes(dave.userId),
      poll,
    );
    const first = await call('send', { auth: auth(), roomId: room, body: 'dave, you are here' });
    expect(first.excluded.filter((e) => e.userId === dave.userId)).toEqual([]);
    const firstEvent = (await sentEvent(alice, first.txnId)).eventId;
    await dave.waitForMessage(room, 'dave, you are here', 60_000);

    await dave.leaveRoom(room);
    await waitUntil(
      'dave gone at our endpoint',
      async () => !(await members(alice, room)).includes(dave.userId),
      poll,
    );
    const next = await call('send', { auth: auth(), roomId: room, body: 'dave has left' });
    const nextEvent = (await sentEvent(alice, next.txnId)).eventId;
    await bob.waitForMessage(room, 'dave has left', 60_000);
    const [s1, s2] = [sessionOf(bob, room, firstEvent), sessionOf(bob, room, nextEvent)];
    expect(typeof s1).toBe('string');
    expect(s2).not.toEqual(s1);
    const keys = await dave.crypto.exportRoomKeys();
    expect(keys.map((k) => k.session_id)).toContain(s1);
    expect(keys.map((k) => k.session_id)).not.toContain(s2);
  });

  it('a member whose server does not answer for their devices gets no key, and the send says so', async () => {
    const carol = await stockPeer(dendrite(), await dendrite().registerUser('carol'));
    const admin = await synapse().registerUser(undefined, { admin: true });
    // From here Dendrite does not answer Synapse; Dendrite can still reach Synapse, so the
    // invitation and carol's join arrive, but whenever our endpoint asks for her devices (at
    // the invitation or at the join) Synapse's query to Dendrite times out.
    federation().gate.close();
    try {
      // bob invites her (had we, our endpoint would ask for her devices before sending it),
      // through the bare API: matrix-js-sdk's invite also hands her the room's keys (MSC4268)
      // when history is shared, and then she could read what we send in those sessions anyway.
      const invited = await fetch(
        `${dendrite().baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(room)}/invite`,
        {
          method: 'POST',
          headers: {
            authorization: `Bearer ${bobUser.accessToken}`,
            'content-type': 'application/json',
          },
          body: JSON.stringify({ user_id: carol.userId }),
        },
      );
      expect(invited.status).toBe(200);
      // Synapse must hold the invitation first: carol's join is authorised by it.
      await waitUntil(
        "carol's invitation on Synapse",
        async () => (await membershipOnSynapse(admin, room, carol.userId)) === 'invite',
        poll,
      );
      await carol.acceptInvite(room, 60_000);
      await waitUntil(
        'carol in the room at our endpoint',
        async () => (await members(alice, room)).includes(carol.userId),
        poll,
      );
      const sent = await call('send', {
        auth: auth(),
        roomId: room,
        body: 'carol cannot read this',
      });
      const atSend = await sentEvent(alice, sent.txnId);
      expect(atSend.excluded).toContainEqual({
        userId: carol.userId,
        reason: 'device-list-unavailable',
      });
      // bob's devices were known before: he is not left out.
      expect(
        atSend.excluded.filter((e) => e.userId === bob.userId && e.deviceId === bob.deviceId),
      ).toEqual([]);
      federation().gate.open();
      await bob.waitForMessage(room, 'carol cannot read this', 60_000);
      await waitUntil(
        () =>
          `carol to get ${atSend.eventId}, undecryptable (she has ${JSON.stringify([...carol.undecryptable])}, read ${JSON.stringify(carol.messages.map((m) => m.body))})`,
        () => carol.undecryptable.has(atSend.eventId),
        poll,
      );
      expect(carol.messages.some((m) => m.body === 'carol cannot read this')).toBe(false);

      // Once her server answers, her devices are fetched again and the next message is hers.
      await waitUntil(
        "carol's devices at our endpoint",
        async () => (await devicesAt(alice, carol.userId)).length > 0,
        { ...poll, timeoutMs: 90_000 },
      );
      const later = await call('send', { auth: auth(), roomId: room, body: 'carol can read this' });
      expect(later.excluded.filter((e) => e.userId === carol.userId)).toEqual([]);
      await expect(
        carol.waitForMessage(room, 'carol can read this', 60_000),
      ).resolves.toMatchObject({
        encrypted: true,
      });
    } finally {
      federation().gate.open();
    }
  });

  it('Dendrite down for 30 s mid-conversation: Synapse takes our sends, and all arrive once it is back', async () => {
    await dendrite().down();
    const bodies = [
      'while dendrite is down 1',
      'while dendrite is down 2',
      'while dendrite is down 3',
    ];
    const started = Date.now();
    try {
      for (const body of bodies) {
        await call('send', { auth: auth(), roomId: room, body });
        await sleep(5_000);
      }
      // Our homeserver took every send: nothing is pending here; Synapse queues them for Dendrite.
      await waitUntil(
        'no pending sends',
        async () => (await call('status', { auth: auth() })).pendingSends === 0,
        poll,
      );
      await sleep(Math.max(0, 30_000 - (Date.now() - started)));
    } finally {
      await dendrite().up();
    }
    // The conversation goes on. Synapse delivers what Dendrite missed by its catch-up, which
    // took from seconds to a minute here after Dendrite was back (its wake-up timer); nothing is
    // lost.
    await bob.sendText(room, 'back again');
    await decryptedAt(alice, room, 'back again');
    await call('send', { auth: auth(), roomId: room, body: 'welcome back' });
    bodies.push('welcome back');
    for (const body of bodies) {
      await expect(bob.waitForMessage(room, body, 90_000)).resolves.toMatchObject({
        encrypted: true,
      });
    }
    const order = bodies.map((b) => bob.messages.findIndex((m) => m.body === b));
    expect([...order].sort((x, y) => x - y)).toEqual(order);
  });

  it('Synapse down: the UI sees the sends pending, and they reach Dendrite once it is back', async () => {
    await synapse().down();
    try {
      const bodies = ['queued while synapse is down 1', 'queued while synapse is down 2'];
      for (const body of bodies) await call('send', { auth: auth(), roomId: room, body });
      expect((await call('status', { auth: auth() })).pendingSends).toBe(bodies.length);
      await waitUntil(
        'the homeserver reported unreachable',
        async () => (await call('status', { auth: auth() })).health.homeserver === 'unreachable',
        poll,
      );
      await sleep(10_000);
      await synapse().up();
      await waitUntil(
        'no pending sends',
        async () => (await call('status', { auth: auth() })).pendingSends === 0,
        { ...poll, timeoutMs: 90_000 },
      );
      for (const body of bodies) {
        await expect(bob.waitForMessage(room, body, 90_000)).resolves.toMatchObject({
          encrypted: true,
        });
      }
    } finally {
      await synapse().up();
    }
  });
});

describe('our endpoint on Dendrite, a stock client on Synapse', () => {
  let erin: Ours;
  let frankUser: HomeserverUser;
  let frank: StockPeer;
  let room: string;

  beforeAll(async () => {
    erin = await startOurs(dendrite(), tpm2(), 'erin');
    frankUser = await synapse().registerUser('frank');
    frank = await stockPeer(synapse(), frankUser);
  }, 240_000);

  it('messages go both ways', async () => {
    ({ roomId: room } = await erin.call('createRoom', {
      auth: erin.auth(),
      invite: [frank.userId],
    }));
    await frank.acceptInvite(room, 60_000);
    await frank.waitForMember(room, erin.user.userId);
    await waitUntil(
      'frank in the room at our endpoint',
      async () => (await members(erin, room)).includes(frank.userId),
      poll,
    );
    const sent = await erin.call('send', {
      auth: erin.auth(),
      roomId: room,
      body: 'hello frank, from Dendrite',
    });
    expect(sent.excluded).toEqual([]);
    await expect(
      frank.waitForMessage(room, 'hello frank, from Dendrite', 60_000),
    ).resolves.toMatchObject({ encrypted: true });
    await frank.sendText(room, 'hello erin, from Synapse');
    await decryptedAt(erin, room, 'hello erin, from Synapse');
  });

  it('a device frank adds on Synapse gets keys for new messages once he cross-signs it, not before', async () => {
    const second = await synapse().login(frankUser.localpart, frankUser.password);
    const frank2 = await stockPeer(synapse(), second, false);
    await waitUntil(
      "frank's new device at our endpoint",
      async () => (await devicesAt(erin, frank.userId)).some((d) => d.deviceId === frank2.deviceId),
      poll,
    );
    const before = await erin.call('send', {
      auth: erin.auth(),
      roomId: room,
      body: 'before frank signs it',
    });
    expect(before.excluded).toContainEqual({
      userId: frank.userId,
      deviceId: frank2.deviceId,
      reason: 'not-cross-signed',
    });
    const { eventId: withheld } = await sentEvent(erin, before.txnId);
    await waitUntil(
      'the new device to be told its key is withheld',
      () => frank2.undecryptable.get(withheld) === 'MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE',
      poll,
    );

    await frank.crossSignOwnDevice(frank2.deviceId);
    await waitUntil(
      "frank's new device cross-signed at our endpoint",
      async () =>
        (await devicesAt(erin, frank.userId)).some(
          (d) => d.deviceId === frank2.deviceId && d.crossSignedByOwner,
        ),
      poll,
    );
    const after = await erin.call('send', {
      auth: erin.auth(),
      roomId: room,
      body: 'after frank signs it',
    });
    expect(after.excluded).toEqual([]);
    await expect(
      frank2.waitForMessage(room, 'after frank signs it', 60_000),
    ).resolves.toMatchObject({ encrypted: true });
    expect(frank2.messages.some((m) => m.body === 'before frank signs it')).toBe(false);
  });
});

async function phase(
  ours: Ours,
  flowId: string,
  wanted: VerificationFlowWire['phase'],
): Promise<VerificationFlowWire> {
  return waitUntil(
    `verification ${flowId} to reach ${wanted}`,
    async () => {
      const flow = await ours.call('verification', { auth: ours.auth(), flowId });
      if (flow.phase === 'cancelled' && wanted !== 'cancelled') {
        throw new Error(`verification cancelled: ${JSON.stringify(flow.cancelled)}`);
      }
      return flow.phase === wanted ? flow : undefined;
    },
    { ...poll, failOnError: true },
  );
}
