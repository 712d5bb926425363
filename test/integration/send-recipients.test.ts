import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint } from '../../endpoint/device.ts';
import { HomeserverClient } from '../../endpoint/matrix/index.ts';
import { StockPeer, type SynapseUser, startSynapse, waitUntil } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// Who gets a room's key is decided from the members sync told us about, not from a /members
// call per send (that call was most of the send latency above a stock client's). So sync must
// keep the list right: a member who joins between two sends reads the second; one who leaves
// cannot read what is sent while she is away, even after she comes back.

const synapse = useFixture(() => startSynapse());
const stops: (() => Promise<void>)[] = [];

let alice: Endpoint;
let bob: StockPeer;
let carol: StockPeer;
let room: string;
/** /members calls the endpoint made. */
let memberCalls = 0;

const poll = { timeoutMs: 30_000, intervalMs: 100 };

async function peer(localpart: string): Promise<StockPeer> {
  const user: SynapseUser = await synapse().registerUser(localpart);
  const p = await StockPeer.start(synapse().baseUrl, user);
  await p.bootstrapCrossSigning(user.password);
  stops.push(() => p.stop());
  return p;
}

beforeAll(async () => {
  const user = await synapse().registerUser('alice');
  const api = new HomeserverClient({ baseUrl: synapse().baseUrl });
  await api.login('alice', user.password);
  const members = api.members.bind(api);
  api.members = (roomId) => {
    memberCalls++;
    return members(roomId);
  };
  alice = await Endpoint.start({ api, password: user.password });
  stops.push(() => alice.stop());
  bob = await peer('bob');
  carol = await peer('carol');
  room = await alice.createRoom({ invite: [bob.userId] });
  await bob.acceptInvite(room);
  await waitUntil(
    "bob's join at the endpoint",
    () => Promise.resolve(alice.room(room)?.members.includes(bob.userId) === true),
    poll,
  );
}, 120_000);

afterAll(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

describe('room key recipients from sync', () => {
  it('sends without asking the homeserver for the member list', async () => {
    const before = memberCalls;
    for (let i = 0; i < 3; i++) await alice.sendText(room, `no members call ${i}`);
    await bob.waitForMessage(room, 'no members call 2');
    expect(memberCalls).toBe(before);
  });

  it('a member who joins between two sends reads the second', async () => {
    await alice.sendText(room, 'before carol');
    await alice.invite(room, carol.userId);
    await carol.acceptInvite(room);
    await waitUntil(
      "carol's join at the endpoint",
      () => Promise.resolve(alice.room(room)?.members.includes(carol.userId) === true),
      poll,
    );
    await alice.sendText(room, 'after carol joined');
    const got = await carol.waitForMessage(room, 'after carol joined');
    expect(got).toMatchObject({ sender: alice.userId, encrypted: true });
  });

  it('one invited by us gets the key even before sync shows the invitation', async () => {
    const dave = await peer('dave');
    await alice.invite(room, dave.userId);
    // At once, no sync in between: the invitation we made is enough.
    await alice.sendText(room, 'sent right after inviting dave');
    await dave.acceptInvite(room);
    const got = await dave.waitForMessage(room, 'sent right after inviting dave', 60_000);
    expect(got.encrypted).toBe(true);
  });

  it('a member who leaves gets no key for what is sent while she is away, even after rejoining', async () => {
    await carol.leaveRoom(room);
    await waitUntil(
      "carol's leave at the endpoint",
      () => Promise.resolve(alice.room(room)?.members.includes(carol.userId) === false),
      poll,
    );
    const whileAway = await alice.sendText(room, 'while carol is away');
    await bob.waitForMessage(room, 'while carol is away');
    await alice.invite(room, carol.userId);
    await carol.acceptInvite(room);
    await alice.sendText(room, 'carol is back');
    await carol.waitForMessage(room, 'carol is back');
    // Carol's client sees the event (shared history) but never had its key.
    await waitUntil(
      'carol to have tried the message sent while she was away',
      async () => {
        if (carol.undecryptable.has(whileAway)) return true;
        const r = carol.client.getRoom(room);
        if (r) await carol.client.scrollback(r, 20);
        return carol.undecryptable.has(whileAway);
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    expect(carol.messages.some((m) => m.body === 'while carol is away')).toBe(false);
  });
});
