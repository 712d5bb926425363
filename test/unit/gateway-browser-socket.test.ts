import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayRefusal } from '../../endpoint/contract.ts';
import { buildGateway } from '../../endpoint/untrusted/gateway/index.ts';
import { UI_CSP, allowedHosts, refusal } from '../../endpoint/untrusted/gateway/browser/index.ts';
import { type FakeEndpoint, ROOM, TOKEN, fakeEndpoint } from './gateway-helpers.ts';

// Security review of the web UI listener: the Host / Origin / Fetch Metadata guard, over a real
// socket (so Node's own header handling is part of what is tested), with the request forms a
// rebinding or CSRF attempt could take. Everything here pins behaviour that currently holds.

describe('refusal(): edge forms of Host, Origin and Sec-Fetch-Site', () => {
  const PORT = 8008;
  const HOSTS = { hosts: allowedHosts('127.0.0.1', PORT) };
  const V6 = { hosts: allowedHosts('::1', PORT) };
  const ok = {
    method: 'GET',
    host: `127.0.0.1:${PORT}`,
    origin: undefined,
    secFetchSite: undefined,
  };

  it('accepts only the exact name:port, whatever the spelling of a look-alike', () => {
    for (const host of [
      `127.0.0.1.:${PORT}`,
      `localhost.:${PORT}`,
      `user@127.0.0.1:${PORT}`,
      `127.0.0.1:${PORT}@evil.example`,
      `127.0.0.1:0${PORT}`,
      `127.0.0.1:${PORT}.`,
      `127.1:${PORT}`,
      `2130706433:${PORT}`,
      `0x7f.0.0.1:${PORT}`,
      `127.0.0.1:${PORT} `,
      ` 127.0.0.1:${PORT}`,
      `127.0.0.1:${PORT},evil.example`,
      `[::ffff:127.0.0.1]:${PORT}`,
      `[::1]:${PORT}`,
      `::1:${PORT}`,
      `sub.localhost:${PORT}`,
      '',
    ]) {
      expect(refusal({ ...ok, host }, HOSTS), JSON.stringify(host)).toBe('FORBIDDEN_HOST');
    }
    for (const host of [`[0:0:0:0:0:0:0:1]:${PORT}`, `[::1]:0${PORT}`, `::1:${PORT}`]) {
      expect(refusal({ ...ok, host }, V6), host).toBe('FORBIDDEN_HOST');
    }
    expect(refusal({ ...ok, host: `[::1]:${PORT}` }, V6)).toBeUndefined();
  });

  it('compares the Origin as a whole, for every method, and refuses any unknown Fetch Metadata', () => {
    for (const origin of [
      `http://127.0.0.1:${PORT}/`,
      `http://127.0.0.1:${PORT}.`,
      `http://127.0.0.1:${PORT}, http://127.0.0.1:${PORT}`,
      `http://127.0.0.1:${PORT} `,
      `http://user@127.0.0.1:${PORT}`,
      `http://127.0.0.1`,
      '',
    ]) {
      for (const method of ['GET', 'HEAD', 'POST']) {
        expect(refusal({ ...ok, method, origin }, HOSTS), `${method} ${origin}`).toBe(
          'FORBIDDEN_ORIGIN',
        );
      }
    }
    for (const site of ['same-site', 'cross-site', 'SAME-SITE', 'same-origin, cross-site', '']) {
      expect(refusal({ ...ok, secFetchSite: site }, HOSTS), site).toBe('CROSS_SITE');
    }
    // A lower-case method is a different method to HTTP: never "safe".
    expect(refusal({ ...ok, method: 'get' }, HOSTS)).toBe('FORBIDDEN_ORIGIN');
  });
});

