import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { innermostPid } from '../../deploy/compartments/launcher.ts';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { type EndpointContract } from '../../endpoint/contract.ts';
import { type RpcClient, connectUnix, encodeFrame } from '../../keyvault/common/rpc/index.ts';
import {
  StockPeer,
  type SynapseUser,
  isAlive,
  makeTempDir,
  prepareCompartments,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// The gateway parses untrusted input, so it is the compartment most likely to be compromised
// or to crash. What it sends on its channel (an oversize or bogus length, garbage, a torn
// frame, a hang-up mid-request) may end that channel, never the endpoint: the endpoint, its
// vault, its store, its sync loop and its outbox run on, and the next gateway is served.
// First against the endpoint compartment with this test as the (fake) gateway, then through
// the launcher with the real gateway killed mid-request.
const isRoot = process.getuid?.() === 0;
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());
const unixTpm = useFixture(async () =>
  startSwtpm({ unix: true, ...(isRoot ? { accessibleTo: await vaultUser() } : {}) }),
);

let bob: StockPeer;

beforeAll(async () => {
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
}, 120_000);

afterAll(async () => {
  await bob.stop();
});

/** A raw peer on a stream: writes bytes as they are, decodes the frames that come back. */
interface FakeGateway {
  socket: Socket;
  frames: Record<string, unknown>[];
  /** Resolves with the frames received once the endpoint closed the connection. */
  closed: Promise<Record<string, unknown>[]>;
  next(n: number, timeoutMs?: number): Promise<Record<string, unknown>[]>;
}

function fakeGateway(socket: Socket): FakeGateway {
  const frames: Record<string, unknown>[] = [];
  let buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32BE(0)) {
      const length = buffer.readUInt32BE(0);
      frames.push(JSON.parse(buffer.subarray(4, 4 + length).toString('utf8')) as never);
      buffer = buffer.subarray(4 + length);
    }
  });
  socket.on('error', () => undefined);
  const closed = new Promise<Record<string, unknown>[]>((resolve) =>
    socket.once('close', () => {
      resolve(frames);
    }),
  );
  return {
    socket,
    frames,
    closed,
    async next(n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (frames.length < n && Date.now() < deadline) await sleep(20);
      return frames.splice(0, n);
    },
  };
}

const request = (id: number, method: string, params: unknown): Buffer =>
  encodeFrame(Buffer.from(JSON.stringify({ v: 1, kind: 'request', id, method, params })));

const header = (length: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(length);
  return b;
};

/** Waits for the peer to have `body`, and a moment more, then says how often it arrived. */
async function arrivals(room: string, body: string): Promise<number> {
  await bob.waitForMessage(room, body, 60_000);
  return bob.messages.filter((m) => m.roomId === room && m.body === body).length;
}

