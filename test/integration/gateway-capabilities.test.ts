import { stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SpawnedGateway, openEventStream } from '../../endpoint/untrusted/gateway/index.ts';
import { CAPABILITIES, type Capability } from '../../policy/index.ts';
import {
  type ClientSpec,
  StockPeer,
  type SynapseUser,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// The capability matrix, over HTTP through the real gateway, endpoint and vault processes:
// every route, called by a client holding exactly one capability and by one holding all but
// one, for every capability, and with no token. A route is allowed exactly when the client
// holds its capability (status: any valid token), and refused with 403 FORBIDDEN_CAPABILITY
// otherwise, never with a 5xx.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(async () => startSwtpm({ unix: true, accessibleTo: await vaultUser() }));

/** Every capability has routes now. */
const ROUTED: readonly Capability[] = CAPABILITIES;

interface Route {
  name: string;
  capability: Capability | null;
  /** Makes the request; returns the status and the error code, if any. */
  call(token: string | undefined): Promise<{ status: number; code?: string }>;
  /** Statuses that mean "allowed" for this route. */
  allowed: number[];
}

let stack: LaunchedStack;
let gateway: SpawnedGateway;
let tokens: Record<string, string>;
let alice: SynapseUser;
let bob: StockPeer;
let carol: SynapseUser;
let room: string;
let readable: string;

const clients: ClientSpec[] = [
  { name: 'admin', capabilities: CAPABILITIES, requestsPerMinute: 60_000 },
  ...CAPABILITIES.map((c) => ({
    name: `only-${c.replace('.', '-')}`,
    capabilities: [c],
    requestsPerMinute: 60_000,
  })),
  ...CAPABILITIES.map((c) => ({
    name: `all-but-${c.replace('.', '-')}`,
    capabilities: CAPABILITIES.filter((x) => x !== c),
    requestsPerMinute: 60_000,
  })),
];

beforeAll(async () => {
  alice = await synapse().registerUser('alice');
  carol = await synapse().registerUser('carol');
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
  stack = await startStack({
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients,
  });
  tokens = stack.tokens;
  gateway = stack.gateway;
  const created = await gateway.request('/v1/rooms', {
    method: 'POST',
    token: tokens.admin ?? '',
    body: { invite: [bob.userId] },
  });
  expect(created.status).toBe(201);
  room = (created.json() as { roomId: string }).roomId;
  await bob.acceptInvite(room);
  await bob.waitForMember(room, alice.userId);
  readable = await bob.sendText(room, 'something to read');
}, 240_000);

afterAll(async () => {
  await stack.stop();
  await bob.stop();
});

const r = (path: string) => encodeURIComponent(path);

async function json(
  path: string,
  token: string | undefined,
  options: { method?: string; body?: unknown } = {},
): Promise<{ status: number; code?: string }> {
  const res = await gateway.request(path, {
    ...(token === undefined ? {} : { token }),
    ...options,
  });
  if (res.status < 300) return { status: res.status };
  const body = res.json() as { error?: { code?: string } };
  return { status: res.status, ...(body.error?.code ? { code: body.error.code } : {}) };
}

/** A fresh room for each allowed leave, so one case cannot spoil the next. */
async function roomToLeave(): Promise<string> {
  const res = await gateway.request('/v1/rooms', {
    method: 'POST',
    token: tokens.admin ?? '',
    body: {},
  });
  return (res.json() as { roomId: string }).roomId;
}

function routes(): Route[] {
  return [
    {
      name: 'GET /v1/status',
      capability: null,
      allowed: [200],
      call: (t) => json('/v1/status', t),
    },
    {
      name: 'GET /v1/rooms',
      capability: 'rooms.read',
      allowed: [200],
      call: (t) => json('/v1/rooms', t),
    },
    {
      name: 'POST /v1/rooms',
      capability: 'rooms.create',
      allowed: [201],
      call: (t) => json('/v1/rooms', t, { method: 'POST', body: { name: 'matrix' } }),
    },
    {
      name: 'GET timeline',
      capability: 'messages.read',
      allowed: [200],
      call: (t) => json(`/v1/rooms/${r(room)}/timeline?limit=5`, t),
    },
    {
      name: 'POST messages',
      capability: 'messages.send',
      allowed: [202],
      call: (t) =>
        json(`/v1/rooms/${r(room)}/messages`, t, { method: 'POST', body: { body: 'matrix' } }),
    },
    {
      name: 'POST reactions',
      capability: 'messages.send',
      allowed: [202],
      call: (t) =>
        json(`/v1/rooms/${r(room)}/reactions`, t, {
          method: 'POST',
          body: { eventId: readable, key: '👍' },
        }),
    },
    {
      name: 'GET /v1/outbox/failed',
      capability: 'messages.send',
      allowed: [200],
      call: (t) => json('/v1/outbox/failed', t),
    },
    {
      name: 'GET attachment',
      capability: 'messages.read',
      // A text message has no attachment: 404 from the endpoint, after the capability check.
      allowed: [404],
      call: (t) => json(`/v1/rooms/${r(room)}/events/${r(readable)}/attachment`, t),
    },
    {
      name: 'POST join',
      capability: 'rooms.join',
      // No invitation to this room (we are in it): 404 NOT_INVITED, after the capability check.
      allowed: [404],
      call: (t) => json(`/v1/rooms/${r(room)}/join`, t, { method: 'POST' }),
    },
    {
      name: 'POST invite',
      capability: 'rooms.manage',
      // Inviting someone already invited is refused by the homeserver: 404 from us, not 403.
      allowed: [200, 404],
      call: (t) =>
        json(`/v1/rooms/${r(room)}/invite`, t, { method: 'POST', body: { userId: carol.userId } }),
    },
    {
      name: 'POST leave',
      capability: 'rooms.manage',
      allowed: [200],
      call: async (t) => json(`/v1/rooms/${r(await roomToLeave())}/leave`, t, { method: 'POST' }),
    },
    {
      name: 'GET /v1/contacts',
      capability: 'contacts.read',
      allowed: [200],
      call: (t) => json('/v1/contacts', t),
    },
    {
      name: 'GET /v1/contacts/{userId}',
      capability: 'contacts.read',
      allowed: [200],
      call: (t) => json(`/v1/contacts/${r(bob.userId)}`, t),
    },
    {
      name: 'GET /v1/verifications',
      capability: 'verification',
      allowed: [200],
      call: (t) => json('/v1/verifications', t),
    },
    {
      name: 'POST /v1/verifications',
      capability: 'verification',
      // A device bob does not have: the request is refused after authorisation.
      allowed: [404],
      call: (t) =>
        json('/v1/verifications', t, {
          method: 'POST',
          body: { userId: bob.userId, deviceId: 'NOSUCHDEVICE' },
        }),
    },
    ...(['', '/accept', '/confirm', '/cancel'] as const).map((step): Route => ({
      name: `${step === '' ? 'GET' : 'POST'} /v1/verifications/{flowId}${step}`,
      capability: 'verification',
      allowed: [404],
      call: (t) =>
        json(`/v1/verifications/no-such-flow${step}`, t, step === '' ? {} : { method: 'POST' }),
    })),
    ...(['acknowledge', 'withdraw-verification'] as const).map((action): Route => ({
      name: `POST /v1/contacts/{userId}/identity/${action}`,
      capability: 'verification',
      // bob's identity never changed and was never verified: nothing to do.
      allowed: [409],
      call: (t) => json(`/v1/contacts/${r(bob.userId)}/identity/${action}`, t, { method: 'POST' }),
    })),
    {
      name: 'GET /v1/contacts/{userId}/devices/{deviceId}/attestation',
      capability: 'attestation',
      // Never attested: an empty answer.
      allowed: [200],
      call: (t) => json(`/v1/contacts/${r(bob.userId)}/devices/NOSUCHDEVICE/attestation`, t),
    },
    {
      name: 'POST /v1/contacts/{userId}/devices/{deviceId}/attestation',
      capability: 'attestation',
      // A device bob does not have: the verdict is a failure, after authorisation.
      allowed: [200],
      call: (t) =>
        json(`/v1/contacts/${r(bob.userId)}/devices/NOSUCHDEVICE/attestation`, t, {
          method: 'POST',
        }),
    },
    {
      name: 'POST /v1/attestation/evidence',
      capability: 'attestation',
      allowed: [200],
      call: (t) =>
        json('/v1/attestation/evidence', t, {
          method: 'POST',
          body: {
            nonce: Buffer.alloc(32, 7).toString('base64'),
            verifier: { userId: '@auditor:example.org', deviceId: 'AUDIT' },
          },
        }),
    },
    {
      name: 'GET /v1/backup',
      capability: 'backup',
      // The vault has no backup key: the state says so.
      allowed: [200],
      call: (t) => json('/v1/backup', t),
    },
    ...(['', '/rotate', '/recover'] as const).map((step): Route => ({
      name: `POST /v1/backup${step}`,
      capability: 'backup',
      // No backup key in the vault: BACKUP_NO_KEY, after authorisation.
      allowed: [409],
      call: (t) => json(`/v1/backup${step}`, t, { method: 'POST', body: {} }),
    })),
    {
      name: 'GET /v1/events (SSE)',
      capability: 'events.stream',
      allowed: [200],
      call: async (t) => {
        const stream = await openEventStream(gateway.target, t === undefined ? {} : { token: t });
        stream.close();
        if (stream.status < 300) return { status: stream.status };
        return { status: stream.status };
      },
    },
  ];
}

describe('the capability matrix (every route x every capability set)', () => {
  it('covers every capability that has routes, and every route names its capability', () => {
    const covered = new Set(routes().map((x) => x.capability));
    for (const c of ROUTED) expect(covered).toContain(c);
  });

  it('no token: 401 on every route', async () => {
    for (const route of routes()) {
      const { status, code } = await route.call(undefined);
      expect({ route: route.name, status }).toEqual({ route: route.name, status: 401 });
      if (code !== undefined) expect(code).toBe('UNAUTHENTICATED');
    }
  });

  it('allowed exactly when the client holds the capability', async () => {
    const outcomes: string[] = [];
    const wrong: string[] = [];
    for (const client of clients) {
      const held = new Set(client.capabilities);
      for (const route of routes()) {
        const { status, code } = await route.call(tokens[client.name]);
        const shouldAllow = route.capability === null || held.has(route.capability);
        const allowed = route.allowed.includes(status);
        const forbidden = status === 403 && (code === 'FORBIDDEN_CAPABILITY' || code === undefined);
        outcomes.push(`${client.name} ${route.name} ${status}`);
        if (shouldAllow ? !allowed : !forbidden) {
          wrong.push(`${client.name} ${route.name}: ${status} ${code ?? ''}`);
        }
      }
    }
    expect(wrong).toEqual([]);
    expect(outcomes.length).toBe(clients.length * routes().length);
  }, 300_000);

  it('the socket is private to its owner', async () => {
    const info = await stat(gateway.socketPath ?? '');
    expect(info.isSocket()).toBe(true);
    expect(info.mode & 0o777).toBe(0o600);
  });

  it('nothing reached the logs as an internal error', () => {
    expect(stack.lines.filter((l) => /internal error|INTERNAL/.test(l))).toEqual([]);
  });
});
