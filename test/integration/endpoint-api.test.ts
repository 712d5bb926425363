import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { type RpcError, isRpcError } from '../../keyvault/common/rpc/index.ts';
import {
  createClient as addClient,
  revokeClient,
  tokenSha256,
  verifyAuditLog,
} from '../../policy/index.ts';
import {
  StockPeer,
  type SynapseUser,
  makeTempDir,
  prepareCompartments,
  readTimeline,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';

// The endpoint compartment as the gateway sees it: a channel on which every call carries a UI
// client's token, decided by the endpoint against the policy file and written to the audit log.
// The caller here plays a compromised gateway: it can send anything the contract allows.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());

let dir: string;
let alice: SynapseUser;
let bob: StockPeer;
let endpoint: SpawnedEndpoint;
let policyPath: string;
let auditLog: string;
let tokens: Record<string, string>;
const stderr: string[] = [];

beforeAll(async () => {
  dir = await makeTempDir('endpoint-api');
  alice = await synapse().registerUser('alice');
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
  const prepared = await prepareCompartments(dir, {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients: [
      {
        name: 'full',
        capabilities: [
          'rooms.read',
          'messages.read',
          'messages.send',
          'rooms.create',
          'rooms.manage',
          'contacts.read',
          'events.stream',
        ],
        requestsPerMinute: 60_000,
      },
      { name: 'reader', capabilities: ['rooms.read', 'messages.read'], requestsPerMinute: 60_000 },
      { name: 'streamer', capabilities: ['events.stream'], requestsPerMinute: 60_000 },
      { name: 'slow', capabilities: ['rooms.read'], requestsPerMinute: 3 },
    ],
  });
  ({ policyPath, auditLog, tokens } = prepared);
  endpoint = await spawnEndpoint(prepared.endpointConfig, { onStderr: (l) => stderr.push(l) });
}, 180_000);

afterAll(async () => {
  await endpoint.stop();
  await bob.stop();
  await rm(dir, { recursive: true, force: true });
});

const auth = (name: string) => ({ token: tokens[name] ?? '' });

async function refusal(promise: Promise<unknown>): Promise<RpcError> {
  try {
    await promise;
  } catch (e) {
    if (isRpcError(e)) return e;
    throw e;
  }
  throw new Error('the call was not refused');
}

const poll = { timeoutMs: 30_000, intervalMs: 200 };

async function auditEntries(): Promise<Record<string, unknown>[]> {
  const text = await readFile(auditLog, 'utf8');
  return text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('the endpoint decides every call itself (a compromised gateway gains nothing)', () => {
  it('refuses a made-up token, a token hash, a padded token, and a claimed client name', async () => {
    const c = endpoint.client;
    const real = tokens.full ?? '';
    for (const token of ['not-a-token', tokenSha256(real), ` ${real}`, `${real}x`, real.slice(1)]) {
      expect((await refusal(c.call('status', { auth: { token } }))).code).toBe('UNAUTHENTICATED');
    }
    // The identity is the token and nothing else: a field naming the client is refused outright.
    const claimed = await refusal(
      c.call('status', { auth: { token: 'x', client: 'full' } } as never),
    );
    expect(claimed.code).toBe('INVALID_PARAMS');
    const missing = await refusal(c.call('rooms', {} as never));
    expect(missing.code).toBe('INVALID_PARAMS');
    // And it is all on record, attributed to nobody.
    const denials = (await auditEntries()).filter(
      (e) => e.decision === 'deny' && e.reason === 'UNAUTHENTICATED',
    );
    expect(denials.length).toBeGreaterThanOrEqual(5);
    expect(denials.every((e) => e.client === null)).toBe(true);
  });

  it('answers a valid token with that client, and refuses capabilities it lacks', async () => {
    const status = await endpoint.client.call('status', { auth: auth('reader') });
    expect(status.client).toEqual({
      name: 'reader',
      capabilities: ['messages.read', 'rooms.read'],
    });
    expect(status.userId).toBe(alice.userId);
    const send = await refusal(
      endpoint.client.call('createRoom', { auth: auth('reader'), invite: [] }),
    );
    expect(send.code).toBe('FORBIDDEN_CAPABILITY');
    const stream = await refusal(endpoint.client.call('subscribe', { auth: auth('reader') }));
    expect(stream.code).toBe('FORBIDDEN_CAPABILITY');
  });

  it('rate-limits a client, with the time to wait', async () => {
    for (let i = 0; i < 3; i++) await endpoint.client.call('rooms', { auth: auth('slow') });
    const limited = await refusal(endpoint.client.call('rooms', { auth: auth('slow') }));
    expect(limited.code).toBe('RATE_LIMITED');
    expect(limited.retryAfterMs).toBeGreaterThan(1000);
    // Another client is not affected.
    await expect(endpoint.client.call('rooms', { auth: auth('reader') })).resolves.toBeDefined();
  });

  it('a revoked token replayed after revocation is refused', async () => {
    await expect(endpoint.client.call('rooms', { auth: auth('reader') })).resolves.toBeDefined();
    await revokeClient(policyPath, 'reader');
    await waitUntil(
      'the endpoint to reload the policy',
      async () =>
        (await refusal(endpoint.client.call('rooms', { auth: auth('reader') })).catch(() => null))
          ?.code === 'UNAUTHENTICATED',
      { ...poll, timeoutMs: 10_000 },
    );
    const reloads = (await auditEntries()).filter((e) => e.action === 'policy.reload');
    expect(reloads.at(-1)).toMatchObject({ decision: 'info', reason: 'OK' });
  });
});

describe('rooms, messages and the event stream through the contract', () => {
  let roomX: string;
  let roomY: string;

  it('creates encrypted rooms, sends (and replies), and reads history decrypted', async () => {
    const c = endpoint.client;
    ({ roomId: roomX } = await c.call('createRoom', {
      auth: auth('full'),
      invite: [bob.userId],
      name: 'x',
    }));
    ({ roomId: roomY } = await c.call('createRoom', { auth: auth('full'), invite: [bob.userId] }));
    await bob.acceptInvite(roomX);
    await bob.acceptInvite(roomY);
    await bob.waitForMember(roomX, alice.userId);
    const fromBob = await bob.sendText(roomX, 'hello from bob');
    await c.call('send', { auth: auth('full'), roomId: roomX, body: 'hi bob', replyTo: fromBob });
    const atBob = await bob.waitForMessage(roomX, 'hi bob');
    expect(atBob.encrypted).toBe(true);
    await waitUntil(
      'the reply and bob message in the timeline',
      async () => {
        const { items } = await c.call('timeline', {
          auth: auth('full'),
          roomId: roomX,
          limit: 10,
        });
        const reply = items.find((i) => i.body === 'hi bob');
        const original = items.find((i) => i.body === 'hello from bob');
        return (
          reply?.replyTo === fromBob &&
          original?.decrypted === true &&
          original.sender === bob.userId &&
          original.senderDevice === bob.deviceId
        );
      },
      poll,
    );
    const { rooms } = await c.call('rooms', { auth: auth('full') });
    expect(rooms.map((r) => r.roomId).sort()).toEqual([roomX, roomY].sort());
    expect(rooms.every((r) => r.roomKeyRecipients === 'cross-signed')).toBe(true);
    const { contacts } = await c.call('contacts', { auth: auth('full') });
    const bobContact = contacts.find((x) => x.userId === bob.userId);
    expect(bobContact?.rooms.sort()).toEqual([roomX, roomY].sort());
    const one = await c.call('contact', { auth: auth('full'), userId: bob.userId });
    expect(one.userId).toBe(bob.userId);
    for (const stranger of ['@nobody:localhost', '@x:example.org', alice.userId]) {
      const none = await refusal(c.call('contact', { auth: auth('full'), userId: stranger }));
      expect(none.code).toBe('NOT_FOUND');
    }
    expect(bobContact?.devices).toContainEqual({
      deviceId: bob.deviceId,
      crossSignedByOwner: true,
      verified: false,
    });
  });

  it('refuses rooms the endpoint is not in, and bad pagination tokens, with 4xx-class codes', async () => {
    const c = endpoint.client;
    const unknown = await refusal(
      c.call('timeline', { auth: auth('full'), roomId: '!nope:example.org', limit: 5 }),
    );
    expect(unknown.code).toBe('NOT_FOUND');
    const badFrom = await refusal(
      c.call('timeline', { auth: auth('full'), roomId: roomX, limit: 5, from: 'garbage' }),
    );
    expect(['INVALID_REQUEST', 'NOT_FOUND']).toContain(badFrom.code);
    const sendUnknown = await refusal(
      c.call('send', { auth: auth('full'), roomId: '!nope:example.org', body: 'x' }),
    );
    expect(sendUnknown.code).toBe('NOT_FOUND');
  });

  it('a page of large messages is cut to fit one answer, and paging still yields every one', async () => {
    // 20 messages of 40 kB each (near the homeserver's 64 KiB event limit once encrypted): too
    // much for one answer of the contract (1 MiB frames).
    const big = Array.from(
      { length: 20 },
      (_, i) => `${String(i).padStart(2, '0')}${'x'.repeat(40_000)}`,
    );
    for (const body of big) await bob.sendText(roomY, body);
    const c = endpoint.client;
    await waitUntil(
      'every large message to be readable through the pages',
      async () => {
        const items = await readTimeline(c, tokens.full ?? '', roomY, 200);
        return big.every((b) => items.some((i) => i.body === b));
      },
      poll,
    );
    const first = await c.call('timeline', { auth: auth('full'), roomId: roomY, limit: 20 });
    expect(first.items.length).toBeGreaterThan(0);
    expect(first.items.length).toBeLessThan(20);
    expect(first.next).toBeDefined();
  }, 90_000);

  it('a client limited to one room sees only that room, in lists and on its stream', async () => {
    const c = endpoint.client;
    const limited = await addClient(policyPath, {
      name: 'limited',
      capabilities: ['rooms.read', 'messages.read', 'events.stream', 'rooms.create'],
      rooms: [roomX],
      requestsPerMinute: 60_000,
    });
    const lim = { token: limited.token };
    await waitUntil(
      'the new client to be loaded',
      () =>
        c.call('status', { auth: lim }).then(
          () => true,
          () => false,
        ),
      { ...poll, timeoutMs: 10_000 },
    );
    const { rooms } = await c.call('rooms', { auth: lim });
    expect(rooms.map((r) => r.roomId)).toEqual([roomX]);
    expect((await refusal(c.call('timeline', { auth: lim, roomId: roomY, limit: 5 }))).code).toBe(
      'FORBIDDEN_ROOM',
    );
    // It could not use a room it created, so it may not create one.
    expect((await refusal(c.call('createRoom', { auth: lim, invite: [] }))).code).toBe(
      'FORBIDDEN_ROOM',
    );

    const subLimited = await c.call('subscribe', { auth: lim });
    const subFull = await c.call('subscribe', { auth: auth('full') });
    const subStreamer = await c.call('subscribe', { auth: auth('streamer') });
    await bob.sendText(roomY, 'in Y');
    await bob.sendText(roomX, 'in X');

    const collect = async (
      a: { token: string },
      sub: { subscription: string; cursor: number },
      until: (bodies: string[]) => boolean,
      forMs = 30_000,
    ): Promise<{ bodies: string[]; types: string[] }> => {
      const bodies: string[] = [];
      const types: string[] = [];
      let after = sub.cursor;
      const deadline = Date.now() + forMs;
      while (!until(bodies) && Date.now() < deadline) {
        const page = await c.call('events', {
          auth: a,
          subscription: sub.subscription,
          after,
          waitMs: 1000,
        });
        expect(page.gap).toBe(false);
        for (const e of page.events) {
          types.push(e.type);
          if (e.type === 'message') {
            expect(e.seq).toBeGreaterThan(after);
            bodies.push(e.item.body ?? '');
          }
        }
        after = page.cursor;
      }
      return { bodies, types };
    };
    const full = await collect(
      auth('full'),
      subFull,
      (b) => b.includes('in X') && b.includes('in Y'),
    );
    expect(full.bodies.filter((b) => b.startsWith('in '))).toEqual(['in Y', 'in X']);
    const lim2 = await collect(lim, subLimited, (b) => b.includes('in X'));
    expect(lim2.bodies).toEqual(['in X']);
    // Without messages.read a stream carries no messages (only room changes).
    const streamer = await collect(auth('streamer'), subStreamer, () => false, 3000);
    expect(streamer.types).not.toContain('message');

    // Another client's subscription id is refused.
    const stolen = await refusal(
      c.call('events', {
        auth: auth('streamer'),
        subscription: subFull.subscription,
        after: subFull.cursor,
        waitMs: 0,
      }),
    );
    expect(stolen.code).toBe('NOT_FOUND');
    await c.call('unsubscribe', { auth: auth('full'), subscription: subFull.subscription });
  }, 90_000);
});

describe('the audit log', () => {
  it('has every decision, no message text or token, a valid chain, and shows tampering', async () => {
    const entries = await auditEntries();
    expect(entries.length).toBeGreaterThan(20);
    const text = await readFile(auditLog, 'utf8');
    for (const secret of ['hello from bob', 'hi bob', 'in X', ...Object.values(tokens)]) {
      expect(text).not.toContain(secret);
    }
    for (const t of Object.values(tokens)) expect(text).not.toContain(tokenSha256(t));
    const actions = new Set(entries.map((e) => e.action));
    for (const a of ['status', 'rooms.read', 'messages.read', 'messages.send', 'rooms.create']) {
      expect(actions).toContain(a);
    }
    expect(await verifyAuditLog(auditLog)).toMatchObject({ ok: true });

    // Change one field of one entry in a copy: the verifier names that entry.
    const copy = `${auditLog}.copy`;
    await cp(auditLog, copy);
    const lines = (await readFile(copy, 'utf8')).trim().split('\n');
    const victim = Math.floor(lines.length / 2);
    const original = lines[victim] ?? '';
    lines[victim] = original.replace(/"decision":"(allow|deny|info)"/, (_, d: string) =>
      d === 'allow' ? '"decision":"deny"' : '"decision":"allow"',
    );
    expect(lines[victim]).not.toBe(original);
    await writeFile(copy, `${lines.join('\n')}\n`);
    const result = await verifyAuditLog(copy);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.broken.seq).toBe(victim + 1);
  });

  it('the endpoint wrote nothing to stderr about internal errors', () => {
    expect(stderr.filter((l) => /internal error/.test(l))).toEqual([]);
  });
});

describe('cutting entries off the end of the audit log', () => {
  it('is noticed at the next start (the head is kept in the sealed store)', async () => {
    await endpoint.stop();
    const lines = (await readFile(auditLog, 'utf8')).trim().split('\n');
    await writeFile(auditLog, `${lines.slice(0, -5).join('\n')}\n`);
    // The shortened chain still verifies on its own: that is why the head is kept elsewhere.
    expect(await verifyAuditLog(auditLog)).toMatchObject({ ok: true });
    const restartErr: string[] = [];
    endpoint = await spawnEndpoint(join(dir, 'endpoint.json'), {
      onStderr: (l) => restartErr.push(l),
    });
    expect(restartErr.some((l) => /SECURITY: the audit log ends at entry/.test(l))).toBe(true);
    const entries = await auditEntries();
    expect(
      entries.some((e) => e.action === 'audit.recover' && e.reason === 'AUDIT_TRUNCATED'),
    ).toBe(true);
    // And the endpoint serves on, its chain intact from there.
    await expect(endpoint.client.call('status', { auth: auth('full') })).resolves.toBeDefined();
    expect(await verifyAuditLog(auditLog)).toMatchObject({ ok: true });
  }, 120_000);
});
