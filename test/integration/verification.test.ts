import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openVault as openConfiguredVault } from '../../keyvault/open.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';
import { type RpcClient, isRpcError } from '../../keyvault/common/rpc/index.ts';
import type {
  EndpointContract,
  StreamEvent,
  VerificationFlowWire,
} from '../../endpoint/contract.ts';
import type { EndpointService } from '../../endpoint/service.ts';
import {
  type AuditRecord,
  CAPABILITIES,
  type Policy,
  generateToken,
  tokenSha256,
  validatePolicy,
} from '../../policy/index.ts';
import {
  type SasOutcome,
  StockPeer,
  type HomeserverUser,
  makeTempDir,
  startSwtpm,
  startHomeserver,
} from '../fixtures/index.ts';
import { VerificationPhase } from 'matrix-js-sdk/lib/crypto-api/index.js';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';
import { type InProcessEndpoint, startInProcessEndpoint } from '../fixtures/stack.ts';

// Interactive verification and identity-change protection through the endpoint's authorised
// contract (the handlers the gateway forwards to), against stock matrix-js-sdk peers on a real
// Synapse, with the endpoint's keys in a swtpm-backed vault. Each peer is an independent SAS
// implementation: the emoji both sides show must agree, and each must end up verified by the
// other. The stream events are read through subscribe/events, as the gateway's SSE does.
const synapse = useFixture(() => startHomeserver());
const tpm = useFixture(() => startSwtpm());

const token = generateToken();
const auth = { token };
let policy: Policy;
let vault: VaultBackend;
let service: EndpointService;
let rpc: RpcClient<EndpointContract>;
let endpoint: InProcessEndpoint;
let dataDir: string;
let alice: HomeserverUser;
let bob: StockPeer;
let bobPassword: string;
let carol: StockPeer;
let dave: StockPeer;
let davePassword: string;
let bobRoom: string;
let daveRoom: string;
let subscription: string;
let cursor = -1;
const seen: StreamEvent[] = [];
const stops: (() => Promise<unknown>)[] = [];
const allPeers: StockPeer[] = [];

const poll = { timeoutMs: 60_000, intervalMs: 200 };

