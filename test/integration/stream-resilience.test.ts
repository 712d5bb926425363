import { Agent, type IncomingMessage, request as httpRequest } from 'node:http';
import { stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type EventStream,
  type SpawnedGateway,
  type SseEvent,
  openEventStream,
} from '../../endpoint/untrusted/gateway/index.ts';
import { type SynapseUser, startSwtpm, startSynapse, waitUntil } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// Revocation, per-token fairness and slow readers, through the real gateway, endpoint and vault processes (each in
// its sandbox, as deployed) on a real Synapse:
// - a revoked token's open event stream ends within about a second, with a last frame saying
//   why (the endpoint wakes the waiting poll when it reloads the policy);
// - one token pipelining 1,000 requests gets 503s for its own surplus, while another token's
//   50 requests all succeed (each token has its own share of the gateway's in-flight slots);
// - a reader that stops reading is cut off with a last frame (SLOW_READER and the last id it
//   was given), and resuming with Last-Event-ID gets exactly what it missed.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(async () => startSwtpm({ unix: true, accessibleTo: await vaultUser() }));

/** The slow-reader cut-off is two heartbeats: 1 s here instead of the default 30 s. */
const HEARTBEAT_MS = 500;
const CUTOFF_MS = 2 * HEARTBEAT_MS;
const RPM = 60_000;
const REVOKED = ['revoked-0', 'revoked-1', 'revoked-2'];

let stack: LaunchedStack;
let gateway: SpawnedGateway;
let socketPath: string;
let alice: SynapseUser;
let room: string;
const tok = (name: string): string => stack.tokens[name] ?? '';

beforeAll(async () => {
  alice = await synapse().registerUser('alice');
  const reader = ['events.stream', 'rooms.read', 'messages.read'];
  stack = await startStack({
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients: [
      ...REVOKED.map((name) => ({ name, capabilities: reader, requestsPerMinute: RPM })),
      { name: 'flood', capabilities: ['rooms.read'], requestsPerMinute: RPM },
      { name: 'polite', capabilities: ['rooms.read'], requestsPerMinute: RPM },
      { name: 'slow', capabilities: reader, requestsPerMinute: RPM },
      { name: 'watcher', capabilities: reader, requestsPerMinute: RPM },
      {
        name: 'sender',
        capabilities: ['messages.send', 'rooms.create', 'rooms.read'],
        requestsPerMinute: RPM,
      },
    ],
    gatewayLimits: { heartbeatMs: HEARTBEAT_MS },
  });
  gateway = stack.gateway;
  if (gateway.socketPath === undefined) throw new Error('the stack gateway listens on a socket');
  socketPath = gateway.socketPath;
  const created = await gateway.request('/v1/rooms', {
    method: 'POST',
    token: tok('sender'),
    body: {},
  });
  expect(created.status).toBe(201);
  room = (created.json() as { roomId: string }).roomId;
}, 240_000);

afterAll(async () => {
  await (stack as LaunchedStack | undefined)?.stop();
});

describe('revocation ends open streams within about a second', () => {
  it('revoking a token during its stream: event: error UNAUTHENTICATED, then the end', async () => {
    const figures: number[] = [];
    for (const name of REVOKED) {
      const stream = await openEventStream(gateway.target, { token: tok(name) });
      expect(stream.status).toBe(200);
      // Let it settle into a long poll at the endpoint (the one that used to run on ~20 s).
      await sleep(1_500);
      await stack.revokeClient(name);
      // The moment of revocation: when the edited policy file was renamed into place.
      const revokedAt = (await stat(stack.policyPath)).mtimeMs;
      // Whatever else comes first (a health event), the stream's last frame says why it ended.
      let frame: SseEvent | undefined;
      do frame = await stream.next(10_000);
      while (frame !== undefined && frame.event !== 'error');
      await stream.ended;
      figures.push(Date.now() - revokedAt);
      expect(frame?.event).toBe('error');
      expect(JSON.parse(frame?.data ?? '{}')).toMatchObject({ error: { code: 'UNAUTHENTICATED' } });
      expect(await stream.next(1_000)).toBeUndefined();
      // And the token opens no new one.
      const again = await gateway.request('/v1/events', { token: tok(name) });
      expect(again.status).toBe(401);
    }
    process.stderr.write(
      `stream-resilience: revocation to stream end: ${figures.map((f) => `${Math.round(f)} ms`).join(', ')}\n`,
    );
    // The policy watcher polls every second; the rest is one file read and one wake-up.
    expect(Math.max(...figures)).toBeLessThan(1_500);
  }, 60_000);
});

