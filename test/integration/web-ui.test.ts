import { chown, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { type Server, createServer, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SpawnedGateway } from '../../endpoint/untrusted/gateway/index.ts';
import {
  type SasOutcome,
  StockPeer,
  type SynapseUser,
  type TestBrowser,
  PROBES,
  type PageWatch as Watch,
  cspViolations,
  freePort,
  hostilePayloads,
  logInUi,
  openUiPage,
  repoRoot,
  startBrowser,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { innermostPid } from '../../deploy/compartments/launcher.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// The web UI in a real browser (Debian's Chromium through playwright-core), against the real
// gateway, endpoint and vault (on swtpm, launched as compartments with the shipped manifest), Synapse and stock matrix-js-sdk peers. A user logs
// in, accepts an invitation, reads and sends, verifies a contact by SAS and deals with an
// identity change, all through the page. Then the page is attacked: from another origin and a
// rebound host name, and with messages built to run script or leak a request.

const isRoot = process.getuid?.() === 0;
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(async () =>
  startSwtpm({ unix: true, ...(isRoot ? { accessibleTo: await vaultUser() } : {}) }),
);

/** Screenshots of the main screens, for a person to look at (README links copies). */
const SHOTS = join(repoRoot, 'test', 'artifacts', 'web-ui');
const REBIND = 'rebind.test';

let gateway: SpawnedGateway;
let stack: LaunchedStack;
let browser: TestBrowser;
let alice: SynapseUser;
let bob: StockPeer;
let bobUser: SynapseUser;
let mallory: StockPeer;
let malloryUser: SynapseUser;
let token: string;
let readOnlyToken: string;
let auditLog: string;
let uiUrl: string;
let roomId: string;
let beacon: { server: Server; url: string; hits: string[] };
/** How many refusals the hostile page's attempts cost (the audit log's counts are checked last). */
let attackRefusals = 0;
/** The read-only client's page, kept open until its token is revoked. */
let readerPage: Page | undefined;

/** What __mteProbe.timelineReport() finds in the timeline (test/browser/page-probes.js). */
interface TimelineReport {
  pwned: unknown;
  banned: string[];
  attrs: string[];
  hrefs: { href: string; rel: string }[];
  composer: string | null;
}

/** A watched page of the UI (test/fixtures/web-page.ts). */
function openUi(): Promise<{ page: Page; watch: Watch }> {
  return openUiPage(browser, uiUrl);
}

function logIn(page: Page, withToken = token): Promise<void> {
  return logInUi(page, withToken, alice.userId);
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

function auditEntries(text: string): { action: string; reason: string; client: string | null }[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as { action: string; reason: string; client: string | null });
}

/**
 * Replaces a client's capabilities in the policy file, as an operator's edit would: a new file
 * (owned like the old one, for the endpoint's user) renamed into place; the endpoint reloads it.
 */
async function setCapabilities(name: string, capabilities: string[]): Promise<void> {
  const path = stack.policyPath;
  const policy = JSON.parse(await readFile(path, 'utf8')) as {
    clients: { name: string; capabilities: string[] }[];
  };
  const client = policy.clients.find((c) => c.name === name);
  if (!client) throw new Error(`no client ${name}`);
  client.capabilities = capabilities;
  const owner = await stat(path);
  const next = `${path}.next`;
  await writeFile(next, JSON.stringify(policy), { mode: 0o600 });
  await chown(next, owner.uid, owner.gid);
  await rename(next, path);
}

/** A POST with headers a browser would never let a script set (Host), as a rebound page sends. */
function rawPost(
  ui: URL,
  path: string,
  h: { host: string; origin: string; token: string },
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: ui.hostname,
        port: ui.port,
        path,
        method: 'POST',
        headers: {
          host: h.host,
          origin: h.origin,
          authorization: `Bearer ${h.token}`,
          'content-type': 'application/json',
        },
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ body: 'csrf by rebinding' }));
  });
}

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  alice = await synapse().registerUser('alice');
  bobUser = await synapse().registerUser('bob');
  malloryUser = await synapse().registerUser('mallory');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
  mallory = await StockPeer.start(synapse().baseUrl, malloryUser);
  await mallory.bootstrapCrossSigning(malloryUser.password);
  // As an operator deploys it: the launcher, each compartment its own user and namespaces.
  stack = await startStack({
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients: [
      {
        name: 'web',
        capabilities: [
          'rooms.read',
          'rooms.join',
          'messages.read',
          'messages.send',
          'contacts.read',
          'events.stream',
          'verification',
        ],
        requestsPerMinute: 60_000,
      },
      {
        name: 'reader',
        capabilities: ['rooms.read', 'messages.read', 'events.stream', 'contacts.read'],
        requestsPerMinute: 60_000,
      },
    ],
    // A fixed port: a restarted gateway listens where the open page expects it.
    ui: { port: await freePort() },
  });
  token = stack.tokens.web ?? '';
  readOnlyToken = stack.tokens.reader ?? '';
  auditLog = stack.auditLog;
  gateway = stack.gateway;
  uiUrl = gateway.uiUrl ?? '';
  expect(uiUrl).toMatch(/^http:\/\/127\.0\.0\.1:[0-9]+$/);
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(req.url ?? '');
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const address = server.address();
  beacon = {
    server,
    hits,
    url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`,
  };
  const port = new URL(uiUrl).port;
  browser = await startBrowser({ hostResolverRules: `MAP ${REBIND} 127.0.0.1` });
  expect(port).not.toBe('');
}, 300_000);

afterAll(async () => {
  await browser.stop();
  await stack.stop();
  await bob.stop();
  await mallory.stop();
  await new Promise((r) => beacon.server.close(r));
});

describe('a user in the web UI', () => {
  let page: Page;
  let watch: Watch;

  it('logs in with a pasted token, which stays out of URLs and cookies', async () => {
    ({ page, watch } = await openUi());
    await shot(page, '1-login');
    await logIn(page);
    expect(page.url()).not.toContain(token);
    const cookies = await page.context().cookies();
    expect(cookies).toEqual([]);
    const stored = await page.evaluate<Record<string, string>>(
      'Object.fromEntries(Object.entries(sessionStorage))',
    );
    expect(Object.values(stored)).toContain(token);
    const local = await page.evaluate('localStorage.length');
    expect(local).toBe(0);
    await page.locator('#connection[data-state="connected"]').waitFor({ timeout: 20_000 });
  });

  it("sees bob's invitation, who sent it, and accepts it", async () => {
    roomId = await bob.createEncryptedRoom({ invite: [alice.userId], name: 'Plans' });
    const invite = page.locator(`li.invite[data-room-id="${roomId}"]`);
    await invite.waitFor({ timeout: 30_000 });
    expect(await invite.textContent()).toContain(bob.userId);
    await invite.locator('button.accept').click();
    const room = page.locator(`li.room[data-room-id="${roomId}"]`);
    await room.waitFor({ timeout: 30_000 });
    await bob.waitForMember(roomId, alice.userId);
    expect(await room.textContent()).toContain('Plans');
    await room.locator('button').first().click();
    await page.locator('#timeline').waitFor();
  });

  it("receives bob's message live, with its shield", async () => {
    await bob.sendText(roomId, 'hello from bob');
    const item = page.locator('#timeline .item', { hasText: 'hello from bob' });
    await item.waitFor({ timeout: 30_000 });
    const shield = await item.locator('.shield').getAttribute('data-state');
    // Bob is cross-signed but not verified by us: decrypted, from a device he signed.
    expect(['unverified', 'verified']).toContain(shield);
  });

  it('sends a message that bob decrypts, and a reply to his', async () => {
    await page.fill('#composer', 'hello from the web UI');
    await page.click('#send');
    const got = await bob.waitForMessage(roomId, (m) => m.body === 'hello from the web UI');
    expect(got.sender).toBe(alice.userId);
    const his = page.locator('#timeline .item', { hasText: 'hello from bob' });
    await his.locator('button.reply').click();
    await page.locator('#reply-target').waitFor();
    await page.fill('#composer', 'a reply from the web UI');
    await page.keyboard.press('Enter');
    const reply = await bob.waitForMessage(roomId, (m) =>
      m.body.includes('a reply from the web UI'),
    );
    expect(reply.relatesTo).toBeDefined();
    await page.locator('#timeline .item', { hasText: 'a reply from the web UI' }).waitFor();
    await shot(page, '2-timeline');
  });

  it('verifies bob by SAS from the page: the emoji shown equal the peer', async () => {
    let theirs: SasOutcome | undefined;
    bob.acceptVerifications(
      () => undefined,
      (o) => (theirs = o),
    );
    await page.click('#nav-contacts');
    const contact = page.locator(`li.contact[data-user-id="${bob.userId}"]`);
    await contact.waitFor({ timeout: 20_000 });
    await contact.locator(`li.device[data-device-id="${bobUser.deviceId}"] button.verify`).click();
    await page.click('#nav-verifications');
    const emoji = page.locator('.flow .sas-emoji');
    await waitUntil('the SAS emoji on the page', async () => (await emoji.count()) === 7, {
      timeoutMs: 60_000,
      intervalMs: 250,
    });
    const shown = await page.evaluate<[string, string][]>('__mteProbe.sasEmoji()');
    await waitUntil('the peer to show its SAS', () => theirs !== undefined, { timeoutMs: 30_000 });
    expect(shown).toEqual(theirs?.emoji);
    await shot(page, '3-verification');
    await page.click('.flow button.match');
    await page.locator('.flow[data-state="done"]').waitFor({ timeout: 60_000 });
    await page.click('#nav-contacts');
    await page
      .locator(`li.contact[data-user-id="${bob.userId}"] .identity[data-state="verified"]`)
      .waitFor({ timeout: 30_000 });
    await shot(page, '4-contacts');
  });

  it("blocks sending after mallory's identity changes, until the page acknowledges it", async () => {
    await bob.inviteUser(roomId, mallory.userId);
    await mallory.acceptInvite(roomId);
    await page.click('#nav-rooms');
    await page.locator(`li.room[data-room-id="${roomId}"] button`).first().click();
    await page.fill('#composer', 'before the change');
    await page.click('#send');
    await mallory.waitForMessage(roomId, (m) => m.body === 'before the change');
    await mallory.bootstrapCrossSigning(malloryUser.password); // a new master key, as after a reset
    const banner = page.locator('#identity-banner');
    const acknowledge = banner.locator(`button.acknowledge[data-user-id="${mallory.userId}"]`);
    // The identity stream event shows the banner; a send refused with IDENTITY_CHANGED does too.
    await waitUntil(
      'the identity-change banner',
      async () => {
        if (await acknowledge.isVisible()) return true;
        await page.fill('#composer', 'while changed');
        await page.click('#send');
        return acknowledge.isVisible();
      },
      { timeoutMs: 60_000, intervalMs: 2_000 },
    );
    expect(await banner.textContent()).toContain(mallory.userId);
    await shot(page, '5-identity-change');
    await acknowledge.click();
    await acknowledge.waitFor({ state: 'detached', timeout: 20_000 });
    await page.fill('#composer', 'after acknowledging');
    await page.click('#send');
    await bob.waitForMessage(roomId, (m) => m.body === 'after acknowledging');
    expect(bob.messages.some((m) => m.roomId === roomId && m.body === 'while changed')).toBe(false);
  });

  it('reconnects after the gateway restarts (Last-Event-ID): what arrived meanwhile shows', async () => {
    await page.click('#nav-rooms');
    await page.locator(`li.room[data-room-id="${roomId}"] button`).first().click();
    const restarted = stack.stack.nextStart();
    process.kill(innermostPid(stack.stack.pid('gateway') ?? 0), 'SIGKILL');
    await page.locator('#connection:not([data-state="connected"])').waitFor({ timeout: 20_000 });
    await bob.sendText(roomId, 'sent while the gateway was away');
    await restarted;
    await page.locator('#connection[data-state="connected"]').waitFor({ timeout: 60_000 });
    await page
      .locator('#timeline .item', { hasText: 'sent while the gateway was away' })
      .waitFor({ timeout: 30_000 });
    gateway = stack.gateway;
  });

  it('is usable from the keyboard, with a label on every control', async () => {
    const a11y = await page.evaluate<{ unlabelled: string[]; nameless: string[] }>(
      '__mteProbe.a11yReport()',
    );
    expect(a11y).toEqual({ unlabelled: [], nameless: [] });
    await page.focus('#composer');
    await page.keyboard.type('typed, then Enter');
    await page.keyboard.press('Enter');
    await bob.waitForMessage(roomId, (m) => m.body === 'typed, then Enter');
  });

  it('raised no CSP violation and made no request beyond its own origin', async () => {
    expect(await cspViolations(page, watch)).toEqual([]);
    expect(watch.foreign).toEqual([]);
  });

  it('hides what a token may not do', async () => {
    const { page: reader } = await openUi();
    await logIn(reader, readOnlyToken);
    await reader.locator(`li.room[data-room-id="${roomId}"] button`).first().click();
    await reader.locator('#timeline .item', { hasText: 'hello from bob' }).first().waitFor();
    expect(await reader.locator('#composer').count()).toBe(0);
    expect(await reader.locator('#send').count()).toBe(0);
    await reader.click('#nav-contacts');
    await reader.locator(`li.contact[data-user-id="${bob.userId}"]`).waitFor();
    expect(await reader.locator('button.verify').count()).toBe(0);
    expect(await reader.locator('#nav-verifications').isVisible()).toBe(false);

    // The operator narrows the token while the page is open: the next refusal is shown as it is.
    await setCapabilities('reader', ['rooms.read', 'messages.read', 'events.stream']);
    await waitUntil(
      'the 403 shown in the page',
      async () => {
        await reader.click('#nav-rooms');
        await reader.click('#nav-contacts');
        return ((await reader.locator('#alert').textContent()) ?? '').includes(
          'FORBIDDEN_CAPABILITY',
        );
      },
      { timeoutMs: 20_000, intervalMs: 500 },
    );
    readerPage = reader;
  });
});

describe('a hostile page', () => {
  it('another origin cannot make the listener do anything: refused, audited, nothing sent', async () => {
    const before = auditEntries(await readFile(auditLog, 'utf8')).length;
    const ui = new URL(uiUrl);
    const attackerPort = await new Promise<{ server: Server; port: number }>((resolve) => {
      const server = createServer((_req, res) => {
        res.setHeader('content-type', 'text/html');
        res.end('<!doctype html><title>attacker</title><p>hi</p>');
      });
      server.listen(0, '127.0.0.1', () => {
        const a = server.address();
        resolve({ server, port: typeof a === 'object' && a ? a.port : 0 });
      });
    });
    try {
      const { page } = await browser.newPage();
      await page.addInitScript({ path: PROBES });
      await page.goto(`http://127.0.0.1:${attackerPort.port}/`);
      // A rebound page's script (its name resolved to 127.0.0.1) sends its own name as Host;
      // here even with the token.
      const reboundApi = await rawPost(ui, `/v1/rooms/${encodeURIComponent(roomId)}/messages`, {
        host: `${REBIND}:${ui.port}`,
        origin: `http://${REBIND}:${ui.port}`,
        token,
      });
      expect(reboundApi).toBe(403);
      const target = `${uiUrl}/v1/rooms/${encodeURIComponent(roomId)}/messages`;
      const outcomes = await page.evaluate<Record<string, string>>(
        `__mteProbe.attack(${JSON.stringify({ target, base: uiUrl, token })})`,
      );
      // Whatever the browser reports, the listener must have refused each one.
      expect(outcomes['cors post with token']).toMatch(/^blocked/);
      expect(outcomes['cors read with token']).toMatch(/^blocked/);
      // A page on a rebound name: the browser thinks it is REBIND's origin, the listener says no.
      const rebound = await page.goto(`http://${REBIND}:${ui.port}/`);
      expect(rebound?.status()).toBe(403);
      expect(await rebound?.text()).toContain('FORBIDDEN_HOST');
      await page.close();

      // Audited: the refusals reach the endpoint's audit log (first five of a window each).
      let refusals: string[] = [];
      await waitUntil(
        'the refusals in the audit log',
        async () => {
          refusals = auditEntries(await readFile(auditLog, 'utf8'))
            .slice(before)
            .filter((e) => e.action === 'gateway.refusal')
            .map((e) => e.reason);
          return ['FORBIDDEN_ORIGIN', 'PREFLIGHT', 'CROSS_SITE', 'FORBIDDEN_HOST'].every((r) =>
            refusals.includes(r),
          );
        },
        { timeoutMs: 10_000, intervalMs: 200 },
      );
      // The first five are written one by one (the gateway may coalesce two of a kind).
      expect(new Set(refusals.slice(0, 5))).toEqual(
        new Set(['FORBIDDEN_HOST', 'CROSS_SITE', 'PREFLIGHT', 'FORBIDDEN_ORIGIN']),
      );
      // Then a preflight, the XHR, the form post and the rebound page (counted from the sixth).
      attackRefusals = 8;
      // Nothing was sent: bob never sees a csrf message, and nothing is queued.
      await bob.sendText(roomId, 'marker after the attack');
      await bob.waitForMessage(roomId, (m) => m.body === 'marker after the attack');
      expect(bob.messages.filter((m) => m.body.includes('csrf'))).toEqual([]);
      const status = await stack.gateway.request('/v1/status', { token });
      expect((status.json() as { pendingSends: number }).pendingSends).toBe(0);
    } finally {
      await new Promise((r) => attackerPort.server.close(r));
    }
  });
});