function makePolicy(limitedTo: string[] = ['!none:localhost']): Policy {
  const parsed = validatePolicy({
    version: 1,
    clients: [
      {
        name: 'ui',
        tokenSha256: tokenSha256(token),
        created: new Date().toISOString(),
        capabilities: [...CAPABILITIES],
        rateLimit: { requestsPerMinute: 60_000 },
      },
      {
        name: 'reader',
        tokenSha256: tokenSha256(READER),
        created: new Date().toISOString(),
        capabilities: ['contacts.read', 'messages.send', 'events.stream'],
        rateLimit: { requestsPerMinute: 60_000 },
      },
      {
        // Every capability, but one room: it may verify only the people in that room.
        name: 'limited',
        tokenSha256: tokenSha256(LIMITED),
        created: new Date().toISOString(),
        capabilities: [...CAPABILITIES],
        rooms: limitedTo,
        rateLimit: { requestsPerMinute: 60_000 },
      },
    ],
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  return parsed.policy;
}
const READER = generateToken();
const LIMITED = generateToken();
const audited: AuditRecord[] = [];

/** A vault releases the store key once per lifetime: each start opens it anew, like a boot. */
async function openVault(): Promise<VaultBackend> {
  const t = tpm();
  // As the vault command opens it: owned by alice, signing only her cross-signing objects.
  return openConfiguredVault({
    backend: 'tpm',
    owner: { userId: alice.userId },
    stateDir: `${dataDir}/../vault`,
    transport: t.transport,
    pcrs: [16],
    nvCounterIndex: 0x01a0cafe,
  });
}

async function startService(): Promise<void> {
  vault = await openVault();
  await vault.provision();
  endpoint = await startInProcessEndpoint({
    vault,
    dataDir,
    homeserver: synapse().baseUrl,
    user: alice,
    policy: () => policy,
    audit: {
      append: (record: AuditRecord) => {
        audited.push(record);
        return Promise.resolve();
      },
    },
  });
  service = endpoint.service;
  rpc = endpoint.rpc;
  ({ subscription, cursor } = await rpc.call('subscribe', { auth }));
}

async function stopService(): Promise<void> {
  await endpoint.stop();
  await vault.close();
}

/** Reads what the event stream has for us now (a poll that does not wait). */
async function drain(): Promise<StreamEvent[]> {
  const page = await rpc.call('events', { auth, subscription, after: cursor, waitMs: 0 });
  cursor = page.cursor;
  seen.push(...page.events);
  return seen;
}

async function flowWhere(
  test: (f: VerificationFlowWire) => boolean,
  what: string,
): Promise<VerificationFlowWire> {
  return waitUntil(
    what,
    async () => (await rpc.call('verifications', { auth })).verifications.find(test),
    poll,
  );
}

/** A flow cancelled while we wait for another phase: it will never get there. */
class FlowCancelled extends Error {}

async function phase(
  flowId: string,
  wanted: VerificationFlowWire['phase'],
): Promise<VerificationFlowWire> {
  let flow: VerificationFlowWire | undefined;
  await waitUntil(
    `verification ${flowId} to reach ${wanted}`,
    async () => {
      flow = await rpc.call('verification', { auth, flowId });
      if (flow.phase === 'cancelled' && wanted !== 'cancelled') {
        throw new FlowCancelled(`verification cancelled: ${JSON.stringify(flow.cancelled)}`);
      }
      return flow.phase === wanted;
    },
    // A cancelled flow never reaches another phase: stop at once (other errors are retried).
    { ...poll, failOnError: (e) => e instanceof FlowCancelled },
  ).catch((e: unknown) => {
    // The stock peers' own view of their flows, for a failure that is theirs to explain.
    for (const p of allPeers) {
      const steps = p.logs.filter((l) => l.startsWith('verification'));
      if (steps.length > 0) console.error(`${p.userId} ${p.deviceId}: ${steps.join(' | ')}`);
    }
    throw new Error(`${String(e)}; last seen: ${JSON.stringify(flow)}`);
  });
  return flow as VerificationFlowWire;
}

async function contactState(userId: string): Promise<string> {
  return (await rpc.call('contact', { auth, userId })).identity.state;
}

async function refusal(call: () => Promise<unknown>): Promise<{ code: string; message: string }> {
  const error = await call().then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isRpcError(error)) throw new Error(`expected a refusal, got ${String(error)}`);
  return { code: error.code, message: error.message };
}

async function dmWith(peer: StockPeer): Promise<string> {
  const { roomId } = await rpc.call('createRoom', { auth, invite: [peer.userId], isDirect: true });
  await peer.acceptInvite(roomId);
  await peer.waitForMember(roomId, alice.userId);
  await waitUntil(
    `${peer.userId} in our room list`,
    async () =>
      (await rpc.call('rooms', { auth })).rooms.some(
        (r) => r.roomId === roomId && r.members.includes(peer.userId),
      ),
    poll,
  );
  return roomId;
}

async function startPeer(name: string): Promise<{ peer: StockPeer; password: string }> {
  const user = await synapse().registerUser(name);
  const peer = await StockPeer.start(synapse().baseUrl, user);
  stops.push(() => peer.stop());
  allPeers.push(peer);
  await peer.bootstrapCrossSigning(user.password);
  return { peer, password: user.password };
}

beforeAll(async () => {
  policy = makePolicy();
  const dir = await makeTempDir('verification');
  dataDir = `${dir}/data`;
  alice = await synapse().registerUser('alice');
  ({ peer: bob, password: bobPassword } = await startPeer('bob'));
  ({ peer: carol } = await startPeer('carol'));
  ({ peer: dave, password: davePassword } = await startPeer('dave'));
  await startService();
  bobRoom = await dmWith(bob);
  await dmWith(carol);
  daveRoom = await dmWith(dave);
  policy = makePolicy([bobRoom]);
}, 240_000);

afterAll(async () => {
  await stopService().catch(() => undefined);
  for (const stop of stops.reverse()) await stop();
});

describe('SAS verification with stock matrix-js-sdk peers', () => {
  it('a peer verifies us: the request arrives, we accept, both show the same emoji, both end verified', async () => {
    expect(await contactState(bob.userId)).toBe('pinned');
    const bobSide = bob.verifyDevice(alice.userId, service.endpoint.deviceId, 90_000);
    const incoming = await flowWhere(
      (f) => f.userId === bob.userId && !f.weStarted && f.phase === 'requested',
      "bob's request",
    );
    expect(incoming.deviceId).toBe(bob.deviceId);
    await rpc.call('verificationAccept', { auth, flowId: incoming.flowId });
    const compare = await phase(incoming.flowId, 'compare');
    const confirmed = await rpc.call('verificationConfirm', { auth, flowId: incoming.flowId });
    expect(['confirmed', 'done']).toContain(confirmed.phase);
    const outcome = await bobSide;
    expectSameSas(compare, outcome);
    await phase(incoming.flowId, 'done');

    // bob is verified here: his identity, and his device through it (our user-signing key).
    await waitUntil(
      'bob verified',
      async () => (await contactState(bob.userId)) === 'verified',
      poll,
    );
    const contact = await rpc.call('contact', { auth, userId: bob.userId });
    expect(contact.identity.wasVerified).toBe(true);
    expect(contact.devices).toContainEqual({
      deviceId: bob.deviceId,
      crossSignedByOwner: true,
      verified: true,
    });
    // ...and we are verified at bob's.
    await waitUntil(
      'our device verified at bob',
      async () => {
        const status = await bob.crypto.getDeviceVerificationStatus(
          alice.userId,
          service.endpoint.deviceId,
        );
        return status?.isVerified() ?? false;
      },
      poll,
    );

    // Each step reached the event stream.
    const phases = (await drain())
      .filter((e) => e.type === 'verification' && e.flow.flowId === incoming.flowId)
      .map((e) => (e.type === 'verification' ? e.flow.phase : ''));
    expect(phases).toContain('requested');
    expect(phases).toContain('compare');
    expect(phases.at(-1)).toBe('done');
  }, 120_000);

  it('we verify a peer: our request, SAS starts once they accept, emoji agree, they are verified', async () => {
    const shown: SasOutcome[] = [];
    carol.acceptVerifications(undefined, (o) => shown.push(o));
    const flow = await rpc.call('verificationRequest', {
      auth,
      userId: carol.userId,
      deviceId: carol.deviceId,
    });
    expect(flow).toMatchObject({ weStarted: true, phase: 'requested', userId: carol.userId });
    const compare = await phase(flow.flowId, 'compare');
    expect(compare.sas?.emoji).toHaveLength(7);
    for (const e of compare.sas?.emoji ?? []) expect(e.name).toMatch(/^[A-Z][a-z ]+$/i);
    await rpc.call('verificationConfirm', { auth, flowId: flow.flowId });
    await phase(flow.flowId, 'done');
    expect(shown).toHaveLength(1);
    expectSameSas(compare, shown[0] as SasOutcome);
    await waitUntil(
      'carol verified',
      async () => (await contactState(carol.userId)) === 'verified',
      poll,
    );
    // ...and carol's client, which confirmed the same emoji, counts our device verified.
    await waitUntil(
      'our device verified at carol',
      async () => {
        const status = await carol.crypto.getDeviceVerificationStatus(
          alice.userId,
          service.endpoint.deviceId,
        );
        return status?.isVerified() ?? false;
      },
      poll,
    );
  }, 120_000);

  it('our own new device, once verified, is signed with our self-signing key, as Element signs it', async () => {
    const ours = await StockPeer.start(
      synapse().baseUrl,
      await synapse().login('alice', alice.password),
    );
    stops.push(() => ours.stop());
    allPeers.push(ours);
    // Our other device would answer in-room requests to our user too: it leaves at the end.
    try {
      const shown: SasOutcome[] = [];
      ours.acceptVerifications(undefined, (o) => shown.push(o));
      const ourDevice = async () =>
        (await service.endpoint.engine.devices(alice.userId)).find(
          (d) => d.deviceId === ours.deviceId,
        );
      await waitUntil(
        'our new device to be known',
        async () => (await ourDevice()) !== undefined,
        poll,
      );
      expect(await ourDevice()).toEqual({
        deviceId: ours.deviceId,
        crossSignedByOwner: false,
        verified: false,
      });
      const flow = await rpc.call('verificationRequest', {
        auth,
        userId: alice.userId,
        deviceId: ours.deviceId,
      });
      const compare = await phase(flow.flowId, 'compare');
      await rpc.call('verificationConfirm', { auth, flowId: flow.flowId });
      await phase(flow.flowId, 'done');
      expectSameSas(compare, shown[0] as SasOutcome);
      // A stock client of someone else's sees the new device as cross-signed by its owner.
      await waitUntil(
        'bob to see our new device signed by our self-signing key',
        async () => {
          const status = await bob.crypto.getDeviceVerificationStatus(alice.userId, ours.deviceId);
          return status?.signedByOwner ?? false;
        },
        poll,
      );
      // Our own view follows once the homeserver reports our device list changed.
      await waitUntil(
        'our own view',
        async () => (await ourDevice())?.crossSignedByOwner === true,
        poll,
      );
      expect(await ourDevice()).toEqual({
        deviceId: ours.deviceId,
        crossSignedByOwner: true,
        verified: true,
      });
    } finally {
      await ours.stop();
    }
  }, 120_000);

  it('the emoji differ: cancelling with mismatch leaves the peer unverified on both sides', async () => {
    // Settled at once, so its rejection is never "unhandled" while we work the other side.
    const daveSide = dave.verifyDevice(alice.userId, service.endpoint.deviceId, 90_000).then(
      () => 'verified',
      (e: unknown) => String(e),
    );
    const incoming = await flowWhere(
      (f) => f.userId === dave.userId && f.phase === 'requested',
      "dave's request",
    );
    await rpc.call('verificationAccept', { auth, flowId: incoming.flowId });
    await phase(incoming.flowId, 'compare');
    const cancelled = await rpc.call('verificationCancel', {
      auth,
      flowId: incoming.flowId,
      mismatch: true,
    });
    expect(cancelled.phase).toBe('cancelled');
    expect(cancelled.cancelled).toMatchObject({ code: 'm.mismatched_sas', byUs: true });
    expect(await daveSide).toContain('m.mismatched_sas');
    expect(await contactState(dave.userId)).toBe('pinned');
    const status = await dave.crypto.getDeviceVerificationStatus(
      alice.userId,
      service.endpoint.deviceId,
    );
    expect(status?.isVerified()).toBe(false);
    // A finished flow takes no more steps.
    const again = await refusal(() =>
      rpc.call('verificationConfirm', { auth, flowId: incoming.flowId }),
    );
    expect(again.code).toBe('CONFLICT');
  }, 120_000);

  it('refuses steps on unknown flows and devices, and from clients without the capability', async () => {
    expect((await refusal(() => rpc.call('verification', { auth, flowId: 'nope' }))).code).toBe(
      'NOT_FOUND',
    );
    const unknownDevice = await refusal(() =>
      rpc.call('verificationRequest', { auth, userId: bob.userId, deviceId: 'NOTADEVICE' }),
    );
    expect(unknownDevice.code).toBe('NOT_FOUND');
    const stranger = await refusal(() =>
      rpc.call('verificationRequest', {
        auth,
        userId: '@nobody:example.org',
        deviceId: 'X',
      }),
    );
    expect(stranger.code).toBe('NOT_FOUND');
    const reader = await refusal(() => rpc.call('verifications', { auth: { token: READER } }));
    expect(reader.code).toBe('FORBIDDEN_CAPABILITY');
    const ack = await refusal(() =>
      rpc.call('identityAcknowledge', { auth: { token: READER }, userId: bob.userId }),
    );
    expect(ack.code).toBe('FORBIDDEN_CAPABILITY');
  });

  it('a room-limited client sees and acts on the people of its rooms only, never our own devices', async () => {
    const limited = { token: LIMITED };
    const flows = (await rpc.call('verifications', { auth: limited })).verifications;
    expect(flows.length).toBeGreaterThan(0);
    expect(flows.every((f) => f.userId === bob.userId)).toBe(true);
    const carolFlow = (await rpc.call('verifications', { auth })).verifications.find(
      (f) => f.userId === carol.userId,
    );
    expect(carolFlow).toBeDefined();
    const hidden = await refusal(() =>
      rpc.call('verificationConfirm', { auth: limited, flowId: carolFlow?.flowId ?? '' }),
    );
    expect(hidden.code).toBe('NOT_FOUND');
    const notCarol = await refusal(() =>
      rpc.call('verificationRequest', {
        auth: limited,
        userId: carol.userId,
        deviceId: carol.deviceId,
      }),
    );
    expect(notCarol.code).toBe('NOT_FOUND');
    const notOurs = await refusal(() =>
      rpc.call('verificationRequest', {
        auth: limited,
        userId: alice.userId,
        deviceId: 'OTHERDEVICE',
      }),
    );
    expect(notOurs.code).toBe('NOT_FOUND');
    expect(
      (await refusal(() => rpc.call('identityWithdraw', { auth: limited, userId: carol.userId })))
        .code,
    ).toBe('NOT_FOUND');
  });

  it('audits each trust-changing step with the user it concerns', () => {
    const steps = audited.filter((r) => r.client === 'ui' && r.action.includes('.'));
    expect(steps).toContainEqual(
      expect.objectContaining({
        action: 'verification.accept',
        target: bob.userId,
        decision: 'allow',
      }),
    );
    expect(steps).toContainEqual(
      expect.objectContaining({ action: 'verification.confirm', target: bob.userId }),
    );
    expect(steps).toContainEqual(
      expect.objectContaining({ action: 'verification.request', target: carol.userId }),
    );
    expect(steps).toContainEqual(
      expect.objectContaining({ action: 'verification.cancel', target: dave.userId }),
    );
    const denied = audited.filter((r) => r.client === 'limited' && r.decision === 'allow');
    expect(
      denied.some((r) => r.action === 'verification.request' && r.target === carol.userId),
    ).toBe(
      true, // authorised by capability, then refused as NOT_FOUND: the attempt is on record
    );
  });

  it("a user (not a device) is asked in our direct room, as Element's 'Verify user' does", async () => {
    const { peer: erin } = await startPeer('erin');
    await dmWith(erin);
    const done: SasOutcome[] = [];
    erin.acceptVerifications((o) => done.push(o));
    const flow = await rpc.call('verificationRequest', { auth, userId: erin.userId });
    expect(flow).toMatchObject({ weStarted: true, userId: erin.userId, phase: 'requested' });
    expect(flow.flowId.startsWith('$')).toBe(true); // the request is a room event
    const compare = await phase(flow.flowId, 'compare');
    expect(compare.deviceId).toBe(erin.deviceId); // whichever device answered
    await rpc.call('verificationConfirm', { auth, flowId: flow.flowId });
    await phase(flow.flowId, 'done');
    await waitUntil("erin's side to finish", () => done.length === 1, poll);
    expectSameSas(compare, done[0] as SasOutcome);
    await waitUntil(
      'erin verified',
      async () => (await contactState(erin.userId)) === 'verified',
      poll,
    );
  }, 120_000);

  it('a user with no direct room: their one device is asked; with several, the UI must choose', async () => {
    const { peer: ivan, password } = await startPeer('ivan');
    const { roomId } = await rpc.call('createRoom', { auth, invite: [ivan.userId, carol.userId] });
    for (const peer of [ivan, carol]) {
      await peer.acceptInvite(roomId);
      await peer.waitForMember(roomId, alice.userId);
    }
    await waitUntil(
      'the group room in our list',
      async () =>
        (await rpc.call('rooms', { auth })).rooms.some(
          (r) => r.roomId === roomId && r.members.length === 3,
        ),
      poll,
    );
    const shown: SasOutcome[] = [];
    ivan.acceptVerifications(undefined, (o) => shown.push(o));
    const flow = await rpc.call('verificationRequest', { auth, userId: ivan.userId });
    expect(flow).toMatchObject({ weStarted: true, userId: ivan.userId, deviceId: ivan.deviceId });
    await phase(flow.flowId, 'compare');
    await rpc.call('verificationConfirm', { auth, flowId: flow.flowId });
    await phase(flow.flowId, 'done');
    expect(shown).toHaveLength(1);

    const ivan2 = await StockPeer.start(synapse().baseUrl, await synapse().login('ivan', password));
    stops.push(() => ivan2.stop());
    await ivan.crossSignOwnDevice(ivan2.deviceId);
    await waitUntil(
      "ivan's second device",
      async () =>
        (await rpc.call('contact', { auth, userId: ivan.userId })).devices.filter(
          (d) => d.crossSignedByOwner,
        ).length === 2,
      poll,
    );
    const ambiguous = await refusal(() =>
      rpc.call('verificationRequest', { auth, userId: ivan.userId }),
    );
    expect(ambiguous.code).toBe('CONFLICT');
    expect(ambiguous.message).toContain('2 devices');
  }, 120_000);

  it("a user asks in our direct room (Element's 'Verify user'): we accept, SAS as usual", async () => {
    const { peer: gina } = await startPeer('gina');
    const room = await dmWith(gina);
    const ginaSide = gina.verifyUserInRoom(alice.userId, room, 90_000);
    const incoming = await flowWhere(
      (f) => f.userId === gina.userId && !f.weStarted && f.phase === 'requested',
      "gina's in-room request",
    );
    await rpc.call('verificationAccept', { auth, flowId: incoming.flowId });
    const compare = await phase(incoming.flowId, 'compare');
    await rpc.call('verificationConfirm', { auth, flowId: incoming.flowId });
    expectSameSas(compare, await ginaSide);
    await phase(incoming.flowId, 'done');
    await waitUntil(
      'gina verified',
      async () => (await contactState(gina.userId)) === 'verified',
      poll,
    );
  }, 120_000);

  it('a flood of requests from one user leaves at most one pending: a new one cancels the older', async () => {
    const { peer: frank, password } = await startPeer('frank');
    await dmWith(frank);
    const devices = [frank];
    for (let i = 0; i < 2; i++) {
      const more = await StockPeer.start(
        synapse().baseUrl,
        await synapse().login('frank', password),
      );
      stops.push(() => more.stop());
      devices.push(more);
    }
    type Request = Awaited<ReturnType<typeof frank.crypto.requestDeviceVerification>>;
    const sent: Request[] = [];
    for (const device of devices) {
      await waitUntil(
        'frank to know our device',
        async () => {
          const known = await device.crypto.getUserDeviceInfo([alice.userId], true);
          return known.get(alice.userId)?.has(service.endpoint.deviceId) ?? false;
        },
        poll,
      );
      for (let n = 0; n < 2; n++) {
        sent.push(
          await device.crypto.requestDeviceVerification(alice.userId, service.endpoint.deviceId),
        );
      }
    }
    const pendingHere = async () =>
      (await rpc.call('verifications', { auth })).verifications.filter(
        (f) => f.userId === frank.userId && f.phase === 'requested',
      );
    let seen = '';
    await waitUntil(
      () => `all but (at most) the newest request to be cancelled (last: ${seen})`,
      async () => {
        const cancelled = sent.filter((r) => r.phase === VerificationPhase.Cancelled).length;
        const pending = (await pendingHere()).length;
        seen = `${cancelled} cancelled at frank, ${pending} pending here`;
        return cancelled >= sent.length - 1 && pending <= 1;
      },
      poll,
    );
    for (const r of sent) if (r.phase !== VerificationPhase.Cancelled) await r.cancel();
  }, 120_000);

  it('the verified state survives a restart of the endpoint', async () => {
    await stopService();
    await startService();
    expect(await contactState(bob.userId)).toBe('verified');
    expect(await contactState(carol.userId)).toBe('verified');
    expect(await contactState(dave.userId)).toBe('pinned');
  }, 120_000);
});

describe('a device the homeserver injects for a verified contact', () => {
  it('gets no room keys, and its messages are not shown as from bob', async () => {
    // bob logs in again and uploads device keys, but never cross-signs the new device: exactly
    // what a malicious homeserver can fake.
    const injected = await StockPeer.start(
      synapse().baseUrl,
      await synapse().login('bob', bobPassword),
    );
    stops.push(() => injected.stop());
    await waitUntil(
      'the injected device to be listed',
      async () =>
        (await rpc.call('contact', { auth, userId: bob.userId })).devices.some(
          (d) => d.deviceId === injected.deviceId,
        ),
      poll,
    );
    const listed = (await rpc.call('contact', { auth, userId: bob.userId })).devices.find(
      (d) => d.deviceId === injected.deviceId,
    );
    expect(listed).toEqual({
      deviceId: injected.deviceId,
      crossSignedByOwner: false,
      verified: false,
    });
    expect(await contactState(bob.userId)).toBe('verified');

    await rpc.call('send', { auth, roomId: bobRoom, body: 'for bob, not his new device' });
    const atBob = await bob.waitForMessage(bobRoom, 'for bob, not his new device');
    await waitUntil(
      'the injected device to fail',
      () => injected.undecryptable.has(atBob.eventId),
      poll,
    );
    expect(injected.messages.some((m) => m.body === 'for bob, not his new device')).toBe(false);

    const eventId = await injected.sendText(bobRoom, 'I am bob, trust me');
    const item = await waitUntil(
      'the injected message to arrive',
      async () =>
        (await rpc.call('timeline', { auth, roomId: bobRoom, limit: 20 })).items.find(
          (i) => i.eventId === eventId,
        ),
      poll,
    );
    expect(item).toMatchObject({ decrypted: false });
    expect(item).not.toHaveProperty('body');
  }, 120_000);
});

describe('identity-change protection', () => {
  it("a pinned contact's new identity blocks sending until a UI acknowledges it", async () => {
    const before = (await rpc.call('contact', { auth, userId: dave.userId })).identity;
    await dave.bootstrapCrossSigning(davePassword); // a new master key, as after a reset
    await waitUntil(
      "dave's identity change to be noticed",
      async () => (await contactState(dave.userId)) === 'pin-violation',
      poll,
    );
    const changed = (await rpc.call('contact', { auth, userId: dave.userId })).identity;
    expect(changed.masterKey).not.toBe(before.masterKey);
    const events = await drain();
    expect(
      events.some(
        (e) =>
          e.type === 'identity' && e.userId === dave.userId && e.identity.state === 'pin-violation',
      ),
    ).toBe(true);

    const blocked = await refusal(() =>
      rpc.call('send', { auth, roomId: daveRoom, body: 'must wait' }),
    );
    expect(blocked.code).toBe('IDENTITY_CHANGED');
    expect(blocked.message).toContain(dave.userId);
    // A message accepted before the change waits in the outbox, without holding up other rooms.
    await service.outbox.enqueue(daveRoom, 'queued before the change');
    await rpc.call('send', { auth, roomId: bobRoom, body: 'bob is fine' });
    await bob.waitForMessage(bobRoom, 'bob is fine');
    expect((await service.outbox.pending()).map((e) => e.body)).toEqual([
      'queued before the change',
    ]);
    expect(dave.messages.some((m) => m.body === 'queued before the change')).toBe(false);

    // Acknowledging needs the key the user was shown: an older one is refused.
    const stale = await refusal(() =>
      rpc.call('identityAcknowledge', {
        auth,
        userId: dave.userId,
        masterKey: before.masterKey ?? '',
      }),
    );
    expect(stale.code).toBe('CONFLICT');
    const { identity } = await rpc.call('identityAcknowledge', {
      auth,
      userId: dave.userId,
      masterKey: changed.masterKey ?? '',
    });
    expect(identity.state).toBe('pinned');
    expect(identity.masterKey).toBe(changed.masterKey);
    await dave.waitForMessage(daveRoom, 'queued before the change');
    await rpc.call('send', { auth, roomId: daveRoom, body: 'after the acknowledgement' });
    await dave.waitForMessage(daveRoom, 'after the acknowledgement');
    // Nothing left to acknowledge.
    const twice = await refusal(() =>
      rpc.call('identityAcknowledge', { auth, userId: dave.userId }),
    );
    expect(twice.code).toBe('CONFLICT');
  }, 120_000);

  it("a verified contact's new identity is a verification violation, resolved by re-verifying", async () => {
    await bob.bootstrapCrossSigning(bobPassword);
    await waitUntil(
      "bob's identity change to be noticed",
      async () => (await contactState(bob.userId)) === 'verification-violation',
      poll,
    );
    expect(
      (await refusal(() => rpc.call('send', { auth, roomId: bobRoom, body: 'must wait' }))).code,
    ).toBe('IDENTITY_CHANGED');

    // Re-verify bob (his new identity) by SAS: the block lifts without an acknowledgement.
    const done: SasOutcome[] = [];
    bob.acceptVerifications((o) => done.push(o));
    const flow = await rpc.call('verificationRequest', {
      auth,
      userId: bob.userId,
      deviceId: bob.deviceId,
    });
    await phase(flow.flowId, 'compare');
    await rpc.call('verificationConfirm', { auth, flowId: flow.flowId });
    await phase(flow.flowId, 'done');
    await waitUntil(
      'bob verified again',
      async () => (await contactState(bob.userId)) === 'verified',
      poll,
    );
    await rpc.call('send', { auth, roomId: bobRoom, body: 'verified again' });
    await bob.waitForMessage(bobRoom, 'verified again');

    // Withdrawing verification: bob stays signed, but a later change is only a pin violation.
    const { identity } = await rpc.call('identityWithdraw', { auth, userId: bob.userId });
    expect(identity.wasVerified).toBe(false);
  }, 180_000);
});

function expectSameSas(ours: VerificationFlowWire, theirs: SasOutcome): void {
  expect(ours.sas?.emoji.map((e) => [e.symbol, e.name])).toEqual(theirs.emoji);
  expect(ours.sas?.decimals).toEqual(theirs.decimals);
}