describe('per-token fairness at the gateway', () => {
  it("one token keeping 1,000 pipelined requests in flight: another token's 50 all succeed", async () => {
    // The flood is sustained: every answer is followed by another request on its socket, so
    // the gateway holds 1,000 of them all the while the other token's requests arrive.
    const flood = pipelineFlood(tok('flood'), { sockets: 10, perSocket: 100 });
    await waitUntil('the flood to be answered', () => flood.answered() >= 1_000, {
      timeoutMs: 30_000,
      intervalMs: 5,
    });
    const agent = new Agent({ keepAlive: true, maxSockets: 50 });
    const polite = await Promise.all(
      Array.from({ length: 50 }, () => get('/v1/rooms', tok('polite'), agent)),
    );
    agent.destroy();
    const floodStatuses = await flood.stop();
    const ok = polite.filter((s) => s === 200).length;
    const count = (list: number[], status: number) => list.filter((s) => s === status).length;
    process.stderr.write(
      `stream-resilience: under a sustained flood (1,000 pipelined requests outstanding): the ` +
        `other token ${ok}/50 ok (${count(polite, 503)} x 503); the flood ` +
        `${count(floodStatuses, 200)} ok, ${count(floodStatuses, 503)} x 503 of ${floodStatuses.length}\n`,
    );
    expect(polite).toEqual(Array.from({ length: 50 }, () => 200));
    // The flood was refused its surplus (so it was a flood), and only with 503 BUSY.
    expect(count(floodStatuses, 503)).toBeGreaterThan(0);
    expect(count(floodStatuses, 200) + count(floodStatuses, 503)).toBe(floodStatuses.length);
    // Nothing stuck: the next request of each is served.
    expect(await get('/v1/rooms', tok('flood'))).toBe(200);
    expect(await get('/v1/rooms', tok('polite'))).toBe(200);
  }, 120_000);
});

describe('a slow reader is told, and resumes without loss', () => {
  it('cut off with SLOW_READER and its last id; Last-Event-ID replays the rest', async () => {
    const watcher = await collect('watcher');
    const slow = await pausedStream(tok('slow'));
    // Enough large messages to fill every buffer between the gateway and the stuck reader.
    const BIG = 40;
    const LATER = 5;
    const bodies = Array.from({ length: BIG }, (_, i) => `big-${i}-${'x'.repeat(30_000)}`);
    for (const body of bodies) await send(body);
    await waitUntil('the watcher to see every message', () => watcher.bodies().length >= BIG, {
      timeoutMs: 120_000,
      intervalMs: 100,
    });
    // The reader takes nothing for well over the cut-off...
    await sleep(CUTOFF_MS + 2_000);
    // ...and misses these entirely: sent after it was cut off.
    const later = Array.from({ length: LATER }, (_, i) => `later-${i}`);
    for (const body of later) await send(body);
    await waitUntil(
      'the watcher to see the later ones',
      () => watcher.bodies().length >= BIG + LATER,
      {
        timeoutMs: 60_000,
        intervalMs: 100,
      },
    );

    const frames = await slow.readAll();
    const last = frames.at(-1);
    expect(last?.event).toBe('error');
    const closing = JSON.parse(last?.data ?? '{}') as {
      error: { code: string; message: string };
      lastEventId: number;
    };
    expect(closing.error.code).toBe('SLOW_READER');
    const firstPart = messagesOf(frames);
    // It was cut off before it got everything (the point of the test).
    expect(firstPart.length).toBeLessThan(BIG + LATER);
    const lastId = closing.lastEventId;
    expect(last?.id).toBe(String(lastId));
    for (const frame of frames)
      if (frame.id !== undefined) expect(Number(frame.id)).toBeLessThanOrEqual(lastId);

    // Resume where it stopped: the rest, each once, or an explicit gap.
    const resumed = await openEventStream(gateway.target, {
      token: tok('slow'),
      lastEventId: String(lastId),
    });
    expect(resumed.status).toBe(200);
    const secondPart: string[] = [];
    let gap = false;
    const want = BIG + LATER - firstPart.length;
    while (secondPart.length < want && !gap) {
      const frame = await resumed.next(30_000);
      if (frame === undefined) break;
      if (frame.event === 'gap' && !frame.data.includes('roomId')) gap = true;
      if (frame.event === 'message') secondPart.push(bodyOf(frame));
    }
    resumed.close();
    watcher.stream.close();
    process.stderr.write(
      `stream-resilience: slow reader got ${firstPart.length} messages before the cut-off ` +
        `(last id ${lastId}), ${secondPart.length} on resume${gap ? ', and a gap' : ''}\n`,
    );
    if (!gap) {
      // Exactly every message, in order, none twice.
      expect([...firstPart, ...secondPart]).toEqual([...bodies, ...later]);
    }
  }, 300_000);
});

