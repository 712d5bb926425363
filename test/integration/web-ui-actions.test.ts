import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  StockPeer,
  type SynapseUser,
  type TestBrowser,
  type PageWatch,
  freePort,
  logInUi,
  openUiPage,
  startBrowser,
  startSwtpm,
  startSynapse,
  waitUntil,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// The web UI's actions beyond text, in a real browser against the real stack (as
// web-ui.test.ts sets it up): a file uploaded from the page that a stock peer decrypts to the
// same bytes, a reaction from the page's fixed set, and sends the homeserver refused, listed
// on the page and retried or discarded from it.

const isRoot = process.getuid?.() === 0;
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(async () =>
  startSwtpm({ unix: true, ...(isRoot ? { accessibleTo: await vaultUser() } : {}) }),
);

/** A 1x1 PNG: the endpoint checks that what is declared image/png is one. */
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==',
  'base64',
);

let stack: LaunchedStack;
let browser: TestBrowser;
let alice: SynapseUser;
let bob: StockPeer;
let bobUser: SynapseUser;
let token: string;
let uiUrl: string;
let roomId: string;
let page: Page;
let watch: PageWatch;
/** What the in-page probe heard before a reload replaced it. */
const cspSeen: string[] = [];

beforeAll(async () => {
  alice = await synapse().registerUser('alice');
  bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
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
          'events.stream',
          'contacts.read',
        ],
        requestsPerMinute: 60_000,
      },
    ],
    ui: { port: await freePort() },
  });
  token = stack.tokens.web ?? '';
  uiUrl = stack.gateway.uiUrl ?? '';
  expect(uiUrl).toMatch(/^http:\/\/127\.0\.0\.1:[0-9]+$/);
  browser = await startBrowser();
}, 300_000);

afterAll(async () => {
  await browser.stop();
  await stack.stop();
  await bob.stop();
});

