import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { GatewayRefusal } from '../../endpoint/contract.ts';
import { buildGateway } from '../../endpoint/untrusted/gateway/index.ts';
import {
  UI_CSP,
  allowedHosts,
  loadStaticFiles,
  refusal,
  refusalReporter,
} from '../../endpoint/untrusted/gateway/browser/index.ts';
import { type FakeEndpoint, ROOM, bearer, fakeEndpoint } from './gateway-helpers.ts';

// The web UI's listener faces every page the user's browser opens. A foreign page can make the
// browser send requests here (CSRF), or rebind its own name to 127.0.0.1 (DNS rebinding); each
// must be refused before any call to the endpoint, and reported for the audit log.

const PORT = 8008;
const HOSTS = { hosts: allowedHosts('127.0.0.1', PORT) };
const SELF = `http://127.0.0.1:${PORT}`;

describe('refusal(): the decision per request', () => {
  const ok = {
    method: 'GET',
    host: `127.0.0.1:${PORT}`,
    origin: undefined,
    secFetchSite: undefined,
  };

  it('lets the UI itself on: its own Host, its own Origin, same-origin or typed-in', () => {
    expect(refusal(ok, HOSTS)).toBeUndefined();
    expect(refusal({ ...ok, host: `localhost:${PORT}` }, HOSTS)).toBeUndefined();
    expect(refusal({ ...ok, host: `LOCALHOST:${PORT}` }, HOSTS)).toBeUndefined();
    expect(refusal({ ...ok, secFetchSite: 'none' }, HOSTS)).toBeUndefined();
    expect(
      refusal({ ...ok, method: 'POST', origin: SELF, secFetchSite: 'same-origin' }, HOSTS),
    ).toBeUndefined();
  });

  it('refuses a rebound name, another port, a missing Host', () => {
    for (const host of [
      `evil.example:${PORT}`,
      `127.0.0.1:${PORT + 1}`,
      '127.0.0.1',
      `127.0.0.1.nip.io:${PORT}`,
      `localhost.:${PORT}`,
      `[::1]:${PORT}`,
      undefined,
    ]) {
      expect(refusal({ ...ok, host }, HOSTS)).toBe('FORBIDDEN_HOST');
    }
  });

  it('refuses foreign origins, and state changes without an Origin', () => {
    for (const origin of [
      'http://evil.example',
      `http://127.0.0.1:${PORT + 1}`,
      `https://127.0.0.1:${PORT}`,
      'null',
    ]) {
      expect(refusal({ ...ok, origin }, HOSTS)).toBe('FORBIDDEN_ORIGIN');
      expect(refusal({ ...ok, method: 'POST', origin }, HOSTS)).toBe('FORBIDDEN_ORIGIN');
    }
    // Origin must match the Host the request came in on, not merely be one of ours.
    expect(refusal({ ...ok, host: `localhost:${PORT}`, method: 'POST', origin: SELF }, HOSTS)).toBe(
      'FORBIDDEN_ORIGIN',
    );
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      expect(refusal({ ...ok, method }, HOSTS)).toBe('FORBIDDEN_ORIGIN');
    }
  });

  it('refuses same-site (another local port) and cross-site fetches, and every preflight', () => {
    expect(refusal({ ...ok, secFetchSite: 'same-site' }, HOSTS)).toBe('CROSS_SITE');
    expect(refusal({ ...ok, secFetchSite: 'cross-site' }, HOSTS)).toBe('CROSS_SITE');
    expect(refusal({ ...ok, method: 'OPTIONS', origin: SELF }, HOSTS)).toBe('PREFLIGHT');
  });
});

