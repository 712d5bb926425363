import { describe, expect, it } from 'vitest';
import type { CryptoEngine } from '../../endpoint/crypto/engine.ts';
import { HealthState } from '../../endpoint/health.ts';
import type { HomeserverApi } from '../../endpoint/matrix/api.ts';
import { SyncLoop } from '../../endpoint/sync/loop.ts';
import { waitUntil } from '../fixtures/process.ts';

// A UI must be told the homeserver is down (sends then only wait), and told again when it is
// back, without a restart: the sync loop reports each request's fate to the health state.
describe('the homeserver shown unreachable while sync fails, and reachable again', () => {
  it('one failed sync request marks it unreachable; the next answered one, reachable', async () => {
    const answers: ('down' | 'ok')[] = ['ok', 'down', 'down', 'ok'];
    let asked = 0;
    const api = {
      userId: '@me:example.org',
      sync: async ({ signal }: { signal: AbortSignal }) => {
        const answer = answers[asked++] ?? 'hang';
        if (answer === 'down') throw new Error('fetch failed: connect ECONNREFUSED 127.0.0.1:8008');
        if (answer === 'hang') {
          // A long poll with nothing new, until stop() aborts it.
          return new Promise((_resolve, reject) => {
            signal.addEventListener('abort', () => {
              reject(new Error('aborted'));
            });
          });
        }
        return { next_batch: `s${asked}` };
      },
    } as unknown as HomeserverApi;
    const engine = {
      receiveSyncAll: () => Promise.resolve({ verificationRequests: [], privateMessages: [] }),
      processOutgoing: () => Promise.resolve(),
    } as unknown as CryptoEngine;
    const health = new HealthState();
    const seen: string[] = [];
    health.onChange((h) => seen.push(`${h.homeserver}${h.reason ? `: ${h.reason}` : ''}`));
    const loop = new SyncLoop({
      api,
      engine,
      handlers: {
        timeline: () => Promise.resolve(),
        invited: () => Promise.resolve(),
        joined: () => Promise.resolve(),
        left: () => Promise.resolve(),
        saveSince: () => Promise.resolve(),
        homeserver: (reachable) => {
          health.setHomeserver(reachable ? 'reachable' : 'unreachable', 'it does not answer');
        },
      },
    });
    loop.start();
    // The retries back off (1 s, then 2 s): the fourth request comes about 3 s in.
    await waitUntil('the loop to come back', () => asked >= 4, {
      timeoutMs: 15_000,
      intervalMs: 50,
    });
    await loop.stop();
    // One change to unreachable (the second failure changes nothing), one back; the reason
    // is the fixed sentence, never the error's text (it names addresses).
    expect(seen).toEqual(['unreachable: it does not answer', 'reachable']);
    expect(health.current.homeserver).toBe('reachable');
    expect(health.current.reason).toBeUndefined();
  }, 20_000);

  it("counts the client's own retries too: a sync that is retried until the homeserver answers", async () => {
    let asked = 0;
    const api = {
      userId: '@me:example.org',
      sync: (options: { signal: AbortSignal; onRetry?: () => void }) => {
        asked++;
        if (asked > 1) {
          return new Promise((_resolve, reject) => {
            options.signal.addEventListener('abort', () => {
              reject(new Error('aborted'));
            });
          });
        }
        // What HomeserverClient does while the homeserver is down: retry, never throw.
        options.onRetry?.();
        options.onRetry?.();
        return Promise.resolve({ next_batch: 's1' });
      },
    } as unknown as HomeserverApi;
    const engine = {
      receiveSyncAll: () => Promise.resolve({ verificationRequests: [], privateMessages: [] }),
      processOutgoing: () => Promise.resolve(),
    } as unknown as CryptoEngine;
    const seen: boolean[] = [];
    const loop = new SyncLoop({
      api,
      engine,
      handlers: {
        timeline: () => Promise.resolve(),
        invited: () => Promise.resolve(),
        joined: () => Promise.resolve(),
        left: () => Promise.resolve(),
        saveSince: () => Promise.resolve(),
        homeserver: (reachable) => seen.push(reachable),
      },
    });
    loop.start();
    await waitUntil('the second sync', () => asked >= 2, { timeoutMs: 5_000, intervalMs: 10 });
    await loop.stop();
    expect(seen).toEqual([false, false, true]);
  });
});
