/**
 * The store's integrity end to end, with the real endpoint compartment, its TPM vault (swtpm)
 * and Synapse: a deleted store directory is refused (STORE_MISSING), not silently made into a
 * new device; `reset-store` is the explicit way to a new device (its reason is in the
 * hash-chained audit log, refused while the endpoint runs); afterwards the endpoint comes up
 * as a new device under the same cross-signing master key. A store started with another
 * account's config is refused (STORE_WRONG_IDENTITY).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import { verifyAuditLog } from '../../policy/index.ts';
import {
  type SynapseUser,
  prepareCompartments,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { repoRoot } from '../fixtures/process.ts';

const run = promisify(execFile);
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());
const MAIN = join(repoRoot, 'endpoint', 'main.ts');

let dir: string;
let configPath: string;
let token: string;
let auditLog: string;
let alice: SynapseUser;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-store-integrity-'));
  alice = await synapse().registerUser('alice');
  const prepared = await prepareCompartments(dir, {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
  });
  configPath = prepared.endpointConfig;
  token = prepared.tokens.test ?? '';
  auditLog = prepared.auditLog;
}, 180_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Starts the endpoint, expecting it to refuse; returns its stderr. */
async function refusedStart(config: string): Promise<string> {
  const lines: string[] = [];
  const error = await spawnEndpoint(config, { onStderr: (l) => lines.push(l) }).then(
    async (e) => {
      await e.stop();
      return null;
    },
    (e: unknown) => e,
  );
  expect(error, 'the endpoint started').not.toBeNull();
  return lines.join('\n');
}

async function resetStore(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [MAIN, 'reset-store', ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: err.code ?? -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

async function masterKey(): Promise<unknown> {
  const res = await fetch(`${synapse().baseUrl}/_matrix/client/v3/keys/query`, {
    method: 'POST',
    headers: { authorization: `Bearer ${alice.accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ device_keys: { [alice.userId]: [] } }),
  });
  const body = (await res.json()) as { master_keys?: Record<string, { keys: unknown }> };
  return body.master_keys?.[alice.userId]?.keys;
}

describe('store integrity, end to end', () => {
  it('a deleted store is refused; reset-store starts a new device, audited, under the same master key', async () => {
    const auth = { token };
    let endpoint = await spawnEndpoint(configPath);
    const first = await endpoint.client.call('status', { auth });
    expect(first.userId).toBe(alice.userId);
    // While it runs, a reset is refused (the audit log and the store are locked).
    const busy = await resetStore('--config', configPath, '--reason', 'while running');
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(/locked/);
    await endpoint.stop();
    const master = await masterKey();
    expect(master).toBeDefined();

    // The store directory is gone: refused, nothing recreated.
    await rm(join(dir, 'data', 'store'), { recursive: true });
    const stderr = await refusedStart(configPath);
    expect(stderr).toContain('STORE_MISSING');
    expect(stderr).toContain('reset-store');
    await expect(readFile(join(dir, 'data', 'store', 'snapshot'))).rejects.toMatchObject({
      code: 'ENOENT',
    });
    // Deleting the marker beside it too does not help: the TPM vault recorded where its
    // counter started, and the counter has moved past it.
    await rm(join(dir, 'data', 'store.created'), { force: true });
    const markerGone = await refusedStart(configPath);
    expect(markerGone).toContain('STORE_MISSING');

    const help = await resetStore('--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(
      /^Usage: node endpoint\/main\.ts reset-store --config FILE --reason TEXT/,
    );
    expect((await resetStore('--config', configPath)).code).toBe(2);

    const reset = await resetStore('--config', configPath, '--reason', 'disk replaced', '--json');
    expect(reset.stderr).not.toMatch(/error/i);
    expect(reset.code).toBe(0);
    const out = JSON.parse(reset.stdout) as {
      ok: boolean;
      reason: string;
      auditSeq: number;
      movedTo: string | null;
      peersWillSee: string[];
    };
    expect(out).toMatchObject({ ok: true, reason: 'DISK_REPLACED', movedTo: null });
    expect(out.peersWillSee.join(' ')).toMatch(/new device id/);
    expect(out.peersWillSee.join(' ')).toMatch(/same cross-signing identity/);

    // The reason is in the audit log, whose chain still verifies.
    expect((await verifyAuditLog(auditLog)).ok).toBe(true);
    const entries = (await readFile(auditLog, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { seq: number; action: string; reason: string });
    expect(entries.find((e) => e.seq === out.auditSeq)).toMatchObject({
      action: 'store.reset',
      reason: 'DISK_REPLACED',
    });

    // A new device, with the vault's master key still the account's identity.
    endpoint = await spawnEndpoint(configPath);
    const second = await endpoint.client.call('status', { auth });
    expect(second.userId).toBe(alice.userId);
    expect(second.deviceId).not.toBe(first.deviceId);
    await endpoint.stop();
    expect(await masterKey()).toEqual(master);

    // Resetting an existing store moves it aside (kept), and that store's next loss is
    // refused again: no leftover permission recreates a store.
    const again = await resetStore('--config', configPath, '--reason', 'retired laptop');
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/old store: moved to .*store\.reset-/);
    await rm(join(dir, 'data', 'store'), { recursive: true });
    expect(await refusedStart(configPath)).toContain('STORE_MISSING');
  });

  it("refuses to start as another account on this account's store", async () => {
    await resetStore('--config', configPath, '--reason', 'test setup');
    const endpoint = await spawnEndpoint(configPath);
    await endpoint.stop();
    const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
    const other = join(dir, 'carol.json');
    await writeFile(other, JSON.stringify({ ...config, user: 'carol' }));
    const stderr = await refusedStart(other);
    expect(stderr).toContain('STORE_WRONG_IDENTITY');
    expect(stderr).toContain(alice.userId);
    expect(stderr).toContain('carol');
  });
});
