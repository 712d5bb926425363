import { type Server, createServer } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Endpoint, isDecrypted } from '../../endpoint/device.ts';
import { HomeserverClient } from '../../endpoint/matrix/index.ts';
import { StockPeer, startSynapse, waitUntil } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// A homeserver (here: a proxy in front of Synapse) that answers /sync with garbage for a
// while: wrong types, missing fields, not JSON, a huge body. Each gets one clear log line;
// the sync loop carries on and the conversation continues.
const synapse = useFixture(() => startSynapse());
const corruptions: ((res: import('node:http').ServerResponse) => void)[] = [];
let proxy: Server;
let proxyUrl: string;

beforeAll(async () => {
  proxy = createServer((req, res) => {
    void (async () => {
      const path = req.url ?? '/';
      const bad = path.startsWith('/_matrix/client/v3/sync') ? corruptions.shift() : undefined;
      if (bad) {
        bad(res);
        return;
      }
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const upstream = await fetch(`${synapse().baseUrl}${path}`, {
        method: req.method ?? 'GET',
        headers: Object.fromEntries(
          Object.entries(req.headers).filter(
            ([k]) => k === 'authorization' || k === 'content-type',
          ),
        ) as Record<string, string>,
        ...(chunks.length > 0 ? { body: Buffer.concat(chunks) } : {}),
      });
      res.writeHead(upstream.status, {
        'content-type': upstream.headers.get('content-type') ?? 'application/json',
      });
      res.end(Buffer.from(await upstream.arrayBuffer()));
    })().catch(() => res.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const address = proxy.address();
  proxyUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
});
afterAll(async () => {
  proxy.closeAllConnections();
  await new Promise((r) => proxy.close(r));
});

describe('malformed homeserver responses', () => {
  it('each is logged clearly and the sync loop continues', async () => {
    const aliceUser = await synapse().registerUser('alice');
    const api = new HomeserverClient({ baseUrl: proxyUrl });
    await api.login(aliceUser.localpart, aliceUser.password);
    const warnings: string[] = [];
    const alice = await Endpoint.start({
      api,
      password: aliceUser.password,
      logger: { warn: (m) => warnings.push(m), info: () => undefined },
    });
    const bobUser = await synapse().registerUser('bob');
    const bob = await StockPeer.start(synapse().baseUrl, bobUser);
    await bob.bootstrapCrossSigning(bobUser.password);
    try {
      const dm = await alice.createRoom({ invite: [bob.userId], isDirect: true });
      await bob.acceptInvite(dm);
      await bob.waitForMember(dm, alice.userId);

      const json = (body: string) => (res: import('node:http').ServerResponse) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
      };
      corruptions.push(
        json('{"next_batch": 12345}'),
        json('{"rooms": {"join": {}}}'),
        json('<html>502 bad gateway, but 200</html>'),
        json(`{"next_batch":"x","junk":"${'A'.repeat(20 * 1024 * 1024)}"}`),
      );
      await waitUntil('every corrupt /sync answer to be served', () => corruptions.length === 0, {
        timeoutMs: 60_000,
        intervalMs: 100,
      });

      const received = new Promise<string>((resolve) => {
        alice.onEvent((item) => {
          if (isDecrypted(item) && item.content.body === 'still talking?') resolve(item.sender);
        });
      });
      await bob.sendText(dm, 'still talking?');
      await expect(received).resolves.toBe(bob.userId);

      const syncWarnings = warnings.filter((w) => w.startsWith('sync failed'));
      expect(syncWarnings.length).toBeGreaterThanOrEqual(4);
      for (const w of syncWarnings) {
        expect(w).not.toContain('\n');
        expect(w).not.toContain(api.session?.accessToken ?? 'no-token');
      }
      expect(syncWarnings.join(' ')).toMatch(/next_batch/);
      expect(syncWarnings.join(' ')).toMatch(/exceeds \d+ bytes/);
    } finally {
      await alice.stop();
      await bob.stop();
    }
  });
});
