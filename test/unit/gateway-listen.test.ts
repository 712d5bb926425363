import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { type Socket, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ConfigError,
  type Limits,
  ListenError,
  buildGateway,
  listenGateway,
  loadGatewayConfig,
} from '../../endpoint/untrusted/gateway/index.ts';
import { checkingIntervalMs } from '../../endpoint/untrusted/gateway/connections.ts';
import { gatewayRequest } from '../fixtures/gateway-client.ts';
import { type FakeEndpoint, TOKEN, fakeEndpoint } from './gateway-helpers.ts';

let dir: string;
let fake: FakeEndpoint;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gateway-'));
  fake = fakeEndpoint();
});
afterEach(async () => {
  fake.close();
  await rm(dir, { recursive: true, force: true });
});

describe('listenGateway: Unix socket', () => {
  it('creates the socket with mode 0600 and serves on it', async () => {
    const app = buildGateway({ endpoint: fake.client });
    const path = join(dir, 'gw.sock');
    const listening = await listenGateway(app, { socket: path });
    expect(listening.socketPath).toBe(path);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const res = await gatewayRequest({ socketPath: path }, '/v1/status', { token: TOKEN });
    expect(res.status).toBe(200);
    await app.close();
  });

  it('with a group: mode 0660, owned by that group', async () => {
    const gid = process.getgid?.() ?? 0;
    const app = buildGateway({ endpoint: fake.client });
    const path = join(dir, 'gw.sock');
    await listenGateway(app, { socket: path, socketGroup: gid });
    const info = await stat(path);
    expect(info.mode & 0o777).toBe(0o660);
    expect(info.gid).toBe(gid);
    await app.close();
  });

  it('refuses a directory writable by others', async () => {
    const open = join(dir, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    const app = buildGateway({ endpoint: fake.client });
    await expect(listenGateway(app, { socket: join(open, 'gw.sock') })).rejects.toThrow(
      /writable by others/,
    );
    await app.close();
  });

  it('refuses a directory that does not exist', async () => {
    const app = buildGateway({ endpoint: fake.client });
    await expect(listenGateway(app, { socket: join(dir, 'no', 'gw.sock') })).rejects.toThrow(
      ListenError,
    );
    await app.close();
  });

  it('refuses to replace a path that is not a socket', async () => {
    const path = join(dir, 'gw.sock');
    await writeFile(path, 'precious');
    const app = buildGateway({ endpoint: fake.client });
    await expect(listenGateway(app, { socket: path })).rejects.toThrow(/not a socket/);
    await app.close();
  });

  it('refuses a socket another process is listening on', async () => {
    const path = join(dir, 'gw.sock');
    const other = createServer();
    await new Promise<void>((r) => other.listen(path, r));
    const app = buildGateway({ endpoint: fake.client });
    await expect(listenGateway(app, { socket: path })).rejects.toThrow(/in use/);
    await app.close();
    await new Promise((r) => other.close(r));
  });

  it('removes a stale socket and listens', async () => {
    const path = join(dir, 'gw.sock');
    const old = createServer();
    await new Promise<void>((r) => old.listen(path, r));
    // A killed process leaves its socket file behind: keep the file, stop answering.
    (old as unknown as { _handle: { close(): void } | null })._handle?.close();
    const app = buildGateway({ endpoint: fake.client });
    await listenGateway(app, { socket: path });
    expect((await gatewayRequest({ socketPath: path }, '/v1/openapi.json')).status).toBe(200);
    await app.close();
  });
});

describe('connections: the cap sheds connections without a request, the cut-offs hold', () => {
  interface Held {
    socket: Socket;
    openedAt: number;
    closedAt: number | undefined;
    received: string;
  }
  const path = () => join(dir, 'gw.sock');
  const hold = (): Promise<Held> =>
    new Promise((resolve) => {
      const socket = connect(path());
      const h: Held = { socket, openedAt: 0, closedAt: undefined, received: '' };
      socket.setEncoding('latin1');
      socket.on('data', (c: string) => (h.received += c));
      socket.on('error', () => undefined);
      socket.once('close', () => (h.closedAt = performance.now()));
      socket.once('connect', () => {
        h.openedAt = performance.now();
        resolve(h);
      });
    });
  const get = (url: string, agent: Agent | false = false) =>
    new Promise<{ status: number; reused: boolean }>((resolve, reject) => {
      const req = request(
        { socketPath: path(), path: url, agent, headers: { authorization: `Bearer ${TOKEN}` } },
        (res) => {
          res.resume();
          res.once('end', () => {
            resolve({ status: res.statusCode ?? 0, reused: req.reusedSocket });
          });
        },
      );
      req.once('error', reject);
      req.end();
    });
  const serve = async (limits: Partial<Limits>) => {
    const app = buildGateway({ endpoint: fake.client, limits });
    await listenGateway(app, { socket: path() });
    return app;
  };

  it('checks the cut-offs every twentieth of the header cut-off, 25 ms to 250 ms', () => {
    expect(checkingIntervalMs(5_000)).toBe(250);
    expect(checkingIntervalMs(60_000)).toBe(250);
    expect(checkingIntervalMs(1_000)).toBe(50);
    expect(checkingIntervalMs(100)).toBe(25);
  });

  it('at the cap, a new client is served and the oldest idle connection is the one closed', async () => {
    const app = await serve({ maxConnections: 4 });
    const idle = [await hold(), await hold(), await hold(), await hold()];
    expect((await get('/v1/status')).status).toBe(200);
    await sleep(50);
    expect(idle.map((h) => h.closedAt !== undefined)).toEqual([true, false, false, false]);
    // A shed connection is just closed: it had no answer coming.
    expect(idle[0]?.received).toBe('');
    await app.close();
  });

  it('never sheds a request in progress: with every connection busy the new one is refused', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    fake.close();
    fake = fakeEndpoint({
      rooms: async () => {
        await gate;
        return { rooms: [] };
      },
    });
    const app = await serve({ maxConnections: 3 });
    const busy = [get('/v1/rooms'), get('/v1/rooms'), get('/v1/rooms')];
    await sleep(100);
    await expect(get('/v1/status')).rejects.toThrow(/ECONNRESET|socket hang up|EPIPE/);
    release();
    expect((await Promise.all(busy)).map((r) => r.status)).toEqual([200, 200, 200]);
    await app.close();
  });

  it('sheds an idle keep-alive connection only once no connection is still without a request', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    fake.close();
    fake = fakeEndpoint({
      rooms: async () => {
        await gate;
        return { rooms: [] };
      },
    });
    const app = await serve({ maxConnections: 3 });
    const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
    expect(await get('/v1/status', keepAlive)).toEqual({ status: 200, reused: false });
    // Full: the keep-alive connection (older) and two that never sent anything.
    const idle = [await hold(), await hold()];
    expect((await get('/v1/status')).status).toBe(200);
    await sleep(50);
    expect(idle.map((h) => h.closedAt !== undefined)).toEqual([true, false]);
    expect(await get('/v1/status', keepAlive)).toEqual({ status: 200, reused: true });
    // Now full with two requests in progress and the idle keep-alive one: that one goes.
    idle[1]?.socket.destroy();
    await sleep(50);
    const busy = [get('/v1/rooms'), get('/v1/rooms')];
    await sleep(100);
    expect((await get('/v1/status')).status).toBe(200);
    await sleep(50);
    expect(await get('/v1/status', keepAlive)).toEqual({ status: 200, reused: false });
    release();
    expect((await Promise.all(busy)).map((r) => r.status)).toEqual([200, 200]);
    keepAlive.destroy();
    await app.close();
  });

  it('closes a connection that sends nothing at the header cut-off, with a 408 in the API shape', async () => {
    const app = await serve({ headersTimeoutMs: 400 });
    const h = await hold();
    while (h.closedAt === undefined) await sleep(10);
    const lifetime = h.closedAt - h.openedAt;
    expect(lifetime).toBeGreaterThanOrEqual(380);
    expect(lifetime).toBeLessThan(400 + checkingIntervalMs(400) + 150);
    expect(h.received).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(h.received).toMatch(/\r\nconnection: close\r\n/);
    expect(JSON.parse(h.received.slice(h.received.indexOf('\r\n\r\n') + 4))).toEqual({
      error: { code: 'REQUEST_TIMEOUT', message: 'The request did not arrive in time.' },
    });
    await app.close();
  });
});

