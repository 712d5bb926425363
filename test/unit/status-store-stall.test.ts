import { describe, expect, it } from 'vitest';
import { EventHub, apiHandlers } from '../../endpoint/api/index.ts';
import type { Endpoint } from '../../endpoint/device.ts';
import { Foreground } from '../../endpoint/foreground.ts';
import { HealthState } from '../../endpoint/health.ts';
import type { Outbox } from '../../endpoint/outbox.ts';
import { Authorizer, tokenSha256, validatePolicy } from '../../policy/index.ts';

// While the vault is down, a store read waits behind a compaction that waits for the vault's
// counter. The status is how a UI learns that: it must answer anyway, saying the vault is
// unavailable, with the last count of pending sends it read.
const TOKEN = 'status-token-0123456789abcdefghijklmnop';

describe('the status answers while the store cannot', () => {
  it('gives the vault as unavailable and the last pending count, within a moment', async () => {
    const result = validatePolicy({
      version: 1,
      clients: [
        {
          name: 'ui',
          tokenSha256: tokenSha256(TOKEN),
          created: '2025-01-15T09:30:00.000Z',
          capabilities: ['rooms.read'],
          rateLimit: { requestsPerMinute: 60_000 },
        },
      ],
    });
    if (!result.ok) throw new Error(JSON.stringify(result.problems));
    const policy = result.policy;
    const store = { stalled: false };
    const outbox = {
      pending: () => (store.stalled ? new Promise(() => undefined) : Promise.resolve([{}, {}, {}])),
    } as unknown as Outbox;
    const endpoint = {
      userId: '@me:example.org',
      deviceId: 'DEVICE',
      foreground: new Foreground(),
    } as unknown as Endpoint;
    const health = new HealthState();
    const handlers = apiHandlers({
      endpoint,
      outbox,
      health,
      authorizer: new Authorizer(() => policy),
      audit: { append: () => Promise.resolve() },
      policy: () => policy,
      hub: new EventHub(),
    });
    const ctx = { method: 'status', signal: new AbortController().signal };
    const first = await handlers.status({ auth: { token: TOKEN } }, ctx);
    expect(first.pendingSends).toBe(3);
    expect(first.health.vault).toBe('available');

    store.stalled = true;
    health.setVault('unavailable', 'the vault stopped answering');
    const t = performance.now();
    const stalled = await handlers.status({ auth: { token: TOKEN } }, ctx);
    expect(performance.now() - t).toBeLessThan(5_000);
    expect(stalled.pendingSends).toBe(3);
    expect(stalled.health.vault).toBe('unavailable');
    expect(stalled.health.reason).toContain('vault');
  });
});
