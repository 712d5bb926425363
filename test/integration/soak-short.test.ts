import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../fixtures/index.ts';
import { runSoak, shortOptions } from '../soak/lib.ts';

/** Each life's endpoint stderr, kept for a failure's post-mortem (life-N.log). */
const LOGS = join(repoRoot, 'test', 'artifacts', 'soak');

// The soak's short mode (test/soak/lib.ts; `node test/soak/main.ts` runs the long one): on a
// fresh account, vault and TPM, 20 kill -9 of the endpoint compartment, the first few aimed at
// the steps of its first start (login, device keys, the cross-signing bootstrap), the rest under
// send and receive load, some timed to a store compaction; the homeserver stopped for 12 s
// mid-conversation and started again; the vault killed twice under load, once during a
// compaction. After each kill the same device and identity, and every message from the peer
// decrypts; in the end every accepted message reached the peer exactly once, the audit log's
// chain verifies and the endpoint never said STORE_, TAMPER, ROLLED or SECURITY.
describe('soak, short mode', () => {
  it('20 kills, a homeserver outage and vault kills: nothing lost, duplicated or changed', async () => {
    await rm(LOGS, { recursive: true, force: true });
    await mkdir(LOGS, { recursive: true });
    const result = await runSoak({
      ...shortOptions(),
      logDir: LOGS,
      seed: Math.floor(Math.random() * 2 ** 32),
      log: (line) => process.stderr.write(`soak: ${line}\n`),
    });
    process.stderr.write(`soak: ${JSON.stringify(result)}\n`);
    expect(result.failures).toEqual([]);
    const { kills, messages, received, identity, outage, vault } = result;
    expect(kills.total).toBe(20);
    expect(kills.firstStart).toBeGreaterThanOrEqual(1);
    expect(kills.underLoad).toBeGreaterThanOrEqual(10);
    // Aimed at until one lands (a compaction that finished first is aimed at again).
    expect(kills.compaction).toBeGreaterThanOrEqual(1);
    expect(messages.lost).toBe(0);
    expect(messages.duplicates).toBe(0);
    expect(messages.deliveredOnce).toBe(messages.accepted);
    // Enough traffic to mean something (the crash test this replaces asked for 150).
    expect(messages.accepted + received.sent).toBeGreaterThanOrEqual(150);
    expect(received.undecryptable).toBe(0);
    expect(received.decrypted).toBe(received.sent);
    expect(identity.checks).toBeGreaterThanOrEqual(15);
    expect(identity.deviceChanges).toBe(0);
    expect(identity.identityChanges).toBe(0);
    expect(outage.accepted).toBeGreaterThan(0);
    expect(outage.pendingAtEnd).toBeGreaterThanOrEqual(outage.accepted);
    expect(outage.deliveredAfter).toBe(outage.accepted);
    expect(outage.lost).toBe(0);
    expect(outage.syncRecovered).toBe(true);
    expect(outage.drainSeconds).not.toBeNull();
    expect(outage.homeserverShown).toBe('yes');
    expect(outage.reachableAgain).toBe(true);
    expect(vault.kills).toBe(2);
    expect(vault.recovered).toBe(2);
    expect(vault.lost).toBe(0);
  }, 900_000);
});
