import { DeviceId, LocalTrust, UserId } from '@matrix-org/matrix-sdk-crypto-wasm';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openVault } from '../../keyvault/open.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';
import { type RpcClient, isRpcError } from '../../keyvault/common/rpc/index.ts';
import type { EndpointContract } from '../../endpoint/contract.ts';
import type { EndpointService } from '../../endpoint/service.ts';
import {
  type AuditRecord,
  type Policy,
  generateToken,
  tokenSha256,
  validatePolicy,
} from '../../policy/index.ts';
import {
  StockPeer,
  type SynapseUser,
  makeTempDir,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';
import { type InProcessEndpoint, startInProcessEndpoint } from '../fixtures/stack.ts';

// The policy's room rules decide who gets room keys, checked against a stock peer's real
// devices: bob's first device (which we verified) and his second (which bob cross-signed, but
// we never verified). Under `verified-only` the second gets no key; under the default
// (`cross-signed`, MSC4153) both do. In-process, so the test can mark a device verified (SAS
// through the API arrives with the verification issue).
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());

const token = generateToken();
let policy: Policy;
let vault: VaultBackend;
let endpoint: InProcessEndpoint;
let service: EndpointService;
let rpc: RpcClient<EndpointContract>;
let audit: { append(record: AuditRecord): Promise<unknown>; fail: boolean; records: AuditRecord[] };
let alice: SynapseUser;
let bob: StockPeer;
let bob2: StockPeer;
let bobPassword: string;
const stops: (() => Promise<unknown>)[] = [];

function setPolicy(overrides: Record<string, unknown>): void {
  const parsed = validatePolicy({
    version: 1,
    rooms: { overrides },
    clients: [
      {
        name: 'ui',
        tokenSha256: tokenSha256(token),
        created: new Date().toISOString(),
        capabilities: ['rooms.read', 'messages.read', 'messages.send', 'rooms.create'],
        rateLimit: { requestsPerMinute: 60_000 },
      },
    ],
  });
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  policy = parsed.policy;
}

const poll = { timeoutMs: 30_000, intervalMs: 200 };

beforeAll(async () => {
  setPolicy({});
  const dir = await makeTempDir('policy-recipients');
  alice = await synapse().registerUser('alice');
  const bobUser = await synapse().registerUser('bob');
  bobPassword = bobUser.password;
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  stops.push(() => bob.stop());
  await bob.bootstrapCrossSigning(bobUser.password);
  bob2 = await StockPeer.start(synapse().baseUrl, await synapse().login('bob', bobUser.password));
  stops.push(() => bob2.stop());
  await bob.crossSignOwnDevice(bob2.deviceId);

  const t = tpm();
  // As the vault command opens it: owned by alice, signing only her cross-signing objects.
  vault = await openVault({
    backend: 'tpm',
    owner: { userId: alice.userId },
    stateDir: `${dir}/vault`,
    transport: t.transport,
    pcrs: [16],
    nvCounterIndex: 0x01a0cafe,
  });
  await vault.provision();
  audit = {
    fail: false,
    records: [],
    append(record) {
      if (this.fail) return Promise.reject(new Error('disk full'));
      this.records.push(record);
      return Promise.resolve();
    },
  };
  endpoint = await startInProcessEndpoint({
    vault,
    dataDir: `${dir}/data`,
    homeserver: synapse().baseUrl,
    user: alice,
    policy: () => policy,
    audit,
  });
  service = endpoint.service;
  rpc = endpoint.rpc;
}, 180_000);

afterAll(async () => {
  await endpoint.stop();
  await vault.close();
  for (const stop of stops.reverse()) await stop();
});

