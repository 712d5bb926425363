import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { Endpoint, IdentityChangedError } from '../../endpoint/device.ts';
import { HomeserverClient } from '../../endpoint/matrix/index.ts';
import { acknowledgeIdentity, identityOf } from '../../endpoint/verification/index.ts';
import { StockPeer, startHomeserver, waitUntil } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// The race a security review asked about: a contact's identity is pinned and the check a
// caller makes before sending passes, but the /keys/query that encrypt itself makes (to
// refresh device lists) comes back with a NEW master key for that contact, plus a device the
// new key cross-signs (what a homeserver that wanted to read along would serve). The room key
// must not go to that device: encrypt runs the identity check again after the refresh and
// before any key leaves (endpoint/device.ts sendContent's beforeShare).
const synapse = useFixture(() => startHomeserver());
const stops: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
});

interface ToDeviceCall {
  type: string;
  /** The devices the messages are addressed to, as `user/device`. */
  recipients: string[];
}

/**
 * A real homeserver client whose /keys/query for one user can be held: a held query is sent
 * to Synapse only once released, so Synapse's answer is the state at release time. It also
 * records every to-device send (the only way a room key leaves the endpoint).
 */
class RaceClient extends HomeserverClient {
  readonly toDevice: ToDeviceCall[] = [];
  membersCalls = 0;
  #hold: { userId: string; held: number; released: Promise<void>; release: () => void } | undefined;

  /** Holds every /keys/query that asks for `userId`'s devices until release(). */
  holdQueriesFor(userId: string): void {
    let release = (): void => undefined;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    this.#hold = { userId, held: 0, released, release };
  }

  get held(): number {
    return this.#hold?.held ?? 0;
  }

  release(): void {
    const hold = this.#hold;
    this.#hold = undefined;
    hold?.release();
  }

  override async keysQuery(body: string): Promise<string> {
    const hold = this.#hold;
    const asked = (JSON.parse(body) as { device_keys?: Record<string, unknown> }).device_keys;
    if (hold && asked?.[hold.userId] !== undefined) {
      hold.held++;
      await hold.released;
    }
    return super.keysQuery(body);
  }

  override async sendToDevice(
    type: string,
    txnId: string,
    messages: object,
    options?: { signal?: AbortSignal },
  ): Promise<void> {
    const recipients = Object.entries(messages as Record<string, Record<string, unknown>>).flatMap(
      ([user, devices]) => Object.keys(devices).map((device) => `${user}/${device}`),
    );
    this.toDevice.push({ type, recipients });
    return super.sendToDevice(type, txnId, messages, options);
  }

  override async members(roomId: string): ReturnType<HomeserverClient['members']> {
    this.membersCalls++;
    return super.members(roomId);
  }
}

const poll = { timeoutMs: 30_000, intervalMs: 50 };

describe('identity change slipped into the device-list refresh inside encrypt', () => {
  it('sends no room key to the new identity, refuses the send, and sends after acknowledgement', async () => {
    const aliceUser = await synapse().registerUser('alice');
    const api = new RaceClient({ baseUrl: synapse().baseUrl });
    await api.login(aliceUser.localpart, aliceUser.password);
    const alice = await Endpoint.start({ api, password: aliceUser.password });
    stops.push(() => alice.stop());

    const daveUser = await synapse().registerUser('dave');
    const dave = await StockPeer.start(synapse().baseUrl, daveUser);
    stops.push(() => dave.stop());
    await dave.bootstrapCrossSigning(daveUser.password);

    const room = await alice.createRoom({ invite: [dave.userId], isDirect: true });
    await dave.acceptInvite(room);
    await dave.waitForMember(room, alice.userId);
    await alice.sendText(room, 'before the reset');
    await dave.waitForMessage(room, 'before the reset');
    const pinned = await identityOf(alice.engine.machine, dave.userId);
    expect(pinned.state).toBe('pinned');

    // From here on our endpoint's queries for dave's keys wait. Dave's identity is replaced
    // (a new master key) and a new device of his account is signed by the new identity: the
    // device a malicious homeserver would add.
    api.holdQueriesFor(dave.userId);
    const toDeviceBefore = api.toDevice.length;
    await dave.bootstrapCrossSigning(daveUser.password);
    const intruderLogin = await synapse().login(daveUser.localpart, daveUser.password);
    const intruder = await StockPeer.start(synapse().baseUrl, intruderLogin);
    stops.push(() => intruder.stop());
    await dave.crossSignOwnDevice(intruder.deviceId);
    // Our sync saw dave's device list change and asked for his keys: that query is held.
    await waitUntil('a held /keys/query for dave', () => api.held > 0, poll);

    // The check a caller makes before sending (the gateway's) still sees the pinned identity.
    expect(await alice.changedIdentitiesIn(room)).toEqual([]);
    expect(await identityOf(alice.engine.machine, dave.userId)).toEqual(pinned);

    const membersBefore = api.membersCalls;
    const outcome = alice.sendText(room, 'during the race').then(
      () => undefined,
      (e: unknown) => e,
    );
    // sendText goes straight to encrypt (the members come from sync), which waits for the held
    // refresh; nothing new is known yet.
    await sleep(300);
    expect(await identityOf(alice.engine.machine, dave.userId)).toEqual(pinned);
    // Synapse now answers the refresh that encrypt waits for, with the new identity.
    api.release();
    const error = await outcome;
    expect(api.membersCalls).toBe(membersBefore);

    // No room key went to any of dave's devices (a room key only ever leaves as an
    // Olm-encrypted to-device message), and no event was sent.
    const sent = api.toDevice.slice(toDeviceBefore);
    expect(
      sent.filter(
        (c) =>
          c.type === 'm.room.encrypted' &&
          c.recipients.some((r) => r.startsWith(`${dave.userId}/`)),
      ),
    ).toEqual([]);
    expect(error).toBeInstanceOf(IdentityChangedError);
    expect((error as IdentityChangedError).users).toEqual([dave.userId]);
    const changed = await identityOf(alice.engine.machine, dave.userId);
    expect(changed.state).toBe('pin-violation');
    expect(changed.masterKey).not.toBe(pinned.masterKey);
    const { items } = await alice.timeline(room, { limit: 20 });
    expect(items.length).toBeGreaterThan(0);
    expect(items.some((i) => i.body === 'during the race')).toBe(false);

    // A UI acknowledges the new identity (the key it showed): sending works again, and the
    // devices of the new identity get the key.
    await acknowledgeIdentity(alice.engine.machine, dave.userId, changed.masterKey);
    expect((await identityOf(alice.engine.machine, dave.userId)).state).toBe('pinned');
    await alice.sendText(room, 'after the acknowledgement');
    await expect(dave.waitForMessage(room, 'after the acknowledgement')).resolves.toMatchObject({
      sender: alice.userId,
      encrypted: true,
    });
    await expect(intruder.waitForMessage(room, 'after the acknowledgement')).resolves.toMatchObject(
      { encrypted: true },
    );
    expect(dave.messages.some((m) => m.body === 'during the race')).toBe(false);
    expect(intruder.messages.some((m) => m.body === 'during the race')).toBe(false);
  }, 60_000);
});