describe('hostile content', () => {
  it('none of the payloads runs, fetches or hides what it is; each renders as text or safe markup', async () => {
    const payloads = hostilePayloads(beacon.url);
    expect(payloads.length).toBeGreaterThanOrEqual(50);
    const { page, watch } = await openUi();
    await logIn(page);
    // Names built to pass for someone else, and a room name and topic that are markup.
    await mallory.sendState(
      roomId,
      'm.room.member',
      { membership: 'join', displayname: 'b\u043Eb' }, // Cyrillic o: "bob"
      mallory.userId,
    );
    await bob.sendState(roomId, 'm.room.topic', {
      topic: `<img src=x onerror="window.top.__pwned=30"> topic \u202Egnp.exe`,
    });
    await bob.sendState(
      roomId,
      'm.room.member',
      { membership: 'join', displayname: 'bob' },
      bob.userId,
    );
    const spoofId = await mallory.sendText(roomId, 'it is me, bob');
    await page.locator(`li.room[data-room-id="${roomId}"] button`).first().click();
    const ids: string[] = [];
    for (const p of payloads) ids.push(await bob.sendContent(roomId, p.content));
    const fileId = await bob.sendEncryptedFile(
      roomId,
      new TextEncoder().encode('not really a pdf'),
      '"><img src=x onerror=window.top.__pwned=31>report\u202Efdp.exe',
      'application/pdf',
    );
    const firstId = ids[0] ?? '';
    await bob.react(roomId, firstId, '<img src=x onerror=window.top.__pwned=32>');
    await bob.sendEdit(
      roomId,
      ids[1] ?? '',
      '<b>edited</b> <img src=x onerror=window.top.__pwned=33>',
    );
    const lastId = ids[ids.length - 1] ?? '';
    await page.locator(`#timeline .item[data-event-id="${fileId}"]`).waitFor({ timeout: 60_000 });
    await page.locator(`#timeline .item[data-event-id="${lastId}"]`).waitFor({ timeout: 60_000 });
    // Let anything that would fire (onerror, autofocus, meta refresh) have its chance.
    await page.waitForTimeout(1_500);
    // The screenshot shows a run of payloads as rendered (links with their real target, the
    // unwrapped schemes, the removed elements), not the large message at the end.
    const shown = payloads.findIndex((p) => p.name === 'lying link text');
    await page
      .locator(`#timeline .item[data-event-id="${ids[shown - 4] ?? ''}"]`)
      .scrollIntoViewIfNeeded();
    await shot(page, '6-hostile-content');

    const report = await page.evaluate<TimelineReport>('__mteProbe.timelineReport()');
    expect(report.pwned).toBeNull();
    expect(report.banned).toEqual([]);
    expect(report.attrs).toEqual([]);
    for (const { href, rel } of report.hrefs) {
      expect(href).toMatch(/^https:\/\//);
      expect(rel).toContain('noopener');
      expect(rel).toContain('noreferrer');
    }
    // DOM clobbering: the page's own elements are still what the page finds by id.
    expect(report.composer).toBe('TEXTAREA');
    for (const [i, p] of payloads.entries()) {
      const item = page.locator(`#timeline .item[data-event-id="${ids[i] ?? ''}"]`);
      expect(await item.count(), p.name).toBe(1);
      if (p.visible !== undefined) {
        expect(await item.locator('.body').textContent(), p.name).toContain(p.visible);
      }
    }
    // Plain bodies are text, whatever they contain.
    const plainScript = page.locator(
      `#timeline .item[data-event-id="${ids[payloads.findIndex((p) => p.name === 'script as plain text')] ?? ''}"] .body`,
    );
    expect(await plainScript.textContent()).toContain('<script>');
    // A link shows where it really goes.
    const lying = page.locator(
      `#timeline .item[data-event-id="${ids[payloads.findIndex((p) => p.name === 'lying link text')] ?? ''}"] .body`,
    );
    expect(await lying.textContent()).toContain('https://evil.example/steal');
    // An mxc: link is not a link.
    const mxc = page.locator(
      `#timeline .item[data-event-id="${ids[payloads.findIndex((p) => p.name === 'mxc link')] ?? ''}"] .body a`,
    );
    expect(await mxc.count()).toBe(0);
    // Bidi overrides are shown, not obeyed.
    const rtl = page.locator(
      `#timeline .item[data-event-id="${ids[payloads.findIndex((p) => p.name === 'rtl override in body')] ?? ''}"] .body`,
    );
    expect(await rtl.textContent()).toContain('U+202E');
    // Mallory's "bob" with a Cyrillic o shows her user id beside it.
    const spoof = page.locator(`#timeline .item[data-event-id="${spoofId}"] .sender`);
    expect(await spoof.textContent()).toContain(mallory.userId);
    const room = page.locator(`li.room[data-room-id="${roomId}"]`);
    expect(await room.textContent()).not.toContain('\u202E');
    // The file name is text, its override visible.
    const file = page.locator(`#timeline .item[data-event-id="${fileId}"]`);
    expect(await file.textContent()).toContain('<img');
    expect(await file.textContent()).toContain('U+202E');

    // Nothing reached the beacon, nothing left the origin, no CSP violation: the sanitizer
    // stopped every payload before the CSP had to.
    expect(beacon.hits).toEqual([]);
    expect(watch.foreign).toEqual([]);
    expect(await cspViolations(page, watch)).toEqual([]);

    // The same history read back as a page of the timeline (not the live stream).
    // A reload keeps the session (sessionStorage, this tab only).
    await page.reload();
    await page.locator('#whoami', { hasText: alice.userId }).waitFor({ timeout: 20_000 });
    await page.locator(`li.room[data-room-id="${roomId}"] button`).first().click();
    await page.locator(`#timeline .item[data-event-id="${lastId}"]`).waitFor({ timeout: 30_000 });
    // More than a page: the first payloads come with Load older.
    await page
      .locator(`#timeline .item[data-event-id="${firstId}"]`)
      .waitFor({ state: 'detached' });
    await waitUntil(
      'the oldest payloads after Load older',
      async () => {
        if ((await page.locator(`#timeline .item[data-event-id="${firstId}"]`).count()) > 0) {
          return true;
        }
        await page.click('#load-older');
        return false;
      },
      { timeoutMs: 30_000, intervalMs: 1_000 },
    );
    const again = await page.evaluate<{
      pwned: unknown;
      banned: string[];
    }>('__mteProbe.timelineReport()');
    expect(again.pwned).toBeNull();
    expect(again.banned).toEqual([]);
    expect(beacon.hits).toEqual([]);
    expect(watch.foreign).toEqual([]);
    expect(await cspViolations(page, watch)).toEqual([]);
    await page.close();
  });
});

describe('a revoked token', () => {
  // After the hostile page: the revoked token's refusals share the unknown-token window.
  it('logs the page out, back to the token field, and forgets the token', async () => {
    const reader = readerPage;
    if (!reader) throw new Error('no reader page');
    await stack.revokeClient('reader');
    await reader.locator('#token').waitFor({ timeout: 30_000 });
    expect(await reader.evaluate<string[]>('Object.values(sessionStorage)')).not.toContain(
      readOnlyToken,
    );
    await reader.close();
  });
});

describe('the audit log', () => {
  it("counted every refused attempt: the first five each, the rest in the window's summary", async () => {
    // Stopping the stack closes the log, which writes the open windows' counts.
    await stack.stop();
    const entries = auditEntries(await readFile(auditLog, 'utf8')) as (ReturnType<
      typeof auditEntries
    >[number] & { counts?: Record<string, number> })[];
    const individual = entries.filter((e) => e.action === 'gateway.refusal').length;
    const counted = entries
      .filter((e) => e.action === 'audit.refusals' && e.client === null)
      .reduce(
        (n, e) =>
          n +
          Object.entries(e.counts ?? {})
            .filter(([reason]) => reason !== 'UNAUTHENTICATED' && reason !== 'RATE_LIMITED')
            .reduce((m, [, c]) => m + c, 0),
        0,
      );
    expect(individual + counted).toBeGreaterThanOrEqual(attackRefusals);
  });
});
