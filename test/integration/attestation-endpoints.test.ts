import { createHash } from 'node:crypto';
import { createPrivateKey } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { StreamEvent } from '../../endpoint/contract.ts';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { TpmClient } from '../../keyvault/tpm/index.ts';
import { enrolEndpoint, verifierPolicySchema } from '../../attestation/index.ts';
import { selfSignedCa } from '../fixtures/x509.ts';
import { verifyAuditLog } from '../../policy/index.ts';
import {
  type CompartmentConfigs,
  type SynapseUser,
  makeTempDir,
  prepareCompartments,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

/**
 * Two of our endpoints, each with its own TPM (swtpm manufactured with an EK certificate by its
 * own local CA), on real Synapse. A attests B and B attests A over Olm-encrypted to-device
 * messages: the first contact runs credential activation, then the quote passes. Then B's boot
 * state changes (a PCR extended on its TPM) and A's next attestation fails with the reason.
 */
const synapse = useFixture(() => startSynapse());
const tpmA = useFixture(() => startSwtpm({ ekCertificate: true }));
const tpmB = useFixture(() => startSwtpm({ ekCertificate: true }));
/** A fresh TPM's PCR 7 (no firmware ran): what A's policy accepts for B. */
const ZERO = '0'.repeat(64);

/** Both endpoints' stderr, printed when a test fails. */
const logs: string[] = [];
let dir: string;
let alice: SynapseUser;
let bob: SynapseUser;
let a: CompartmentConfigs;
let b: CompartmentConfigs;
let dmA: string;
let endpointA: SpawnedEndpoint;
let endpointB: SpawnedEndpoint;

function policy(): Record<string, unknown> {
  return {
    version: 1,
    ekRoots: [tpmA().ekIssuer, tpmB().ekIssuer],
    pcrs: { required: [0, 7], golden: { 7: [ZERO] } },
  };
}

beforeAll(async () => {
  dir = await makeTempDir('attest-e2e');
  await mkdir(join(dir, 'a'));
  await mkdir(join(dir, 'b'));
  alice = await synapse().registerUser('alice');
  bob = await synapse().registerUser('bob');
  a = await prepareCompartments(join(dir, 'a'), {
    homeserver: synapse().baseUrl,
    tpm: tpmA(),
    user: alice,
    attestation: { policy: policy(), pcrs: [0, 7] },
    // A shares room keys only with attested devices.
    roomRules: { default: { roomKeyRecipients: 'attested-only' } },
  });
  b = await prepareCompartments(join(dir, 'b'), {
    homeserver: synapse().baseUrl,
    tpm: tpmB(),
    user: bob,
    attestation: { policy: policy(), pcrs: [0, 7] },
  });
  endpointA = await spawnEndpoint(a.endpointConfig, { onStderr: (l) => logs.push(`[A] ${l}`) });
  endpointB = await spawnEndpoint(b.endpointConfig, { onStderr: (l) => logs.push(`[B] ${l}`) });
  // Each invites the other, so each tracks the other's devices (and may concern them).
  ({ roomId: dmA } = await endpointA.client.call('createRoom', {
    auth: { token: a.tokens.test ?? '' },
    invite: [bob.userId],
    isDirect: true,
  }));
  await endpointB.client.call('createRoom', {
    auth: { token: b.tokens.test ?? '' },
    invite: [alice.userId],
    isDirect: true,
  });
}, 240_000);

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') console.log(logs.slice(-40).join('\n'));
});