describe('listenGateway: TCP', () => {
  for (const host of ['0.0.0.0', '::', '192.168.1.1', 'localhost', 'example.org']) {
    it(`refuses the non-loopback host ${host}`, async () => {
      const app = buildGateway({ endpoint: fake.client });
      await expect(listenGateway(app, { tcp: { host, port: 0 } })).rejects.toThrow(
        /only 127\.0\.0\.1 and ::1/,
      );
      expect(app.server.listening).toBe(false);
      await app.close();
    });
  }

  it('listens on 127.0.0.1 when asked', async () => {
    const app = buildGateway({ endpoint: fake.client });
    const listening = await listenGateway(app, { tcp: { host: '127.0.0.1', port: 0 } });
    expect(listening.address).toMatch(/^http:\/\/127\.0\.0\.1:[0-9]+$/);
    const port = listening.tcp?.port ?? 0;
    expect((await gatewayRequest({ host: '127.0.0.1', port }, '/v1/openapi.json')).status).toBe(
      200,
    );
    await app.close();
  });
});

describe('gateway config', () => {
  const write = async (config: unknown) => {
    const path = join(dir, 'gateway.json');
    await writeFile(path, typeof config === 'string' ? config : JSON.stringify(config));
    return path;
  };

  it('resolves paths relative to the config file', async () => {
    const config = await loadGatewayConfig(
      await write({
        socket: 'run/gw.sock',
        socketGroup: 'users',
        endpointConfig: '../endpoint.json',
        limits: { maxSubscribers: 4 },
      }),
    );
    expect(config.listen).toEqual({ socket: join(dir, 'run/gw.sock'), socketGroup: 'users' });
    expect(config.endpointConfig).toBe(join(dir, '../endpoint.json'));
    expect(config.limits).toEqual({ maxSubscribers: 4 });
  });

  it('takes loopback TCP instead of a socket', async () => {
    const config = await loadGatewayConfig(
      await write({ tcp: { host: '::1', port: 8448 }, endpointConfig: 'e.json' }),
    );
    expect(config.listen).toEqual({ tcp: { host: '::1', port: 8448 } });
  });

  const bad: [string, unknown, RegExp][] = [
    ['not JSON', '{', /not valid JSON/],
    ['neither socket nor tcp', { endpointConfig: 'e.json' }, /either "socket" or "tcp"/],
    [
      'both socket and tcp',
      { socket: 's', tcp: { host: '127.0.0.1', port: 1 }, endpointConfig: 'e.json' },
      /either "socket" or "tcp"/,
    ],
    [
      'a non-loopback host',
      { tcp: { host: '0.0.0.0', port: 1 }, endpointConfig: 'e.json' },
      /config\.tcp\.host: the TCP host must be 127\.0\.0\.1 or ::1/,
    ],
    ['an unknown key', { socket: 's', endpointConfig: 'e', extra: 1 }, /unexpected field "extra"/],
    [
      'an unknown limit',
      { socket: 's', endpointConfig: 'e', limits: { speed: 1 } },
      /config\.limits: unexpected field "speed"/,
    ],
    [
      'a zero limit',
      { socket: 's', endpointConfig: 'e', limits: { maxInFlight: 0 } },
      /config\.limits\.maxInFlight/,
    ],
    ['no endpointConfig', { socket: 's' }, /config\.endpointConfig/],
  ];
  for (const [what, config, message] of bad) {
    it(`refuses ${what} in one line`, async () => {
      const error = await loadGatewayConfig(await write(config)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toMatch(message);
      expect((error as Error).message).not.toContain('\n');
    });
  }
});

describe('the gateway command', () => {
  const run = promisify(execFile);
  const main = join(import.meta.dirname, '../../endpoint/untrusted/gateway/main.ts');

  it('--help prints usage', async () => {
    const { stdout } = await run(process.execPath, [main, '--help']);
    expect(stdout).toMatch(
      /^Usage: node endpoint\/untrusted\/gateway\/main\.ts serve --config FILE/,
    );
  });

  it('usage and config errors are one line, exit 2 and 1', async () => {
    const fail = (args: string[]) =>
      run(process.execPath, [main, ...args]).then(
        () => ({ code: 0, stderr: '' }),
        (e: unknown) => e as { code: number; stderr: string },
      );
    const usage = await fail(['serve']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toBe('gateway: serve: --config FILE is required\n');
    const unknown = await fail(['s3cr3t-T0ken!']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).not.toContain('s3cr3t');
    const open = join(dir, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    const config = join(dir, 'gw.json');
    await writeFile(config, JSON.stringify({ socket: 'open/gw.sock', endpointConfig: 'e.json' }));
    const unsafe = await fail(['serve', '--config', config]);
    expect(unsafe.code).toBe(1);
    expect(unsafe.stderr).toMatch(
      /^gateway: refusing to create the socket in .*writable by others.*\n$/,
    );
    const missing = await fail(['serve', '--config', join(dir, 'none.json')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^gateway: cannot read the config .*none\.json: ENOENT\n$/);
  });
});