async function send(body: string): Promise<void> {
  const res = await gateway.request(`/v1/rooms/${encodeURIComponent(room)}/messages`, {
    method: 'POST',
    token: tok('sender'),
    body: { body },
  });
  expect(res.status).toBe(202);
}

function bodyOf(frame: SseEvent): string {
  const data = JSON.parse(frame.data) as { item?: { body?: string } };
  return data.item?.body ?? '';
}

function messagesOf(frames: SseEvent[]): string[] {
  return frames.filter((f) => f.event === 'message').map(bodyOf);
}

interface Collected {
  stream: EventStream;
  bodies(): string[];
}

async function collect(name: string): Promise<Collected> {
  const stream = await openEventStream(gateway.target, { token: tok(name) });
  expect(stream.status).toBe(200);
  const frames: SseEvent[] = [];
  void (async () => {
    for (;;) {
      const frame = await stream.next(3_600_000).catch(() => undefined);
      if (frame === undefined) return;
      frames.push(frame);
    }
  })();
  return { stream, bodies: () => messagesOf(frames) };
}

/** GET /v1/events on the gateway's socket, not read until readAll (a stuck UI). */
function pausedStream(token: string): Promise<{ readAll(): Promise<SseEvent[]> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      socketPath,
      path: '/v1/events',
      headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
    });
    req.on('error', reject);
    req.on('response', (res: IncomingMessage) => {
      if (res.statusCode !== 200) {
        reject(new Error(`GET /v1/events: ${res.statusCode ?? 0}`));
        return;
      }
      res.pause();
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      const ended = new Promise<void>((r) => {
        res.on('end', r);
        res.on('close', r);
      });
      resolve({
        async readAll() {
          res.resume();
          await ended;
          return parseFrames(Buffer.concat(chunks).toString('utf8'));
        },
      });
    });
    req.end();
  });
}

function parseFrames(text: string): SseEvent[] {
  const frames: SseEvent[] = [];
  for (const block of text.split('\n\n')) {
    const frame: SseEvent = { event: 'message', data: '' };
    let fields = 0;
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = line.slice(0, colon);
      const value = line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') frame.id = value;
      else if (field === 'event') frame.event = value;
      else if (field === 'data') frame.data = value;
      else continue;
      fields++;
    }
    if (fields > 0) frames.push(frame);
  }
  return frames;
}

/** One GET through an agent (keep-alive when given one); resolves with the status. */
function get(path: string, token: string, agent?: Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        socketPath,
        path,
        headers: { authorization: `Bearer ${token}` },
        ...(agent ? { agent } : {}),
      },
      (res) => {
        res.resume();
        res.on('end', () => {
          resolve(res.statusCode ?? 0);
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/**
 * `perSocket` GET /v1/rooms written back to back on each of `sockets` connections without
 * waiting for answers (HTTP/1.1 pipelining), and one more for every answer until `stop()`:
 * that many in the gateway at all times. `stop()` resolves with every status once the last
 * outstanding request is answered.
 */
function pipelineFlood(
  token: string,
  options: { sockets: number; perSocket: number },
): { stop(): Promise<number[]>; answered(): number } {
  let answered = 0;
  let stopped = false;
  const one = `GET /v1/rooms HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ${token}\r\n\r\n`;
  const sockets = Array.from(
    { length: options.sockets },
    () =>
      new Promise<number[]>((resolve, reject) => {
        const socket = connect(socketPath);
        const statuses: number[] = [];
        let sent = 0;
        let buffer = Buffer.alloc(0);
        socket.on('connect', () => {
          socket.write(one.repeat(options.perSocket));
          sent += options.perSocket;
        });
        socket.on('data', (chunk: Buffer) => {
          buffer = Buffer.concat([buffer, chunk]);
          let more = 0;
          for (;;) {
            const end = buffer.indexOf('\r\n\r\n');
            if (end < 0) break;
            const head = buffer.subarray(0, end).toString('latin1');
            const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? '0');
            if (buffer.length < end + 4 + length) break;
            statuses.push(Number(head.slice(9, 12)));
            answered++;
            buffer = buffer.subarray(end + 4 + length);
            if (!stopped) more++;
          }
          if (more > 0) {
            socket.write(one.repeat(more));
            sent += more;
          } else if (stopped && statuses.length === sent) {
            socket.end();
            resolve(statuses);
          }
        });
        socket.on('error', reject);
        socket.on('close', () => {
          resolve(statuses);
        });
      }),
  );
  return {
    answered: () => answered,
    stop: () => {
      stopped = true;
      return Promise.all(sockets).then((all) => all.flat());
    },
  };
}