describe('the listener', () => {
  let dir: string;
  let fake: FakeEndpoint;
  let app: FastifyInstance;
  const reported: GatewayRefusal[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mte-ui-'));
    await writeFile(join(dir, 'index.html'), '<!doctype html><title>ui</title>');
    await writeFile(join(dir, 'app.js'), 'console.log(1)');
    await writeFile(join(dir, 'app.css'), 'body{}');
    await writeFile(join(dir, '.hidden.js'), 'secret');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    fake = fakeEndpoint();
    reported.length = 0;
    app = buildGateway({
      endpoint: fake.client,
      browser: {
        origins: HOSTS,
        files: await loadStaticFiles(dir),
        report: (r) => reported.push(r),
      },
    });
  });
  afterEach(async () => {
    await app.close();
    fake.close();
  });

  const host = { host: `127.0.0.1:${PORT}` };

  it('serves the UI with a strict CSP and no CORS', async () => {
    const res = await app.inject({ url: '/', headers: host });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/html/);
    expect(res.headers['content-security-policy']).toBe(UI_CSP);
    expect(UI_CSP).not.toMatch(/unsafe|\*|data:/);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['referrer-policy']).toBe('no-referrer');
    expect(res.headers['x-frame-options']).toBe('DENY');
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
    const js = await app.inject({ url: '/app.js', headers: host });
    expect(js.headers['content-type']).toMatch(/^text\/javascript/);
    for (const url of ['/.hidden.js', '/..%2fetc%2fpasswd', '/nope.js', '/app.js/x']) {
      expect((await app.inject({ url, headers: host })).statusCode).toBe(404);
    }
  });

  it('forwards the UI own API calls, with the token', async () => {
    const res = await app.inject({
      method: 'POST',
      url: `/v1/rooms/${encodeURIComponent(ROOM)}/messages`,
      headers: { ...host, ...bearer(), origin: SELF, 'sec-fetch-site': 'same-origin' },
      payload: { body: 'hi' },
    });
    expect(res.statusCode).toBe(202);
    expect(fake.calls.map((c) => c.method)).toEqual(['send']);
    expect(reported).toEqual([]);
  });

  it('refuses a rebound Host, a foreign Origin, a cross-site fetch and a preflight: 403, reported, no call', async () => {
    const attempts = [
      { headers: { host: `evil.example:${PORT}`, ...bearer() }, code: 'FORBIDDEN_HOST' },
      {
        method: 'POST' as const,
        headers: { ...host, ...bearer(), origin: 'http://127.0.0.1:9999' },
        code: 'FORBIDDEN_ORIGIN',
      },
      {
        method: 'POST' as const,
        headers: { ...host, ...bearer(), 'content-type': 'text/plain' },
        code: 'FORBIDDEN_ORIGIN',
      },
      { headers: { ...host, ...bearer(), 'sec-fetch-site': 'same-site' }, code: 'CROSS_SITE' },
      {
        method: 'OPTIONS' as const,
        headers: { ...host, origin: 'http://evil.example' },
        code: 'PREFLIGHT',
      },
      { method: 'OPTIONS' as const, headers: { ...host, origin: SELF }, code: 'PREFLIGHT' },
    ];
    for (const a of attempts) {
      const res = await app.inject({
        method: a.method ?? 'GET',
        url: `/v1/rooms/${encodeURIComponent(ROOM)}/messages`,
        headers: a.headers,
        ...(a.method === 'POST' ? { payload: 'body=hi' } : {}),
      });
      expect(res.statusCode, a.code).toBe(403);
      expect(res.json<{ error: { code: string } }>().error.code).toBe(a.code);
      expect(res.headers['access-control-allow-origin']).toBeUndefined();
    }
    expect(reported).toEqual(attempts.map((a) => a.code));
    expect(fake.calls).toEqual([]);
  });

  it('the Unix socket app has no UI and no browser checks', async () => {
    const plain = buildGateway({ endpoint: fake.client });
    try {
      expect((await plain.inject({ url: '/', headers: host })).statusCode).toBe(404);
      const res = await plain.inject({
        url: '/v1/status',
        headers: { host: 'anything', ...bearer() },
      });
      expect(res.statusCode).toBe(200);
    } finally {
      await plain.close();
    }
  });
});

describe('loadStaticFiles', () => {
  it('refuses a directory without index.html, and skips symlinks and odd names', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mte-ui-'));
    try {
      await expect(loadStaticFiles(join(dir, 'missing'))).rejects.toThrow(/build it with/);
      await expect(loadStaticFiles(dir)).rejects.toThrow(/no index.html/);
      await writeFile(join(dir, 'index.html'), 'x');
      await writeFile(join(dir, 'secret.txt.bak'), 'x');
      await mkdir(join(dir, 'sub.js'));
      await symlink('/etc/passwd', join(dir, 'passwd.txt'));
      const files = await loadStaticFiles(dir);
      expect([...files.keys()]).toEqual(['index.html']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('refusalReporter', () => {
  it('sends one report at a time and coalesces a flood into counts', async () => {
    const sent: [string, number][] = [];
    let release: () => void = () => undefined;
    const report = refusalReporter(async (reason, count) => {
      sent.push([reason, count]);
      await new Promise<void>((r) => (release = r));
    });
    report('FORBIDDEN_HOST');
    for (let i = 0; i < 99; i++) report('FORBIDDEN_HOST');
    report('PREFLIGHT');
    expect(sent).toEqual([['FORBIDDEN_HOST', 1]]);
    release();
    await new Promise((r) => setTimeout(r, 0));
    release();
    await new Promise((r) => setTimeout(r, 0));
    release();
    expect(sent).toEqual([
      ['FORBIDDEN_HOST', 1],
      ['FORBIDDEN_HOST', 99],
      ['PREFLIGHT', 1],
    ]);
  });
});
