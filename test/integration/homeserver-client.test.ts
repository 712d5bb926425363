import { type KeyObject, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  HomeserverClient,
  type LoginResult,
  MatrixApiError,
  type RoomEvent,
} from '../../endpoint/matrix/index.ts';
import { type SynapseUser, startSynapse } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// HomeserverClient against a real Synapse: every call the endpoint makes, checked by what the
// server stored or delivered, not by what the client says it did.
const synapse = useFixture(() => startSynapse());

interface Account {
  user: SynapseUser;
  client: HomeserverClient;
  session: LoginResult;
}

async function account(deviceId?: string): Promise<Account> {
  const user = await synapse().registerUser();
  const client = new HomeserverClient({ baseUrl: synapse().baseUrl });
  const session = await client.login(user.localpart, user.password, deviceId);
  return { user, client, session };
}

async function failure(promise: Promise<unknown>): Promise<MatrixApiError> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof MatrixApiError) return e;
    throw e;
  }
  throw new Error('expected a MatrixApiError');
}

const txn = (): string => `txn-${randomBytes(6).toString('hex')}`;

/** Matrix canonical JSON for the objects used here (no floats): sorted keys, no spaces. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function ed25519(): { publicKey: string; privateKey: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const der = publicKey.export({ format: 'der', type: 'spki' });
  return { publicKey: unpadded(der.subarray(der.length - 32)), privateKey };
}

function unpadded(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64').replace(/=+$/, '');
}

function signed<T extends object>(
  object: T,
  userId: string,
  keyId: string,
  key: KeyObject,
): T & { signatures: Record<string, Record<string, string>> } {
  const signature = unpadded(sign(null, Buffer.from(canonicalJson(object)), key));
  return { ...object, signatures: { [userId]: { [`ed25519:${keyId}`]: signature } } };
}

/** Just enough of a /keys/query answer to read the test's keys back (other fields kept). */
const signedKeys = z.looseObject({ keys: z.record(z.string(), z.string()) });
const keysQueryResult = z.object({
  device_keys: z.record(z.string(), z.record(z.string(), signedKeys)),
  master_keys: z.record(z.string(), signedKeys).optional(),
});

