import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TpmConfig } from '../../keyvault/config.ts';
import { openVault } from '../../keyvault/open.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';
import { EndpointService } from '../../endpoint/service.ts';
import {
  StockPeer,
  type Swtpm,
  type SynapseUser,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// The endpoint with its sealed store on a TPM vault (swtpm): what survives a restart, and
// what a copied or rolled-back store runs into.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());
const otherTpm = useFixture(() => startSwtpm());
/** For waitUntil; an error from a condition fails the test at once. */
const poll = { timeoutMs: 30_000, intervalMs: 200, failOnError: true };

let dir: string;
let alice: SynapseUser;
let bob: StockPeer;
let dm: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-service-'));
  alice = await synapse().registerUser('alice');
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
}, 120_000);
afterAll(async () => {
  await bob.stop();
  await rm(dir, { recursive: true, force: true });
});

/** Alice's vault, as the vault command opens it: it signs only her cross-signing objects. */
function vaultConfig(t: Swtpm, stateDir: string): TpmConfig {
  return {
    backend: 'tpm',
    owner: { userId: alice.userId },
    stateDir,
    transport: { swtpm: { host: t.host, port: t.port, ctrlPort: t.ctrlPort } },
    pcrs: [16],
    nvCounterIndex: 0x01a0cafe,
  };
}

async function vaultOn(t: Swtpm, stateDir: string): Promise<VaultBackend> {
  const v = await openVault(vaultConfig(t, stateDir));
  await v.provision();
  return v;
}

async function withService<T>(
  t: Swtpm,
  vaultDir: string,
  dataDir: string,
  use: (s: EndpointService) => Promise<T>,
): Promise<T> {
  const vault = await vaultOn(t, vaultDir);
  try {
    const service = await EndpointService.start({
      vault,
      dataDir,
      homeserver: synapse().baseUrl,
      user: alice.localpart,
      password: alice.password,
    });
    try {
      return await use(service);
    } finally {
      await service.stop();
    }
  } finally {
    await vault.close();
  }
}

function errorOf(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

describe('the endpoint service with a sealed store on the TPM vault', () => {
  const data = (): string => join(dir, 'data');
  const vaultDir = (): string => join(dir, 'vault');
  let deviceId: string;

  it('talks to a stock peer, then restarts with the same device, and every earlier message still decrypts', async () => {
    await withService(tpm(), vaultDir(), data(), async (s) => {
      deviceId = s.endpoint.deviceId;
      dm = await s.endpoint.createRoom({ invite: [bob.userId], isDirect: true });
      await bob.acceptInvite(dm);
      await bob.waitForMember(dm, s.endpoint.userId);
      await s.outbox.enqueue(dm, 'sealed hello');
      await bob.waitForMessage(dm, 'sealed hello');
      await bob.sendText(dm, 'reply before restart');
      await waitForBody(s, dm, 'reply before restart');
    });
    await withService(tpm(), vaultDir(), data(), async (s) => {
      expect(s.endpoint.deviceId).toBe(deviceId);
      const bodies = await bodiesIn(s, dm);
      expect(bodies).toEqual(expect.arrayContaining(['sealed hello', 'reply before restart']));
      await s.outbox.enqueue(dm, 'after restart');
      await bob.waitForMessage(dm, 'after restart');
    });
  });

  it('queues sends while the homeserver is down and delivers each exactly once when it is back', async () => {
    await withService(tpm(), vaultDir(), data(), async (s) => {
      synapse().freeze();
      try {
        for (const i of [1, 2, 3]) await s.outbox.enqueue(dm, `while down ${i}`);
        expect((await s.outbox.pending()).length).toBeGreaterThan(0);
        await new Promise((r) => setTimeout(r, 3000));
      } finally {
        synapse().thaw();
      }
      for (const i of [1, 2, 3]) await bob.waitForMessage(dm, `while down ${i}`, 60_000);
      await waitUntil(
        'the outbox to drain',
        async () => (await s.outbox.pending()).length === 0,
        poll,
      );
    });
    const received = bob.messages.filter((m) => m.roomId === dm && m.body.startsWith('while down'));
    expect(received.map((m) => m.body)).toEqual(['while down 1', 'while down 2', 'while down 3']);
  });

  it('a store copied next to another vault does not open', async () => {
    const copy = join(dir, 'copied-data');
    await cp(data(), copy, { recursive: true });
    const error = await errorOf(
      withService(otherTpm(), join(dir, 'other-vault'), copy, () => Promise.resolve()),
    );
    expect(error).toMatchObject({ code: 'STORE_WRONG_KEY' });
  });

  it('a store restored from an older copy is refused (rolled back past the counter)', async () => {
    const old = join(dir, 'old-data');
    await cp(data(), old, { recursive: true });
    await withService(tpm(), vaultDir(), data(), async (s) => {
      await s.outbox.enqueue(dm, 'newer than the copy');
      await bob.waitForMessage(dm, 'newer than the copy');
    });
    await rm(data(), { recursive: true, force: true });
    await cp(old, data(), { recursive: true });
    const error = await errorOf(withService(tpm(), vaultDir(), data(), () => Promise.resolve()));
    expect(error).toMatchObject({ code: 'STORE_ROLLED_BACK' });
  });
});

async function bodiesIn(s: EndpointService, roomId: string): Promise<unknown[]> {
  const { items } = await s.endpoint.timeline(roomId, { limit: 50 });
  return items.filter((i) => i.decrypted).map((i) => i.body);
}

async function waitForBody(s: EndpointService, roomId: string, body: string): Promise<void> {
  await waitUntil(
    `${JSON.stringify(body)} in ${roomId}`,
    async () => (await bodiesIn(s, roomId)).includes(body),
    poll,
  );
}
