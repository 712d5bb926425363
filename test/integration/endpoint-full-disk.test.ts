import { execFileSync } from 'node:child_process';
import { mkdir, open, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StreamEvent } from '../../endpoint/contract.ts';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import {
  StockPeer,
  type SynapseUser,
  makeTempDir,
  prepareCompartments,
  readTimeline,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// The endpoint's data directory on a small tmpfs, filled up while a stock peer keeps talking,
// then freed. While full: sends are refused with STORAGE_FULL (HTTP 507 at the gateway) before
// anything is queued, status and the stream say so, and messages keep arriving. When space
// returns the endpoint recovers by itself, and after a restart nothing acknowledged is lost.
// The audit log is on another filesystem (the fixture puts it beside the data directory): on
// the same full disk every call would fail closed with AUDIT_UNAVAILABLE instead.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());

let dir: string;
let data: string;
let configPath: string;
let token: string;
let alice: SynapseUser;
let bob: StockPeer;
let mounted = false;
beforeAll(async () => {
  dir = await makeTempDir('full-disk');
  data = join(dir, 'data');
  await mkdir(data, { mode: 0o700 });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m,mode=0700', 'tmpfs', data]);
  mounted = true;
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
  if (mounted) execFileSync('umount', ['-l', data]);
  await rm(dir, { recursive: true, force: true });
});

/** Writes zeros until the filesystem refuses: the disk is then full to the last block. */
async function fill(path: string): Promise<void> {
  const handle = await open(path, 'w');
  const chunk = Buffer.alloc(1 << 20);
  try {
    for (;;) {
      try {
        await handle.write(chunk);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
        // Fill the last partial megabyte too.
        for (let size = 1 << 19; size >= 512; size >>= 1) {
          await handle.write(Buffer.alloc(size)).catch(() => undefined);
        }
        return;
      }
    }
  } finally {
    await handle.close();
  }
}

describe('a full disk under the endpoint', () => {
  it('refuses sends with STORAGE_FULL, says so, keeps receiving, recovers when space returns, loses nothing', async () => {
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
    const accepted: string[] = [];
    for (let i = 0; i < 3; i++) {
      const body = `before ${i}`;
      await endpoint.client.call('send', { auth, roomId: dm, body });
      accepted.push(body);
    }
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

    const filler = join(data, 'filler');
    await fill(filler);
    const fromBob: string[] = [];
    const talking = { on: true };
    const bobTalks = (async () => {
      for (let i = 0; talking.on; i++) {
        const body = `bob while full ${i}`;
        await bob.sendText(dm, body);
        fromBob.push(body);
        await sleep(300);
      }
    })();
    // Receiving writes (sync token, room keys): the store finds the disk full.
    await waitUntil(
      'the status to report the disk full',
      async () => (await endpoint.client.call('status', { auth })).health.storage === 'full',
      { timeoutMs: 30_000, intervalMs: 200, failOnError: true },
    );
    const pendingBefore = (await endpoint.client.call('status', { auth })).pendingSends;
    const refused = await endpoint.client
      .call('send', { auth, roomId: dm, body: 'refused while full' })
      .then(
        () => 'accepted',
        (e: unknown) => (e as { code?: string }).code,
      );
    expect(refused).toBe('STORAGE_FULL');
    const status = await endpoint.client.call('status', { auth });
    expect(status.pendingSends).toBe(pendingBefore); // the refused send is not pending
    expect(status.health.reason).toMatch(/disk is full/);

    await unlink(filler);
    await waitUntil(
      'the endpoint to recover by itself',
      async () => (await endpoint.client.call('status', { auth })).health.storage === 'ok',
      { timeoutMs: 30_000, intervalMs: 200, failOnError: true },
    );
    for (let i = 0; i < 3; i++) {
      const body = `after ${i}`;
      await endpoint.client.call('send', { auth, roomId: dm, body });
      accepted.push(body);
    }
    talking.on = false;
    await bobTalks;
    await waitUntil(
      'the health events to reach the stream',
      () => events.some((e) => e.type === 'health' && e.health.storage === 'ok'),
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    const storage = events.flatMap((e) => (e.type === 'health' ? [e.health.storage] : []));
    expect(storage[0]).toBe('full');
    expect(storage.at(-1)).toBe('ok');
    stream.open = false;
    await reading;
    await waitUntil(
      'the outbox to drain',
      async () => (await endpoint.client.call('status', { auth })).pendingSends === 0,
      { timeoutMs: 60_000, intervalMs: 250, failOnError: true },
    );

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
    ).catch(async (e: unknown) => {
      const items = await readTimeline(endpoint.client, token, dm, 1000);
      console.log(
        JSON.stringify(
          items.filter((i) => !i.decrypted),
          null,
          1,
        ).slice(0, 3000),
      );
      console.log(stderr.slice(-60).join('\n'));
      throw e;
    });
    await endpoint.stop();
    for (const body of accepted) await bob.waitForMessage(dm, body, 60_000);
    expect(bob.messages.some((m) => m.body === 'refused while full')).toBe(false);
    expect(fromBob.length).toBeGreaterThan(0);
    expect(stderr.filter((l) => /TAMPER|ROLLED|STORE_FAILED/.test(l))).toEqual([]);
  }, 300_000);
});
