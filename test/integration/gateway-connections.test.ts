import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, type IncomingMessage, request } from 'node:http';
import { type Socket, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DEFAULT_LIMITS,
  buildGateway,
  errorBody,
  listenGateway,
} from '../../endpoint/untrusted/gateway/index.ts';
import { type FakeEndpoint, TOKEN, fakeEndpoint } from '../unit/gateway-helpers.ts';

// A local process that opens hundreds of connections and sends nothing (or
// trickles its headers a byte a second) must not lock the real clients out. The gateway is the
// real one, listening on a real Unix socket with the default limits (256 connections, the 5 s
// header cut-off); only the endpoint behind it is a fake, since nothing here reaches it but a
// status call.
const IDLE = 300;
const TRICKLING = 20;
const CUT_OFF_MS = DEFAULT_LIMITS.headersTimeoutMs;
/** How long the good client may retry: long enough to see Node's 30 s default check. */
const GIVE_UP_MS = 40_000;

let dir: string;
let socketPath: string;
let fake: FakeEndpoint;
let app: FastifyInstance;
const held: Held[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gateway-conn-'));
  socketPath = join(dir, 'gw.sock');
  fake = fakeEndpoint();
  app = buildGateway({ endpoint: fake.client });
  await listenGateway(app, { socket: socketPath });
});

afterEach(async () => {
  for (const h of held) h.stop();
  held.length = 0;
  await app.close();
  fake.close();
  await rm(dir, { recursive: true, force: true });
});

type Kind = 'idle' | 'trickling';

interface Held {
  kind: Kind;
  openedAt: number;
  closedAt: number | undefined;
  received: string;
  stop(): void;
}

/** A connection that sends nothing, or its request line and headers one byte a second. */
function hold(kind: Kind): Promise<Held> {
  const slow = `GET /v1/status HTTP/1.1\r\nHost: gateway\r\nX-Slow: ${'a'.repeat(200)}`;
  return new Promise((resolve) => {
    const socket: Socket = connect(socketPath);
    let timer: NodeJS.Timeout | undefined;
    let sent = 0;
    const h: Held = {
      kind,
      openedAt: 0,
      closedAt: undefined,
      received: '',
      stop() {
        clearInterval(timer);
        socket.destroy();
      },
    };
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (h.received += chunk));
    socket.on('error', () => undefined);
    socket.once('close', () => {
      clearInterval(timer);
      h.closedAt ??= performance.now();
      resolve(h);
    });
    socket.once('connect', () => {
      h.openedAt = performance.now();
      if (kind === 'trickling') {
        const byte = () => {
          if (sent < slow.length && socket.writable) socket.write(slow.charAt(sent++));
        };
        byte();
        timer = setInterval(byte, 1000);
      }
      resolve(h);
    });
  });
}

async function holdMany(kinds: Kind[]): Promise<Held[]> {
  const opened = await Promise.all(kinds.map((k) => hold(k)));
  held.push(...opened);
  return opened;
}

interface Served {
  ms: number;
  attempts: number;
  status: number;
  reused: boolean;
}

function get(path: string, agent: Agent | false, token?: string): Promise<Served> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        path,
        agent,
        headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
        timeout: 2_000,
      },
      (res: IncomingMessage) => {
        res.resume();
        res.once('end', () => {
          resolve({
            ms: performance.now() - started,
            attempts: 1,
            status: res.statusCode ?? 0,
            reused: req.reusedSocket,
          });
        });
        res.once('error', reject);
      },
    );
    req.once('timeout', () => req.destroy(new Error('no answer in time')));
    req.once('error', reject);
    req.end();
  });
}

/** What a client that retries on a reset sees: the time until it is first served. */
async function served(path: string, agent: Agent | false, token?: string): Promise<Served> {
  const started = performance.now();
  let attempts = 0;
  for (;;) {
    attempts += 1;
    try {
      const res = await get(path, agent, token);
      return { ...res, ms: performance.now() - started, attempts };
    } catch (e) {
      if (performance.now() - started > GIVE_UP_MS) throw e;
      await sleep(50);
    }
  }
}

const interleaved = (): Kind[] => [
  ...Array<Kind>(IDLE / 2).fill('idle'),
  ...Array<Kind>(TRICKLING).fill('trickling'),
  ...Array<Kind>(IDLE / 2).fill('idle'),
];

const ms = (n: number) => `${Math.round(n)} ms`;

