import { afterAll, describe, expect, it } from 'vitest';
import { type SasOutcome, StockPeer, startSynapse } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// Proves the local Matrix world before our endpoint exists: real Synapse, two stock peers,
// an encrypted room, a message that only decrypts if Olm/Megolm key sharing really worked.
const synapse = useFixture(() => startSynapse());
const peers: StockPeer[] = [];
afterAll(async () => {
  for (const p of peers) await p.stop();
});

async function peerFor(localpart: string): Promise<StockPeer> {
  const user = await synapse().registerUser(localpart);
  const peer = await StockPeer.start(synapse().baseUrl, user);
  peers.push(peer);
  return peer;
}

describe('the local Matrix world', () => {
  it('registers users through the shared-secret API and refuses a wrong password', async () => {
    const user = await synapse().registerUser();
    expect(user.userId).toMatch(/^@user\d+-[0-9a-f]{6}:localhost$/);
    const again = await synapse().login(user.localpart, user.password);
    expect(again.deviceId).not.toBe(user.deviceId);
    await expect(synapse().login(user.localpart, `${user.password}x`)).rejects.toThrow(/403/);
  });

  it('two stock peers exchange an encrypted message that the second one decrypts', async () => {
    const alice = await peerFor('alice');
    const bob = await peerFor('bob');
    const roomId = await alice.createEncryptedRoom({ invite: [bob.userId], name: 'smoke' });
    await expect(alice.crypto.isEncryptionEnabledInRoom(roomId)).resolves.toBe(true);
    await bob.acceptInvite(roomId);
    await alice.waitForMember(roomId, bob.userId);

    const body = `hello bob, it is ${new Date().toISOString()}`;
    const eventId = await alice.sendText(roomId, body);
    const received = await bob.waitForMessage(roomId, body);
    expect(received).toMatchObject({ eventId, sender: alice.userId, body, encrypted: true });

    // And back: the reply is encrypted with bob's own outbound session.
    await bob.sendText(roomId, 'hi alice');
    await expect(alice.waitForMessage(roomId, 'hi alice')).resolves.toMatchObject({
      encrypted: true,
    });

    // The homeserver only ever stored ciphertext.
    const raw = await fetch(
      `${synapse().baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`,
      { headers: { authorization: `Bearer ${alice.client.getAccessToken() ?? ''}` } },
    );
    const stored = JSON.stringify(await raw.json());
    expect(stored).toContain('m.megolm.v1.aes-sha2');
    expect(stored).not.toContain('hello bob');
  });

  it('a stock peer accepts SAS verification and both sides see the same emoji', async () => {
    const [alice, bob] = [peers[0], peers[1]] as [StockPeer, StockPeer];
    const bobSaw = new Promise<SasOutcome>((resolve) => {
      bob.acceptVerifications(resolve);
    });
    const aliceSaw = await alice.verifyDevice(bob.userId, bob.deviceId);
    const bobOutcome = await bobSaw;
    expect(aliceSaw.emoji).toHaveLength(7);
    expect(bobOutcome.emoji).toEqual(aliceSaw.emoji);
    expect(bobOutcome.otherUserId).toBe(alice.userId);
    const status = await alice.crypto.getDeviceVerificationStatus(bob.userId, bob.deviceId);
    expect(status?.isVerified()).toBe(true);
  });
});
