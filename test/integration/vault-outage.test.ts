import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StreamEvent } from '../../endpoint/contract.ts';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import {
  StockPeer,
  type SynapseUser,
  prepareCompartments,
  readTimeline,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// The vault compartment killed (SIGKILL) three times while a stock peer and the endpoint keep
// talking. The UI is told (status and a `health` event), messaging goes on (it does not need
// the vault), the endpoint starts a new vault by itself, and after a restart of the whole
// endpoint nothing acknowledged is missing and the store opens without complaint.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());

let dir: string;
let configPath: string;
let token: string;
let alice: SynapseUser;
let bob: StockPeer;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-vault-outage-'));
  alice = await synapse().registerUser('alice');
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
  const prepared = await prepareCompartments(dir, {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
  });
  configPath = prepared.endpointConfig;
  token = prepared.tokens.test ?? '';
}, 180_000);
afterAll(async () => {
  await bob.stop();
  await rm(dir, { recursive: true, force: true });
});

/** The vault the endpoint started: its only child running the vault (source or bundle). */
function vaultPid(endpointPid: number): number {
  const out = execFileSync(
    'pgrep',
    ['-P', String(endpointPid), '-f', 'keyvault[/-]main[.](ts|mjs) serve'],
    {
      encoding: 'utf8',
    },
  ).trim();
  const pid = Number(out.split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no vault child of ${endpointPid}`);
  return pid;
}

describe('the vault compartment dies under load', () => {
  it('is reported, messaging goes on, a new vault is started, and nothing acknowledged is lost', async () => {
    const stderr: string[] = [];
    let endpoint = await spawnEndpoint(configPath, { onStderr: (l) => stderr.push(l) });
    const auth = { token };
    const { roomId: dm } = await endpoint.client.call('createRoom', {
      auth,
      invite: [bob.userId],
      isDirect: true,
    });
    await bob.acceptInvite(dm);
    await bob.waitForMember(dm, alice.userId);
    const { subscription, cursor } = await endpoint.client.call('subscribe', { auth });
    const events: StreamEvent[] = [];
    let after = cursor;
    const stream = { open: true };
    const reading = (async () => {
      while (stream.open) {
        const page = await endpoint.client
          .call('events', { auth, subscription, after, waitMs: 500 })
          .catch(() => undefined);
        if (!page) continue;
        events.push(...page.events);
        after = page.cursor;
      }
    })();

    const accepted: string[] = [];
    const fromBob: string[] = [];
    for (let round = 0; round < 3; round++) {
      const firstPid = vaultPid(endpoint.process.pid ?? 0);
      const load = { on: true };
      const talking = (async () => {
        for (let i = 0; load.on; i++) {
          const body = `alice r${round} m${i}`;
          await endpoint.client.call('send', { auth, roomId: dm, body });
          accepted.push(body);
          const reply = `bob r${round} m${i}`;
          await bob.sendText(dm, reply);
          fromBob.push(reply);
          await sleep(50);
        }
      })();
      await sleep(500);
      process.kill(firstPid, 'SIGKILL');
      await waitUntil(
        `the status to report the vault down (round ${round})`,
        async () => (await endpoint.client.call('status', { auth })).health.vault === 'unavailable',
        { timeoutMs: 10_000, intervalMs: 50, failOnError: true },
      ).catch(() => undefined); // it may already be back: the events below are the record
      await waitUntil(
        `a new vault to be started and accepted (round ${round})`,
        async () => (await endpoint.client.call('status', { auth })).health.vault === 'available',
        { timeoutMs: 30_000, intervalMs: 100, failOnError: true },
      );
      expect(vaultPid(endpoint.process.pid ?? 0)).not.toBe(firstPid);
      await sleep(500); // messaging goes on with the new vault too
      load.on = false;
      await talking;
    }
    await waitUntil(
      'both health events of each outage to reach the stream',
      () => events.filter((e) => e.type === 'health' && e.health.vault === 'available').length >= 3,
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    const healthEvents = events.flatMap((e) => (e.type === 'health' ? [e.health] : []));
    expect(healthEvents.map((h) => h.vault)).toEqual([
      'unavailable',
      'available',
      'unavailable',
      'available',
      'unavailable',
      'available',
    ]);
    expect(healthEvents.find((h) => h.vault === 'unavailable')?.reason).toMatch(/vault/);
    stream.open = false;
    await reading;

    await waitUntil(
      'the outbox to drain',
      async () => (await endpoint.client.call('status', { auth })).pendingSends === 0,
      { timeoutMs: 120_000, intervalMs: 250, failOnError: true },
    );
    // A clean stop compacts, which needs the (new) vault's counter: the store is consistent.
    await endpoint.stop();
    endpoint = await spawnEndpoint(configPath, { onStderr: (l) => stderr.push(l) });
    await waitUntil(
      "every one of bob's messages to decrypt after the restart",
      async () => {
        const items = await readTimeline(endpoint.client, token, dm, 1000);
        const readable = new Set(items.filter((i) => i.decrypted).map((i) => i.body));
        return fromBob.every((b) => readable.has(b));
      },
      { timeoutMs: 60_000, intervalMs: 250, failOnError: true },
    );
    await endpoint.stop();
    for (const body of accepted) await bob.waitForMessage(dm, body, 60_000);
    expect(accepted.length).toBeGreaterThanOrEqual(6);
    expect(stderr.filter((l) => /STORE_|TAMPER|ROLLED|SECURITY/.test(l))).toEqual([]);
    expect(stderr.some((l) => /vault unavailable/.test(l))).toBe(true);
  }, 300_000);
});