describe('the UI listener over a real socket', () => {
  let fake: FakeEndpoint;
  let app: FastifyInstance;
  let port = 0;
  const reported: GatewayRefusal[] = [];
  const hosts = new Set<string>();

  beforeAll(async () => {
    fake = fakeEndpoint();
    app = buildGateway({
      endpoint: fake.client,
      browser: {
        origins: { hosts },
        files: new Map([
          [
            'index.html',
            {
              body: Buffer.from('<!doctype html><title>ui</title>'),
              type: 'text/html; charset=utf-8',
            },
          ],
        ]),
        report: (r) => reported.push(r),
      },
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = (app.server.address() as AddressInfo).port;
    for (const h of allowedHosts('127.0.0.1', port)) hosts.add(h);
  });
  afterAll(async () => {
    await app.close();
    fake.close();
  });

  /** One raw HTTP/1.x request; resolves with the status code and the raw head. */
  function raw(request: string): Promise<{ status: number; head: string }> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1');
      let data = '';
      socket.setEncoding('latin1');
      socket.on('data', (d: string) => {
        data += d;
      });
      socket.on('error', reject);
      socket.on('close', () => {
        const head = data.split('\r\n\r\n')[0] ?? '';
        resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0), head });
      });
      socket.write(request);
    });
  }

  const self = () => `127.0.0.1:${port}`;
  const send = (target: string, headers: string[], method = 'POST') =>
    raw(
      `${method} ${target} HTTP/1.1\r\n${headers.join('\r\n')}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{"body":"hi"}',
    );
  const messages = () => `/v1/rooms/${encodeURIComponent(ROOM)}/messages`;
  const sends = () => fake.calls.filter((c) => c.method === 'send').length;

  it('lets the UI itself send (the control for what follows)', async () => {
    const before = sends();
    const res = await send(messages(), [
      `Host: ${self()}`,
      `Origin: http://${self()}`,
      'Sec-Fetch-Site: same-origin',
      `Authorization: Bearer ${TOKEN}`,
    ]);
    expect(res.status).toBe(202);
    expect(sends()).toBe(before + 1);
  });

  it('refuses a second Host (the first one ours), a second Origin, and Host with userinfo', async () => {
    const before = sends();
    const attempts: string[][] = [
      [`Host: ${self()}`, 'Host: evil.example', `Origin: http://${self()}`],
      [`Host: ${self()}`, `Origin: http://${self()}`, 'Origin: http://evil.example'],
      [`Host: ${self()}`, `Origin: http://${self()}`, `Origin: http://${self()}`],
      [`Host: x@${self()}`, `Origin: http://${self()}`],
      [`Host: ${self()}.`, `Origin: http://${self()}.`],
      [`Host: LOCALHOST.:${port}`, `Origin: http://localhost.:${port}`],
      [
        `Host: ${self()}`,
        `Origin: http://${self()}`,
        'Sec-Fetch-Site: same-origin',
        'Sec-Fetch-Site: same-site',
      ],
    ];
    for (const headers of attempts) {
      const res = await send(messages(), [...headers, `Authorization: Bearer ${TOKEN}`]);
      expect([400, 403], headers.join(' | ')).toContain(res.status);
    }
    expect(sends()).toBe(before);
  });

  it('an absolute-form target does not replace the Host that was checked', async () => {
    // A browser never sends these to an origin server, but a rebinding page's Host must not be
    // washed clean by a target naming us, nor ours made foreign by a target naming another.
    const before = sends();
    const foreignHost = await send(`http://${self()}${messages()}`, [
      'Host: evil.example',
      `Origin: http://${self()}`,
      `Authorization: Bearer ${TOKEN}`,
    ]);
    expect(foreignHost.status).toBe(403);
    expect(sends()).toBe(before);
    const get = await raw(
      `GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n`,
    );
    expect(get.status).toBe(403);
  });

  it('refuses HTTP/1.0 without Host, and every 404 and 405 on a foreign Host is a refusal too', async () => {
    expect((await raw('GET / HTTP/1.0\r\n\r\n')).status).toBe(403);
    for (const target of ['/nope', '/v1/nope', '/v1/status']) {
      const res = await raw(
        `PUT ${target} HTTP/1.1\r\nHost: evil.example:${port}\r\nConnection: close\r\n\r\n`,
      );
      expect(res.status, target).toBe(403);
    }
  });

  it('never answers with CORS headers, and answers with nosniff and the CSP, refused or not', async () => {
    const page = await raw(`GET / HTTP/1.1\r\nHost: ${self()}\r\nConnection: close\r\n\r\n`);
    expect(page.status).toBe(200);
    expect(page.head.toLowerCase()).toContain(`content-security-policy: ${UI_CSP.toLowerCase()}`);
    const preflight = await raw(
      `OPTIONS ${messages()} HTTP/1.1\r\nHost: ${self()}\r\nOrigin: http://evil.example\r\n` +
        'Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n' +
        'Connection: close\r\n\r\n',
    );
    expect(preflight.status).toBe(403);
    for (const res of [page, preflight]) {
      expect(res.head.toLowerCase()).not.toContain('access-control-');
      expect(res.head.toLowerCase()).toContain('x-content-type-options: nosniff');
      expect(res.head.toLowerCase()).toContain('x-frame-options: deny');
    }
  });

  it('puts each refusal on record', () => {
    expect(reported.length).toBeGreaterThan(0);
    expect(new Set(reported)).toEqual(
      new Set(['FORBIDDEN_HOST', 'FORBIDDEN_ORIGIN', 'CROSS_SITE', 'PREFLIGHT']),
    );
  });
});