describe('gateway connections: idle and trickling sockets do not lock out real clients', () => {
  it(`serves a good client within 1 s while ${IDLE} idle and ${TRICKLING} trickling sockets are held, and cuts them at ${CUT_OFF_MS} ms`, async () => {
    // A real client with a keep-alive connection from before the flood.
    const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
    expect((await get('/v1/status', keepAlive, TOKEN)).status).toBe(200);

    const flood = await holdMany(interleaved());
    await sleep(100);

    const status = await served('/v1/status', false, TOKEN);
    const openapi = await served('/v1/openapi.json', false);
    const again = await get('/v1/status', keepAlive, TOKEN);
    keepAlive.destroy();

    // Every held socket is closed: shed to admit others, or cut at the header cut-off.
    const lastOpened = Math.max(...flood.map((h) => h.openedAt));
    while (flood.some((h) => h.closedAt === undefined)) {
      if (performance.now() - lastOpened > CUT_OFF_MS + 5_000) break;
      await sleep(50);
    }
    const lifetime = (h: Held) => (h.closedAt ?? Infinity) - h.openedAt;
    const shed = flood.filter((h) => lifetime(h) < CUT_OFF_MS - 500);
    const cut = flood.filter((h) => lifetime(h) >= CUT_OFF_MS - 500);
    const cutLifetimes = cut.map(lifetime).sort((a, b) => a - b);
    const trickling = flood.filter((h) => h.kind === 'trickling');

    console.log(
      [
        `gateway under ${IDLE} idle + ${TRICKLING} trickling sockets (cap ${DEFAULT_LIMITS.maxConnections}):`,
        `  new client GET /v1/status served in ${ms(status.ms)} (${status.attempts} attempt(s))`,
        `  new client GET /v1/openapi.json served in ${ms(openapi.ms)} (${openapi.attempts} attempt(s))`,
        `  keep-alive client served in ${ms(again.ms)}, socket reused: ${again.reused}`,
        `  shed to admit others: ${shed.length}; cut by the ${CUT_OFF_MS} ms cut-off: ${cut.length}` +
          (cutLifetimes.length > 0
            ? ` after ${ms(cutLifetimes[0] ?? 0)}..${ms(cutLifetimes.at(-1) ?? 0)}`
            : ''),
      ].join('\n'),
    );

    expect(status.status).toBe(200);
    expect(status.attempts).toBe(1);
    expect(status.ms).toBeLessThan(1_000);
    expect(openapi.status).toBe(200);
    expect(openapi.ms).toBeLessThan(1_000);
    expect(again).toMatchObject({ status: 200, reused: true });
    expect(again.ms).toBeLessThan(1_000);

    expect(flood.every((h) => h.closedAt !== undefined)).toBe(true);
    // Oldest first: what was shed is the first idle ones, never the (younger) trickling ones.
    expect(shed.length).toBeGreaterThanOrEqual(IDLE + TRICKLING - DEFAULT_LIMITS.maxConnections);
    expect(shed.every((h) => h.kind === 'idle')).toBe(true);
    expect(Math.max(...shed.map((h) => flood.indexOf(h)))).toBeLessThan(IDLE / 2);
    // Everything else is cut at the stated time, not up to 30 s later.
    expect(cutLifetimes.at(-1) ?? 0).toBeLessThan(CUT_OFF_MS + 1_000);
    expect(trickling.every((h) => cut.includes(h))).toBe(true);
    // And it is told why, in the API's error shape.
    for (const h of trickling) {
      expect(h.received).toMatch(/^HTTP\/1\.1 408 /);
      const body = h.received.slice(h.received.indexOf('\r\n\r\n') + 4);
      expect(errorBody.parse(JSON.parse(body))).toEqual({
        error: { code: 'REQUEST_TIMEOUT', message: expect.any(String) as string },
      });
    }
  }, 60_000);

  it('keeps serving while the flood reconnects every socket it loses, past the cut-off', async () => {
    // Each flood socket is reopened as soon as the gateway closes it (shed or cut off).
    const flood = { on: true };
    const flooding = () => flood.on;
    const keepOpen = async (kind: Kind): Promise<void> => {
      while (flooding()) {
        const [h] = await holdMany([kind]);
        while (flooding() && h?.closedAt === undefined) await sleep(20);
      }
    };
    const flooders = interleaved().map((kind) => keepOpen(kind));
    await sleep(100);

    const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
    const fresh: Served[] = [];
    const reused: Served[] = [];
    const until = performance.now() + CUT_OFF_MS + 3_000;
    let tick = 0;
    while (performance.now() < until) {
      fresh.push(await served('/v1/status', false, TOKEN));
      if (tick++ % 4 === 0) reused.push(await served('/v1/status', keepAlive, TOKEN));
      await sleep(250);
    }
    flood.on = false;
    await Promise.all(flooders);
    keepAlive.destroy();

    const worst = (list: Served[]) => Math.max(...list.map((s) => s.ms));
    console.log(
      `gateway under a reconnecting flood of ${IDLE + TRICKLING} sockets for ${ms(CUT_OFF_MS + 3_000)}: ` +
        `${fresh.length} new-connection requests, worst ${ms(worst(fresh))}, ` +
        `max attempts ${Math.max(...fresh.map((s) => s.attempts))}; ` +
        `${reused.length} keep-alive requests, worst ${ms(worst(reused))}, ` +
        `${reused.filter((s) => s.reused).length} on a reused socket; ` +
        `${held.length} flood sockets opened in all`,
    );
    expect(fresh.every((s) => s.status === 200 && s.attempts === 1)).toBe(true);
    expect(worst(fresh)).toBeLessThan(1_000);
    expect(reused.every((s) => s.status === 200 && s.attempts === 1)).toBe(true);
    expect(worst(reused)).toBeLessThan(1_000);
    // The keep-alive client's connection survived the flood (the first request opened it).
    expect(reused.slice(1).every((s) => s.reused)).toBe(true);
  }, 60_000);
});