describe('the web UI, beyond text', () => {
  it('logs in and accepts an invitation to an encrypted room', async () => {
    ({ page, watch } = await openUiPage(browser, uiUrl));
    await logInUi(page, token, alice.userId);
    await page.locator('#connection[data-state="connected"]').waitFor({ timeout: 20_000 });
    roomId = await bob.createEncryptedRoom({ invite: [alice.userId], name: 'Files' });
    const invite = page.locator(`li.invite[data-room-id="${roomId}"]`);
    await invite.waitFor({ timeout: 30_000 });
    await invite.locator('button.accept').click();
    const room = page.locator(`li.room[data-room-id="${roomId}"]`);
    await room.waitFor({ timeout: 30_000 });
    await bob.waitForMember(roomId, alice.userId);
    await room.locator('button').first().click();
    await page.locator('#send-file').waitFor();
    expect(await page.locator('label[for="file"]').textContent()).not.toBe('');
  });

  it('uploads a file from the page, which bob decrypts to the same bytes', async () => {
    await page.setInputFiles('input#file', {
      name: 'dot.png',
      mimeType: 'image/png',
      buffer: PNG,
    });
    await page.click('button#send-file');
    const got = await bob.waitForMessage(
      roomId,
      (m) => m.sender === alice.userId && m.body === 'dot.png',
      30_000,
    );
    expect(got.encrypted).toBe(true);
    expect(got.content.msgtype).toBe('m.image');
    expect(Buffer.from(await bob.downloadEncryptedFile(got.eventId))).toEqual(PNG);
    await page.locator('#upload-status', { hasText: 'Sent dot.png' }).waitFor();
    // The page shows it like any attachment.
    await page.locator('#timeline .item .attachment', { hasText: 'dot.png' }).waitFor();

    // Bytes that are not what their type says: refused (415), and said so plainly.
    await page.setInputFiles('input#file', {
      name: 'fake.png',
      mimeType: 'image/png',
      buffer: Buffer.from('not a picture'),
    });
    await page.click('button#send-file');
    await page.locator('#alert', { hasText: 'CONTENT_TYPE_MISMATCH' }).waitFor({ timeout: 20_000 });
    await page.click('#alert-dismiss');
  });

  it("reacts to bob's message from the fixed set", async () => {
    const target = await bob.sendText(roomId, 'react to me');
    const item = page.locator(`#timeline .item[data-event-id="${target}"]`);
    await item.waitFor({ timeout: 30_000 });
    expect(await item.locator('button.react[data-key]').count()).toBeGreaterThanOrEqual(6);
    await item.locator('button.react[data-key="👍"]').click();
    const reaction = await bob.waitForMessage(
      roomId,
      (m) =>
        m.type === 'm.reaction' &&
        m.sender === alice.userId &&
        m.relatesTo?.rel_type === 'm.annotation' &&
        m.relatesTo.event_id === target &&
        m.relatesTo.key === '👍',
    );
    expect(reaction.eventId).not.toBe('');
    // The count comes back on the stream, and the button says we reacted.
    await item.locator('.reactions .reaction', { hasText: '👍' }).waitFor({ timeout: 20_000 });
    await item.locator('button.react[data-key="👍"][aria-pressed="true"]').waitFor();
  });

  it('lists sends the homeserver refused, and retries one and discards the other', async () => {
    await bob.setEventPowerLevel(roomId, 'm.room.encrypted', 100);
    for (const text of ['refused one', 'refused two']) {
      await page.fill('#composer', text);
      await page.click('#send');
      await waitUntil(
        'the composer to empty',
        async () => (await page.inputValue('#composer')) === '',
        {
          timeoutMs: 10_000,
          intervalMs: 100,
        },
      );
    }
    const failed = page.locator('#failed-sends li.failed');
    const one = failed.filter({ hasText: 'refused one' });
    const two = failed.filter({ hasText: 'refused two' });
    await one.waitFor({ timeout: 60_000 });
    await two.waitFor({ timeout: 60_000 });
    expect(await one.getAttribute('data-txn-id')).toMatch(/^mte\.[0-9a-f]{24}$/);
    expect(await one.textContent()).toContain('M_FORBIDDEN');
    expect(await one.textContent()).toContain(roomId);

    // A reload lists them from GET /v1/outbox/failed (the probes start afresh: read them first).
    cspSeen.push(...(await page.evaluate<string[]>('__mteProbe.cspSeen()')));
    await page.reload();
    await one.waitFor({ timeout: 20_000 });
    await two.waitFor({ timeout: 20_000 });

    await bob.setEventPowerLevel(roomId, 'm.room.encrypted', 0);
    await one.locator('button.retry').click();
    await one.waitFor({ state: 'detached', timeout: 20_000 });
    await two.locator('button.discard').click();
    await two.waitFor({ state: 'detached', timeout: 20_000 });
    expect(await page.locator('#failed-area').isHidden()).toBe(true);

    await bob.waitForMessage(roomId, (m) => m.sender === alice.userId && m.body === 'refused one');
    await bob.sendText(roomId, 'after the retry');
    await bob.waitForMessage(roomId, 'after the retry');
    const bodies = bob.messages.filter((m) => m.roomId === roomId).map((m) => m.body);
    expect(bodies.filter((b) => b === 'refused one')).toHaveLength(1);
    expect(bodies).not.toContain('refused two');
    expect(await page.locator('#failed-sends li.failed').count()).toBe(0);
  });

  it('raised no CSP violation and made no request beyond its own origin', async () => {
    const seen = await page.evaluate<string[]>('__mteProbe.cspSeen()');
    expect([...cspSeen, ...seen, ...watch.csp]).toEqual([]);
    expect(watch.foreign).toEqual([]);
    const a11y = await page.evaluate<{ unlabelled: string[]; nameless: string[] }>(
      '__mteProbe.a11yReport()',
    );
    expect(a11y).toEqual({ unlabelled: [], nameless: [] });
  });
});