afterAll(async () => {
  // Undefined when beforeAll failed before starting them.
  await (endpointA as SpawnedEndpoint | undefined)?.stop().catch(() => undefined);
  await (endpointB as SpawnedEndpoint | undefined)?.stop().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

async function attestUntilSettled(
  from: SpawnedEndpoint,
  token: string,
  userId: string,
  deviceId: string,
) {
  // Device lists arrive with the peers' first syncs: retry while the device is still unknown.
  for (let i = 0; ; i++) {
    const result = await from.client.call(
      'attest',
      { auth: { token }, userId, deviceId },
      { timeoutMs: 40_000 },
    );
    const unknown = result.failures.some((f) => /no such device|not known/.test(f.message));
    if (!unknown || i >= 20) return result;
    await new Promise((r) => setTimeout(r, 500));
  }
}

describe('mutual attestation between two endpoints over Matrix', () => {
  it("an attested-only room's message waits until every recipient device is attested; the endpoint attests them by itself", async () => {
    const auth = { token: a.tokens.test ?? '' };
    const statusB = await endpointB.client.call('status', { auth: { token: b.tokens.test ?? '' } });
    // B cannot answer while it is down: its device cannot be attested.
    await endpointB.stop();
    await endpointA.client.call('send', { auth, roomId: dmA, body: 'for attested eyes only' });
    // Accepted (durably queued) but held: B's device is not attested, so no key leaves.
    await new Promise((r) => setTimeout(r, 4000));
    expect((await endpointA.client.call('status', { auth })).pendingSends).toBe(1);
    const before = await endpointA.client.call('timeline', { auth, roomId: dmA, limit: 20 });
    expect(before.items.some((i) => i.body === 'for attested eyes only')).toBe(false);
    expect(logs.some((l) => /held .*only with attested devices/.test(l))).toBe(true);

    // B is back: the held send asks for B's attestation again (credential activation on this
    // first contact, then the quote), it passes, and the message goes out.
    endpointB = await spawnEndpoint(b.endpointConfig, { onStderr: (l) => logs.push(`[B] ${l}`) });
    for (let i = 0; i < 120; i++) {
      if ((await endpointA.client.call('status', { auth })).pendingSends === 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect((await endpointA.client.call('status', { auth })).pendingSends).toBe(0);
    const after = await endpointA.client.call('timeline', { auth, roomId: dmA, limit: 20 });
    expect(after.items.some((i) => i.body === 'for attested eyes only')).toBe(true);
    const verdict = await endpointA.client.call('attestation', {
      auth,
      userId: bob.userId,
      deviceId: statusB.deviceId,
    });
    expect(verdict.result?.state).toBe('passed');
    expect(verdict.result?.facts?.enrolment).toBe('credential-activation');
  }, 180_000);

  it('A attests B and B attests A: credential activation on first contact, then a passing quote', async () => {
    const tokenA = a.tokens.test ?? '';
    const tokenB = b.tokens.test ?? '';
    const statusA = await endpointA.client.call('status', { auth: { token: tokenA } });
    const statusB = await endpointB.client.call('status', { auth: { token: tokenB } });
    const { subscription, cursor } = await endpointA.client.call('subscribe', {
      auth: { token: tokenA },
    });

    const aOnB = await attestUntilSettled(endpointA, tokenA, bob.userId, statusB.deviceId);
    expect(aOnB.failures).toEqual([]);
    expect(aOnB.state).toBe('passed');
    // Enrolled by credential activation in the first attestation (the test above).
    expect(aOnB.facts?.enrolment).toBe('credential-activation');
    expect(aOnB.facts?.manufacturer).toBe('id:00001014');

    const bOnA = await attestUntilSettled(endpointB, tokenB, alice.userId, statusA.deviceId);
    expect(bOnA.failures).toEqual([]);
    expect(bOnA.state).toBe('passed');

    // The verdict is kept, shown on the stream, and audited.
    const last = await endpointA.client.call('attestation', {
      auth: { token: tokenA },
      userId: bob.userId,
      deviceId: statusB.deviceId,
    });
    expect(last.result?.state).toBe('passed');
    const page = await endpointA.client.call('events', {
      auth: { token: tokenA },
      subscription,
      after: cursor,
      waitMs: 1000,
    });
    const verdicts = page.events.filter(
      (e): e is Extract<StreamEvent, { type: 'attestation' }> => e.type === 'attestation',
    );
    expect(verdicts.at(-1)?.result.state).toBe('passed');
    const audit = await verifyAuditLog(a.auditLog);
    expect(audit.ok).toBe(true);

    // Enrolled now: the second attestation is one round trip and passes again.
    const again = await attestUntilSettled(endpointA, tokenA, bob.userId, statusB.deviceId);
    expect(again.state).toBe('passed');
  }, 180_000);

  it("a changed boot state on B (PCR 7 extended on its TPM) fails A's next attestation with the reason", async () => {
    const tokenA = a.tokens.test ?? '';
    const tokenB = b.tokens.test ?? '';
    const statusB = await endpointB.client.call('status', { auth: { token: tokenB } });
    // swtpm serves one connection: B's endpoint (and its vault) stop while the PCR moves.
    await endpointB.stop();
    const c = new TpmClient(await tpmB().connect());
    try {
      await c.pcrExtend(7, createHash('sha256').update('an unexpected boot loader').digest());
    } finally {
      await c.close();
    }
    endpointB = await spawnEndpoint(b.endpointConfig, { onStderr: (l) => logs.push(`[B] ${l}`) });
    const result = await attestUntilSettled(endpointA, tokenA, bob.userId, statusB.deviceId);
    expect(result.state).toBe('failed');
    expect(result.failures.map((f) => f.code)).toEqual(['PCR_VALUE_REJECTED']);
    expect(result.failures[0]?.message).toMatch(/PCR 7/);
  }, 180_000);

  it("an institution's attestation CA enrols A (credential activation through A's API); B, trusting only that CA, accepts A's AK certificate", async () => {
    const tokenA = a.tokens.test ?? '';
    const tokenB = b.tokens.test ?? '';
    const statusA = await endpointA.client.call('status', { auth: { token: tokenA } });
    const keys = await aliceKeys(statusA.deviceId);
    const ca = await selfSignedCa(join(dir, 'ak-ca'), 'Test attestation CA');
    const io = {
      evidence: async (nonce: Uint8Array, verifier: { userId: string; deviceId: string }) =>
        (
          await endpointA.client.call('evidence', {
            auth: { token: tokenA },
            nonce: Buffer.from(nonce).toString('base64'),
            verifier,
          })
        ).evidence,
      activate: async (request: {
        credentialBlob: Uint8Array;
        encryptedSecret: Uint8Array;
        challengeId: string;
      }) =>
        Buffer.from(
          (
            await endpointA.client.call('activate', {
              auth: { token: tokenA },
              credentialBlob: Buffer.from(request.credentialBlob).toString('base64'),
              encryptedSecret: Buffer.from(request.encryptedSecret).toString('base64'),
              challengeId: request.challengeId,
            })
          ).proof,
          'base64',
        ),
    };
    const caPolicy = verifierPolicySchema.parse({ version: 1, ekRoots: [tpmA().ekIssuer] });
    const outcome = await enrolEndpoint(io, {
      policy: caPolicy,
      expected: { userId: alice.userId, deviceId: statusA.deviceId, ...keys },
      verifier: { userId: '@ca:example.org', deviceId: 'CA' },
      caKey: createPrivateKey(ca.key),
      caCert: ca.pem,
      subject: 'CN=vault of alice, O=Test Health',
      validityDays: 30,
    });
    if (!outcome.ok) throw new Error(JSON.stringify(outcome.failures));

    // A activation made for another AK is refused by A's vault, typed.
    const bogus = await endpointA.client
      .call('activate', {
        auth: { token: tokenA },
        credentialBlob: Buffer.alloc(70, 1).toString('base64'),
        encryptedSecret: Buffer.alloc(258, 2).toString('base64'),
        challengeId: 'x'.repeat(24),
      })
      .then(
        () => 'accepted',
        (e: unknown) => (e as { code?: string }).code,
      );
    expect(bogus).not.toBe('accepted');

    // A sends the certificate with its evidence; B trusts only the CA (no EK roots at all).
    await writeFile(join(dir, 'a', 'ak.pem'), outcome.certificate.pem);
    const configA = JSON.parse(await readFile(a.endpointConfig, 'utf8')) as {
      attestation: Record<string, unknown>;
    };
    configA.attestation.akCertificate = 'ak.pem';
    await writeFile(a.endpointConfig, JSON.stringify(configA));
    await writeFile(
      join(dir, 'b', 'verifier.json'),
      JSON.stringify({ version: 1, akRoots: [ca.pem], pcrs: { required: [0, 7] } }),
    );
    await endpointA.stop();
    await endpointB.stop();
    endpointA = await spawnEndpoint(a.endpointConfig, { onStderr: (l) => logs.push(`[A] ${l}`) });
    endpointB = await spawnEndpoint(b.endpointConfig, { onStderr: (l) => logs.push(`[B] ${l}`) });
    const verdict = await attestUntilSettled(endpointB, tokenB, alice.userId, statusA.deviceId);
    expect(verdict.failures).toEqual([]);
    expect(verdict.facts?.enrolment).toBe('ak-certificate');
  }, 180_000);
});

/** Alice's device keys and master key as B's crypto core knows them (from /keys/query). */
async function aliceKeys(
  deviceId: string,
): Promise<{ ed25519: string; curve25519: string; masterKey: string }> {
  const res = await fetch(`${synapse().baseUrl}/_matrix/client/v3/keys/query`, {
    method: 'POST',
    headers: { authorization: `Bearer ${bob.accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ device_keys: { [alice.userId]: [] } }),
  });
  const body = (await res.json()) as {
    device_keys: Record<string, Record<string, { keys: Record<string, string> }>>;
    master_keys: Record<string, { keys: Record<string, string> }>;
  };
  const device = body.device_keys[alice.userId]?.[deviceId];
  const master = Object.values(body.master_keys[alice.userId]?.keys ?? {})[0];
  const ed25519 = device?.keys[`ed25519:${deviceId}`];
  const curve25519 = device?.keys[`curve25519:${deviceId}`];
  if (!ed25519 || !curve25519 || !master) throw new Error('alice keys not published');
  return { ed25519, curve25519, masterKey: master };
}