describe('HomeserverClient against Synapse', () => {
  it('keeps a given device id across two logins, and logs out', async () => {
    const user = await synapse().registerUser();
    const first = new HomeserverClient({ baseUrl: synapse().baseUrl });
    const second = new HomeserverClient({ baseUrl: synapse().baseUrl });
    const a = await first.login(user.localpart, user.password, 'ENDPOINTDEV');
    const b = await second.login(user.userId, user.password, 'ENDPOINTDEV');
    expect(a).toMatchObject({ userId: user.userId, deviceId: 'ENDPOINTDEV' });
    expect(b.deviceId).toBe('ENDPOINTDEV');
    expect(b.accessToken).not.toBe(a.accessToken);
    expect(first.deviceId).toBe('ENDPOINTDEV');

    const fresh = new HomeserverClient({ baseUrl: synapse().baseUrl });
    const other = await fresh.login(user.localpart, user.password);
    expect(other.deviceId).not.toBe('ENDPOINTDEV');
    await fresh.logout();
    expect(fresh.userId).toBeUndefined();
    await expect(failure(fresh.sync({}))).resolves.toMatchObject({ errcode: 'NOT_LOGGED_IN' });
    const stale = new HomeserverClient({ baseUrl: synapse().baseUrl, session: other });
    const error = await failure(stale.sync({}));
    expect(error).toMatchObject({ status: 401, errcode: 'M_UNKNOWN_TOKEN', retryable: false });
    expect(error.message).not.toContain(other.accessToken);
  });

  it('refuses a wrong password with 403 M_FORBIDDEN and never echoes it', async () => {
    const user = await synapse().registerUser();
    const client = new HomeserverClient({ baseUrl: synapse().baseUrl });
    const wrong = `${user.password}-wrong`;
    const error = await failure(client.login(user.localpart, wrong));
    expect(error).toMatchObject({ status: 403, errcode: 'M_FORBIDDEN', retryable: false });
    expect(error.message).toMatch(/^POST \/login: 403 M_FORBIDDEN/);
    expect(error.message).not.toContain(wrong);
    expect(JSON.stringify(error)).not.toContain(wrong);
    expect(client.userId).toBeUndefined();
  });

  it('creates encrypted rooms and manages membership between two users', async () => {
    const alice = await account();
    const bob = await account();
    const roomId = await alice.client.createRoom({
      name: 'hs-client',
      invite: [bob.session.userId],
      isDirect: true,
    });
    expect(roomId).toMatch(/^!/);
    const history = await alice.client.messages(roomId, { dir: 'b', limit: 50 });
    const encryption = history.chunk.find((e) => e.type === 'm.room.encryption');
    expect(encryption).toMatchObject({
      state_key: '',
      content: { algorithm: 'm.megolm.v1.aes-sha2' },
    });
    const create = history.chunk.find(
      (e) => e.type === 'm.room.member' && e.state_key === bob.session.userId,
    );
    expect(create?.content).toMatchObject({ membership: 'invite', is_direct: true });

    const membership = async (): Promise<Record<string, string>> =>
      Object.fromEntries((await alice.client.members(roomId)).map((m) => [m.userId, m.membership]));
    expect(await membership()).toEqual({
      [alice.session.userId]: 'join',
      [bob.session.userId]: 'invite',
    });
    await expect(bob.client.join(roomId)).resolves.toBe(roomId);
    expect(await membership()).toMatchObject({ [bob.session.userId]: 'join' });
    await bob.client.leave(roomId);
    // Those who left are not members: the list is who gets room keys.
    expect(await membership()).not.toHaveProperty(bob.session.userId);
    await alice.client.invite(roomId, bob.session.userId);
    expect(await membership()).toMatchObject({ [bob.session.userId]: 'invite' });

    const plain = await alice.client.createRoom({ encrypted: false });
    const plainHistory = await alice.client.messages(plain, { dir: 'b', limit: 50 });
    expect(plainHistory.chunk.some((e) => e.type === 'm.room.encryption')).toBe(false);
  });

  it('deduplicates a repeated txnId, paginates messages, and delivers events through sync', async () => {
    const alice = await account();
    const roomId = await alice.client.createRoom({});
    const initial = await alice.client.sync({ timeoutMs: 0 });
    expect(initial.rooms?.join?.[roomId]).toBeDefined();

    const id = txn();
    const content = { msgtype: 'm.text', body: `once ${id}` };
    const first = await alice.client.sendEvent(roomId, 'm.room.message', id, content);
    const again = await alice.client.sendEvent(roomId, 'm.room.message', id, content);
    expect(again).toBe(first);

    const bodies: string[] = [];
    for (let i = 0; i < 5; i++) {
      bodies.push(`page ${i}`);
      await alice.client.sendEvent(roomId, 'm.room.message', txn(), {
        msgtype: 'm.text',
        body: `page ${i}`,
      });
    }
    const seen: RoomEvent[] = [];
    let from: string | undefined;
    let pages = 0;
    for (;;) {
      const page = await alice.client.messages(roomId, {
        dir: 'b',
        limit: 2,
        ...(from !== undefined ? { from } : {}),
      });
      pages++;
      expect(page.chunk.length).toBeLessThanOrEqual(2);
      seen.push(...page.chunk);
      if (page.end === undefined || page.chunk.length === 0) break;
      from = page.end;
    }
    expect(pages).toBeGreaterThan(3);
    const texts = seen.filter((e) => e.type === 'm.room.message').map((e) => e.content.body);
    expect(texts).toEqual([...bodies].reverse().concat(`once ${id}`));
    expect(seen.filter((e) => e.event_id === first)).toHaveLength(1);

    // A long-poll from the last batch wakes up with the new event.
    const since = initial.next_batch;
    const polling = alice.client.sync({ since, timeoutMs: 10_000 });
    const later = await alice.client.sendEvent(roomId, 'm.room.message', txn(), {
      msgtype: 'm.text',
      body: 'late',
    });
    let sync = await polling;
    const timelineIds = (): string[] =>
      (sync.rooms?.join?.[roomId]?.timeline?.events ?? []).map((e) => e.event_id);
    for (let i = 0; i < 5 && !timelineIds().includes(later); i++) {
      sync = await alice.client.sync({ since: sync.next_batch, timeoutMs: 5_000 });
    }
    expect(timelineIds()).toContain(later);
  });

  it('sends to-device messages that the other device receives in its sync', async () => {
    const alice = await account();
    const bob = await account('BOBDEVICE');
    let since = (await bob.client.sync({ timeoutMs: 0 })).next_batch;
    await alice.client.sendToDevice('org.example.ping', txn(), {
      [bob.session.userId]: { BOBDEVICE: { hello: 'bob' } },
    });
    const received: unknown[] = [];
    for (let i = 0; i < 5 && received.length === 0; i++) {
      const sync = await bob.client.sync({ since, timeoutMs: 5_000 });
      since = sync.next_batch;
      received.push(...(sync.to_device?.events ?? []).filter((e) => e.type === 'org.example.ping'));
    }
    expect(received).toEqual([
      { type: 'org.example.ping', sender: alice.session.userId, content: { hello: 'bob' } },
    ]);
  });

  it('passes key uploads, queries and claims through as raw JSON', async () => {
    const alice = await account('ALICEKEYS');
    const bob = await account();
    const { userId, deviceId } = alice.session;
    const identity = ed25519();
    const curve = unpadded(randomBytes(32));
    const deviceKeys = signed(
      {
        user_id: userId,
        device_id: deviceId,
        algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
        keys: { [`curve25519:${deviceId}`]: curve, [`ed25519:${deviceId}`]: identity.publicKey },
      },
      userId,
      deviceId,
      identity.privateKey,
    );
    const otk = signed({ key: unpadded(randomBytes(32)) }, userId, deviceId, identity.privateKey);
    const uploaded = await alice.client.keysUpload(
      JSON.stringify({
        device_keys: deviceKeys,
        one_time_keys: { 'signed_curve25519:AAAAAQ': otk },
      }),
    );
    expect(JSON.parse(uploaded)).toEqual({ one_time_key_counts: { signed_curve25519: 1 } });

    const queried = await bob.client.keysQuery(JSON.stringify({ device_keys: { [userId]: [] } }));
    const device = keysQueryResult.parse(JSON.parse(queried)).device_keys[userId]?.[deviceId];
    expect(device).toMatchObject({ keys: deviceKeys.keys, signatures: deviceKeys.signatures });

    const claimed = await bob.client.keysClaim(
      JSON.stringify({ one_time_keys: { [userId]: { [deviceId]: 'signed_curve25519' } } }),
    );
    expect(JSON.parse(claimed)).toMatchObject({
      one_time_keys: { [userId]: { [deviceId]: { 'signed_curve25519:AAAAAQ': otk } } },
    });
  });

  it('uploads cross-signing keys, answering user-interactive auth when asked', async () => {
    const alice = await account();
    const { userId } = alice.session;
    const masterKey = (publicKey: string): object => ({
      master_key: {
        user_id: userId,
        usage: ['master'],
        keys: { [`ed25519:${publicKey}`]: publicKey },
      },
    });
    const first = ed25519().publicKey;
    // The first upload needs no UIA (MSC3967); replacing the keys does.
    await expect(alice.client.deviceSigningUpload(JSON.stringify(masterKey(first)))).resolves.toBe(
      '{}',
    );

    const second = ed25519().publicKey;
    const body = JSON.stringify(masterKey(second));
    await expect(failure(alice.client.deviceSigningUpload(body))).resolves.toMatchObject({
      status: 401,
      errcode: 'UIA_REQUIRED',
    });
    const auth = (password: string) =>
      ({
        type: 'm.login.password',
        identifier: { type: 'm.id.user', user: userId },
        password,
      }) as const;
    const wrong = `${alice.user.password}-wrong`;
    const refused = await failure(alice.client.deviceSigningUpload(body, auth(wrong)));
    expect(refused).toMatchObject({ status: 401, errcode: 'M_FORBIDDEN' });
    expect(JSON.stringify(refused)).not.toContain(wrong);
    await alice.client.deviceSigningUpload(body, auth(alice.user.password));

    const queried = await alice.client.keysQuery(JSON.stringify({ device_keys: { [userId]: [] } }));
    const master = keysQueryResult.parse(JSON.parse(queried)).master_keys?.[userId];
    expect(master?.keys).toEqual({ [`ed25519:${second}`]: second });
  });
});