describe('the endpoint compartment and a fake gateway', () => {
  let dir: string;
  let alice: SynapseUser;
  let endpoint: SpawnedEndpoint;
  let gatewaySocket: string;
  let token: string;
  let room: string;
  let endpointPid: number;
  let vaultPid: number;
  const stderr: string[] = [];
  /** Every message queued before a bad frame, which must all reach bob exactly once. */
  const queued: string[] = [];
  let started = 0;
  let midRequestSent = false;

  beforeAll(async () => {
    dir = await makeTempDir('channel-resilience');
    alice = await synapse().registerUser('alice');
    const prepared = await prepareCompartments(dir, {
      homeserver: synapse().baseUrl,
      tpm: tpm(),
      user: alice,
    });
    token = prepared.tokens.test ?? '';
    gatewaySocket = join(dir, 'run', 'gateway.sock');
    endpoint = await spawnEndpoint(prepared.endpointConfig, {
      gatewaySocket,
      onStderr: (l) => stderr.push(l),
    });
    endpointPid = endpoint.process.pid ?? 0;
    const children = await readFile(`/proc/${endpointPid}/task/${endpointPid}/children`, 'utf8');
    vaultPid = Number(children.trim().split(/\s+/)[0]);
    ({ roomId: room } = await endpoint.client.call('createRoom', {
      auth: { token },
      invite: [bob.userId],
    }));
    await bob.acceptInvite(room);
    await bob.waitForMember(room, alice.userId);
    started = Date.now();
  }, 180_000);

  afterAll(async () => {
    await endpoint.stop();
    console.log(`the endpoint's log:\n${stderr.join('\n')}`);
  });

  /** A real client on a new channel, as a restarted gateway: the endpoint must answer it. */
  async function newGateway(): Promise<RpcClient<EndpointContract>> {
    const client = await endpoint.connect();
    const status = await client.call('status', { auth: { token } });
    expect(status.userId).toBe(alice.userId);
    expect(status.health.vault).toBe('available');
    return client;
  }

  /** Queues messages through a real channel (each call resolves once durably queued). */
  async function queue(tag: string, n = 3): Promise<void> {
    const client = await newGateway();
    for (let i = 0; i < n; i++) {
      const body = `${tag} ${i}`;
      await client.call('send', { auth: { token }, roomId: room, body });
      queued.push(body);
    }
  }

  function stillRunning(): void {
    expect(isAlive(endpointPid), 'the endpoint runs').toBe(true);
    expect(isAlive(vaultPid), 'its vault runs').toBe(true);
    expect(endpoint.process.exitCode).toBe(null);
    // No stack trace crossed into the log, whatever the gateway sent.
    expect(stderr.filter((l) => /^\s+at |Error: /.test(l))).toEqual([]);
  }

  it('a 64 MiB length prefix closes that channel only, with FRAME_TOO_LARGE', async () => {
    await queue('before 64 MiB');
    const fake = fakeGateway(await connectUnix(gatewaySocket));
    // The header and the start of the payload: the endpoint must not wait for (or keep) the rest.
    fake.socket.write(Buffer.concat([header(64 * 1024 * 1024), Buffer.alloc(256 * 1024, 0x41)]));
    const frames = await fake.closed;
    expect(frames).toEqual([
      {
        v: 1,
        kind: 'response',
        id: null,
        ok: false,
        error: {
          code: 'FRAME_TOO_LARGE',
          message: 'frame of 67108864 bytes exceeds the limit of 1048576 bytes',
        },
      },
    ]);
    // Logged with its code and reason, in one line (the log line may trail the close a little).
    const line = `endpoint: the gateway channel closed (FRAME_TOO_LARGE: frame of 67108864 bytes exceeds the limit of 1048576 bytes); the next gateway may connect on ${gatewaySocket}`;
    await waitUntil('the reason in the log', () => stderr.includes(line), {
      timeoutMs: 5000,
      intervalMs: 50,
    });
    stillRunning();
    await newGateway();
  });

  it('a 4 GiB length prefix, the same, before anything is allocated for it', async () => {
    await queue('before 4 GiB');
    const before = (await readFile(`/proc/${endpointPid}/status`, 'utf8')).match(
      /VmRSS:\s+(\d+)/,
    )?.[1];
    const fake = fakeGateway(await connectUnix(gatewaySocket));
    fake.socket.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    const [answer] = await fake.closed;
    expect(answer).toMatchObject({ id: null, ok: false, error: { code: 'FRAME_TOO_LARGE' } });
    const after = (await readFile(`/proc/${endpointPid}/status`, 'utf8')).match(
      /VmRSS:\s+(\d+)/,
    )?.[1];
    // Resident memory did not jump by anything like the announced size (kB).
    expect(Number(after) - Number(before)).toBeLessThan(64 * 1024);
    stillRunning();
    await newGateway();
  });

  it('garbage frames are answered with BAD_FRAME and the channel goes on; raw garbage closes it', async () => {
    await queue('before garbage');
    const fake = fakeGateway(await connectUnix(gatewaySocket));
    fake.socket.write(encodeFrame(randomBytes(1000))); // not JSON (nor UTF-8)
    fake.socket.write(encodeFrame(Buffer.from('{"v":1,"kind":"request","id":'))); // cut JSON
    fake.socket.write(
      encodeFrame(Buffer.from(JSON.stringify({ v: 2, kind: 'request', id: 7, method: 'x' }))),
    );
    fake.socket.write(encodeFrame(Buffer.from(JSON.stringify([1, 2, 3]))));
    fake.socket.write(request(8, 'noSuchMethod', {}));
    fake.socket.write(
      encodeFrame(
        Buffer.from(
          `{"v":1,"kind":"request","id":9,"method":"status","params":{"auth":{"token":${JSON.stringify(token)}},"__proto__":{"polluted":true}}}`,
        ),
      ),
    );
    fake.socket.write(request(10, 'status', { auth: { token } }));
    const answers = await fake.next(7);
    expect(answers.map((a) => [a.id, (a.error as { code?: string } | undefined)?.code])).toEqual([
      [null, 'BAD_FRAME'],
      [null, 'BAD_FRAME'],
      [7, 'BAD_FRAME'],
      [null, 'BAD_FRAME'],
      [8, 'UNKNOWN_METHOD'],
      [9, 'INVALID_PARAMS'],
      [10, undefined],
    ]);
    expect(answers[6]).toMatchObject({ ok: true, result: { userId: alice.userId } });
    // One line for the channel's malformed frames, not one per frame.
    expect(stderr.filter((l) => l.includes('a malformed frame from the gateway'))).toHaveLength(1);
    // Then bytes that are not frames at all (the first four read as a length over the bound).
    const junk = randomBytes(64 * 1024);
    junk[0] = 0xa5;
    fake.socket.write(junk);
    const [last] = await fake.closed;
    expect(last).toMatchObject({ id: null, error: { code: 'FRAME_TOO_LARGE' } });
    stillRunning();
    await newGateway();
  });

  it('a torn frame, then a hang-up: the channel is dropped, the endpoint runs on', async () => {
    await queue('before torn');
    const fake = fakeGateway(await connectUnix(gatewaySocket));
    const whole = request(1, 'status', { auth: { token } });
    fake.socket.write(whole.subarray(0, whole.length - 5));
    await sleep(100);
    fake.socket.destroy();
    await fake.closed;
    await waitUntil(
      'the endpoint to see the hang-up',
      () => stderr.some((l) => l.includes('the gateway channel closed (the gateway hung up)')),
      { timeoutMs: 5000, intervalMs: 50 },
    );
    stillRunning();
    await newGateway();
  });

  it('a gateway that hangs up mid-request: calls in flight are dropped, nothing is lost or doubled', async () => {
    await queue('before hang-up');
    const fake = fakeGateway(await connectUnix(gatewaySocket));
    fake.socket.write(request(1, 'subscribe', { auth: { token } }));
    const [subscribed] = await fake.next(1);
    const { subscription, cursor } = (
      subscribed as { result: { subscription: string; cursor: number } }
    ).result;
    // A long poll and a send in flight, then gone before either is answered.
    fake.socket.write(
      Buffer.concat([
        request(2, 'events', { auth: { token }, subscription, after: cursor, waitMs: 20_000 }),
        request(3, 'send', { auth: { token }, roomId: room, body: 'sent as it hung up' }),
      ]),
    );
    fake.socket.destroy();
    await fake.closed;
    await sleep(500);
    stillRunning();
    const client = await newGateway();
    // The send either was queued before the hang-up (then it goes out once) or was not: once
    // the outbox is empty and the room synced, the timeline says which.
    await waitUntil(
      'the outbox to empty',
      async () => (await client.call('status', { auth: { token } })).pendingSends === 0,
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    await sleep(3000);
    const { items } = await client.call('timeline', { auth: { token }, roomId: room, limit: 50 });
    midRequestSent = items.some((i) => i.body === 'sent as it hung up');
    if (midRequestSent) expect(await arrivals(room, 'sent as it hung up')).toBe(1);
  });

  it('everything queued before a bad frame reached the stock peer exactly once; sync runs on', async () => {
    const client = await newGateway();
    await client.call('send', { auth: { token }, roomId: room, body: 'after it all' });
    for (const body of [...queued, 'after it all']) {
      expect(await arrivals(room, body), body).toBe(1);
    }
    expect(
      bob.messages.filter((m) => m.body === 'sent as it hung up').length,
      'the send cut off by the hang-up',
    ).toBe(midRequestSent ? 1 : 0);
    // The sync loop was never interrupted: bob's message comes in, decrypted.
    await bob.sendText(room, 'from bob, after it all');
    await waitUntil(
      "bob's message in the endpoint's timeline",
      async () => {
        const { items } = await client.call('timeline', {
          auth: { token },
          roomId: room,
          limit: 50,
        });
        return items.some((i) => i.body === 'from bob, after it all' && i.decrypted);
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    const status = await client.call('status', { auth: { token } });
    expect(status.pendingSends).toBe(0);
    expect(status.health.storage).toBe('ok');
    // One endpoint process and one vault the whole time.
    expect(endpoint.process.pid).toBe(endpointPid);
    expect(isAlive(vaultPid)).toBe(true);
    console.log(
      `channel resilience: ${queued.length + 1} queued messages delivered once each (the send cut off mid-request: ${midRequestSent ? 'queued, delivered once' : 'not queued, not delivered'}), one endpoint process for ${Math.round((Date.now() - started) / 1000)} s`,
    );
  });

  it('stops cleanly on SIGTERM once no gateway is wanted (the socket file goes)', async () => {
    await endpoint.stop();
    expect(await endpoint.exited).toBe(0);
    await expect(connectUnix(gatewaySocket)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(isAlive(vaultPid)).toBe(false);
  });
});

describe.runIf(isRoot)(
  'launched: the real gateway dies mid-request, or its channel carries garbage',
  () => {
    let s: LaunchedStack;
    let room: string;
    let carol: SynapseUser;

    beforeAll(async () => {
      carol = await synapse().registerUser('carol');
      s = await startStack({ homeserver: synapse().baseUrl, tpm: unixTpm(), user: carol });
      const created = await s.gateway.request('/v1/rooms', {
        method: 'POST',
        token: s.tokens.test ?? '',
        body: { invite: [bob.userId] },
      });
      expect(created.status).toBe(201);
      room = (created.json() as { roomId: string }).roomId;
      await bob.acceptInvite(room);
      await bob.waitForMember(room, carol.userId);
    }, 240_000);

    afterAll(async () => {
      await s.stop();
    }, 60_000);

    const send = (body: string) =>
      s.gateway.request(`/v1/rooms/${encodeURIComponent(room)}/messages`, {
        method: 'POST',
        token: s.tokens.test ?? '',
        body: { body },
      });
    const pids = () => ({ endpoint: s.stack.pid('endpoint'), vault: s.stack.pid('vault') });

    it('a gateway killed mid-request is restarted alone; the endpoint and the vault run on', async () => {
      const before = pids();
      const restarts = s.stack.restarts;
      const bodies = ['launched 0', 'launched 1', 'launched 2'];
      for (const body of bodies) expect((await send(body)).status).toBe(202);
      // A long poll in flight through the gateway, then the gateway is gone.
      const polling = s.gateway
        .request('/v1/events?waitMs=20000', { token: s.tokens.test ?? '' })
        .catch(() => 'cut');
      await sleep(300);
      const restarted = s.stack.nextStart();
      process.kill(innermostPid(s.stack.pid('gateway') ?? 0), 'SIGKILL');
      await restarted;
      await polling;
      expect(s.stack.restarts).toBe(restarts + 1);
      expect(pids()).toEqual(before);
      expect(s.lines.some((l) => /gateway exited \(.*\); restarting it alone/.test(l))).toBe(true);
      expect(
        s.lines.some((l) => l.includes('the gateway channel closed (the gateway hung up)')),
      ).toBe(true);
      expect((await send('through the restarted gateway')).status).toBe(202);
      for (const body of [...bodies, 'through the restarted gateway']) {
        expect(await arrivals(room, body), body).toBe(1);
      }
    });

    it("garbage on the endpoint's channel (here from root, on its socket) ends that channel only", async () => {
      const before = pids();
      expect((await send('before the launched garbage')).status).toBe(202);
      const restarted = s.stack.nextStart();
      // Connecting takes the gateway's place (the socket is the launcher's way in, root's only):
      // the real gateway loses its channel, exits, and is restarted alone, as after a bad frame.
      const path = join(s.where.state, 'endpoint', 'gateway.sock');
      const fake = fakeGateway(await connectUnix(path));
      fake.socket.write(header(64 * 1024 * 1024));
      const [answer] = await fake.closed;
      expect(answer).toMatchObject({ id: null, error: { code: 'FRAME_TOO_LARGE' } });
      await restarted;
      expect(pids()).toEqual(before);
      expect(
        s.lines.some((l) =>
          l.includes('the gateway channel closed (FRAME_TOO_LARGE: frame of 67108864 bytes'),
        ),
      ).toBe(true);
      expect((await send('after the launched garbage')).status).toBe(202);
      for (const body of ['before the launched garbage', 'after the launched garbage']) {
        expect(await arrivals(room, body), body).toBe(1);
      }
    });
  },
);