describe('room rules decide who gets room keys (stock peer devices)', () => {
  it('verified-only: the unverified (but cross-signed) device gets no key; cross-signed: both do', async () => {
    const auth = { token };
    const { roomId: strict } = await rpc.call('createRoom', { auth, invite: [bob.userId] });
    const { roomId: normal } = await rpc.call('createRoom', { auth, invite: [bob.userId] });
    setPolicy({ [strict]: { roomKeyRecipients: 'verified-only' } });
    for (const room of [strict, normal]) {
      await bob.acceptInvite(room);
      await bob.waitForMember(room, alice.userId);
    }
    const { rooms } = await rpc.call('rooms', { auth });
    expect(rooms.find((r) => r.roomId === strict)?.roomKeyRecipients).toBe('verified-only');
    expect(rooms.find((r) => r.roomId === normal)?.roomKeyRecipients).toBe('cross-signed');

    // We verify bob's first device only (locally; SAS comes with issue 6).
    const engine = service.endpoint.engine;
    await waitUntil(
      "bob's two devices to be known",
      async () => (await engine.devices(bob.userId)).length >= 2,
      poll,
    );
    const device = await engine.machine.getDevice(
      new UserId(bob.userId),
      new DeviceId(bob.deviceId),
      5,
    );
    if (!device) throw new Error("bob's device is unknown");
    await device.setLocalTrust(LocalTrust.Verified);
    device.free();
    const trust = await engine.devices(bob.userId);
    expect(trust).toContainEqual({
      deviceId: bob.deviceId,
      crossSignedByOwner: true,
      verified: true,
    });
    expect(trust).toContainEqual({
      deviceId: bob2.deviceId,
      crossSignedByOwner: true,
      verified: false,
    });

    await rpc.call('send', { auth, roomId: strict, body: 'for verified devices only' });
    const atBob = await bob.waitForMessage(strict, 'for verified devices only');
    await waitUntil(
      'the unverified device to see the event it cannot decrypt',
      () => bob2.undecryptable.has(atBob.eventId),
      poll,
    );
    expect(bob2.undecryptable.get(atBob.eventId)).toBe('MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE');
    expect(bob2.messages.some((m) => m.body === 'for verified devices only')).toBe(false);

    await rpc.call('send', { auth, roomId: normal, body: 'for cross-signed devices' });
    await bob.waitForMessage(normal, 'for cross-signed devices');
    await expect(bob2.waitForMessage(normal, 'for cross-signed devices')).resolves.toMatchObject({
      encrypted: true,
    });
  }, 120_000);

  it('hides messages from a device its owner did not cross-sign, unless the room rule shows them', async () => {
    const auth = { token };
    const { rooms } = await rpc.call('rooms', { auth });
    const [hidden, shown] = rooms.map((r) => r.roomId).sort();
    if (!hidden || !shown) throw new Error('two rooms expected');
    setPolicy({ [shown]: { showUnverifiedMessages: true } });
    // A third device of bob's that bob never cross-signs: what a homeserver could inject.
    const bob3 = await StockPeer.start(
      synapse().baseUrl,
      await synapse().login('bob', bobPassword),
    );
    stops.push(() => bob3.stop());
    const sent = new Map<string, string>();
    for (const room of [hidden, shown]) {
      await bob3.waitForMember(room, alice.userId);
      sent.set(room, await bob3.sendText(room, `from an unsigned device in ${room}`));
    }
    const read = async (room: string) =>
      (await rpc.call('timeline', { auth, roomId: room, limit: 20 })).items.find(
        (i) => i.eventId === sent.get(room),
      );
    await waitUntil(
      'the hidden message to arrive',
      async () => (await read(hidden)) !== undefined,
      poll,
    );
    await waitUntil('the shown message', async () => (await read(shown))?.decrypted === true, poll);
    const inHidden = await read(hidden);
    expect(inHidden?.decrypted).toBe(false);
    expect(inHidden?.body).toBeUndefined();
    // The crypto core's reason, as text (it throws a non-Error object).
    expect(inHidden?.reason).toMatch(/[a-z]/);
    expect(inHidden?.reason).not.toContain('[object');
    const inShown = await read(shown);
    expect(inShown?.body).toBe(`from an unsigned device in ${shown}`);
    expect(inShown?.verification).not.toBe('verified');
  }, 120_000);
});

describe('no audit, no action', () => {
  it('refuses every call with AUDIT_UNAVAILABLE while the audit log cannot be written', async () => {
    const auth = { token };
    const { rooms } = await rpc.call('rooms', { auth });
    const roomId = rooms[0]?.roomId ?? '';
    const pendingBefore = (await service.outbox.pending()).length;
    audit.fail = true;
    try {
      for (const call of [
        () => rpc.call('status', { auth }),
        () => rpc.call('rooms', { auth }),
        () => rpc.call('send', { auth, roomId, body: 'must not be sent' }),
        () => rpc.call('status', { auth: { token: 'wrong' } }),
      ]) {
        const error = await call().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(isRpcError(error, 'AUDIT_UNAVAILABLE')).toBe(true);
      }
    } finally {
      audit.fail = false;
    }
    expect((await service.outbox.pending()).length).toBe(pendingBefore);
    await sleep(1500);
    expect(bob.messages.some((m) => m.body === 'must not be sent')).toBe(false);
    await expect(rpc.call('status', { auth })).resolves.toMatchObject({ client: { name: 'ui' } });
  });
});
