import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SpawnedEndpoint, spawnEndpoint } from '../../endpoint/spawn.ts';
import { isRpcError } from '../../keyvault/common/rpc/index.ts';
import { DEFAULT_AUDIT, verifyAuditLog } from '../../policy/index.ts';
import { makeTempDir, prepareCompartments, startSwtpm, startSynapse } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { repoRoot } from '../fixtures/process.ts';

// Anyone who can reach the endpoint's channel, with no valid token, must not be able
// to fill the disk through the audit log; a valid client's calls stay on record one by one.
// The caller here is the channel itself (a compromised gateway can send anything).
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());
const run = promisify(execFile);

const LOOPS = 16;
const FLOOD_MS = 10_000;
/** Small segments so that the valid client's traffic rotates them in the real endpoint. */
const AUDIT = { segmentBytes: 64 * 1024, maxBytes: 16 * 1024 * 1024 };
const { windowSeconds, individualPerWindow } = DEFAULT_AUDIT.refusals;

let dir: string;
let endpoint: SpawnedEndpoint;
let auditLog: string;
let endpointConfig: string;
let tokens: Record<string, string>;
const stderr: string[] = [];

beforeAll(async () => {
  dir = await makeTempDir('audit-flood');
  const alice = await synapse().registerUser('alice');
  const prepared = await prepareCompartments(dir, {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients: [
      { name: 'good', capabilities: ['rooms.read'], requestsPerMinute: 60_000 },
      { name: 'tight', capabilities: ['rooms.read'], requestsPerMinute: 60 },
    ],
  });
  ({ auditLog, tokens, endpointConfig } = prepared);
  // The bounds an operator would write; refusal counting is left at its defaults.
  const policy = JSON.parse(await readFile(prepared.policyPath, 'utf8')) as Record<string, unknown>;
  await writeFile(prepared.policyPath, JSON.stringify({ ...policy, audit: AUDIT }), {
    mode: 0o600,
  });
  endpoint = await spawnEndpoint(endpointConfig, { onStderr: (l) => stderr.push(l) });
}, 180_000);

afterAll(async () => {
  await endpoint.stop();
  await rm(dir, { recursive: true, force: true });
});

/** Every file of the log: sealed segments, oldest first, then the one being written. */
async function logFiles(): Promise<string[]> {
  const base = basename(auditLog);
  const sealed = (await readdir(dirname(auditLog)))
    .filter((f) => f.startsWith(`${base}.`) && /^\d{6}$/.test(f.slice(base.length + 1)))
    .sort()
    .map((f) => join(dirname(auditLog), f));
  return [...sealed, auditLog];
}

async function logBytes(): Promise<number> {
  let total = 0;
  for (const f of await logFiles()) total += (await stat(f)).size;
  return total;
}

type Entry = {
  client: string | null;
  action: string;
  decision: string;
  reason: string;
  counts?: Record<string, number>;
  line: number;
};

async function entries(): Promise<Entry[]> {
  const out: Entry[] = [];
  for (const f of await logFiles()) {
    for (const l of (await readFile(f, 'utf8')).split('\n')) {
      if (l) out.push({ ...(JSON.parse(l) as Entry), line: Buffer.byteLength(l) + 1 });
    }
  }
  return out;
}

/** `loops` concurrent loops of `call` for `ms`; the outcomes by error code (OK for answers). */
async function hammer(
  loops: number,
  ms: number,
  call: () => Promise<unknown>,
): Promise<Map<string, number>> {
  const outcomes = new Map<string, number>();
  const end = Date.now() + ms;
  const loop = async (): Promise<void> => {
    while (Date.now() < end) {
      let code = 'OK';
      try {
        await call();
      } catch (e) {
        if (!isRpcError(e)) throw e;
        code = e.code;
      }
      outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: loops }, loop));
  return outcomes;
}

const unknownToken = (): Promise<unknown> =>
  endpoint.client.call('status', { auth: { token: randomBytes(32).toString('base64url') } });
const rooms = (name: string) => (): Promise<unknown> =>
  endpoint.client.call('rooms', { auth: { token: tokens[name] ?? '' } });

const kb = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KiB`;
const perHour = (bytes: number, ms: number): string =>
  `${((bytes * 3_600_000) / ms / 1024 / 1024).toFixed(2)} MiB/h`;

/** What each phase saw, checked against the log once the endpoint has stopped. */
const seen = {
  unknown: new Map<string, number>(),
  good: 0,
  tight: new Map<string, number>(),
};

describe('the audit log under a flood of unknown tokens', () => {
  it(`${LOOPS} loops of unknown tokens for ${FLOOD_MS / 1000} s grow the log by a few KiB`, async () => {
    const before = await logBytes();
    const outcomes = await hammer(LOOPS, FLOOD_MS, unknownToken);
    const grown = (await logBytes()) - before;
    const refused = (outcomes.get('UNAUTHENTICATED') ?? 0) + (outcomes.get('RATE_LIMITED') ?? 0);
    for (const [code, n] of outcomes) seen.unknown.set(code, n);
    process.stdout.write(
      `flood: ${refused} refusals (${[...outcomes].map(([c, n]) => `${c} ${n}`).join(', ')}) ` +
        `in ${FLOOD_MS / 1000} s; the log grew ${grown} bytes (${kb(grown)}), ` +
        `${perHour(grown, FLOOD_MS)} if it went on so\n`,
    );
    expect(outcomes.get('OK')).toBeUndefined();
    expect(refused).toBeGreaterThan(1000);
    // The first few of the window, written one by one; the rest are counted until it ends.
    expect(grown).toBeLessThan(4 * 1024);
    expect(await verifyAuditLog(auditLog)).toMatchObject({ ok: true });
  }, 60_000);

  it("a valid client's calls during the flood are each on record, before each answer", async () => {
    let good = 0;
    const [flood] = await Promise.all([
      hammer(LOOPS, FLOOD_MS, unknownToken),
      hammer(1, FLOOD_MS, rooms('good')).then((o) => {
        good = o.get('OK') ?? 0;
        expect([...o.keys()]).toEqual(['OK']);
      }),
    ]);
    for (const [code, n] of flood) seen.unknown.set(code, (seen.unknown.get(code) ?? 0) + n);
    seen.good = good;
    expect(good).toBeGreaterThan(100);
    // Each answer came after its entry was durable, so they are all there now.
    const logged = (await entries()).filter(
      (e) => e.client === 'good' && e.action === 'rooms.read' && e.decision === 'allow',
    );
    expect(logged).toHaveLength(good);
    const files = await logFiles();
    process.stdout.write(
      `during the flood the valid client made ${good} calls, each logged; the log is now ` +
        `${files.length} segments, ${kb(await logBytes())}\n`,
    );
    // Its traffic rotated segments in the running endpoint, and the chain runs across them.
    expect(files.length).toBeGreaterThan(1);
    expect(await verifyAuditLog(auditLog)).toMatchObject({ ok: true, segments: files.length });
  }, 60_000);

  it('a valid client hammering past its rate: its calls logged, its rate-limit refusals counted', async () => {
    const before = (await entries()).filter((e) => e.client === 'tight');
    expect(before).toHaveLength(0);
    const outcomes = await hammer(LOOPS, 5_000, rooms('tight'));
    for (const [code, n] of outcomes) seen.tight.set(code, n);
    const limited = outcomes.get('RATE_LIMITED') ?? 0;
    const ok = outcomes.get('OK') ?? 0;
    // 60 a minute, bursts of 60: the burst and 5 s of refill.
    expect(ok).toBeGreaterThanOrEqual(60);
    expect(ok).toBeLessThanOrEqual(60 + 6);
    expect(limited).toBeGreaterThan(1000);
    const lines = (await entries()).filter((e) => e.client === 'tight');
    const bytes = lines.reduce((sum, e) => sum + e.line, 0);
    process.stdout.write(
      `a valid client past its rate: ${ok} allowed, ${limited} refused in 5 s -> ${lines.length} ` +
        `lines (${kb(bytes)}) so far\n`,
    );
    expect(lines.filter((e) => e.decision === 'allow')).toHaveLength(ok);
    expect(lines.filter((e) => e.reason === 'RATE_LIMITED').length).toBeLessThanOrEqual(
      individualPerWindow,
    );
  }, 60_000);

  it('after a clean stop every refusal is accounted for, the chain verifies, and a restart sees no truncation', async () => {
    await endpoint.stop(); // closing writes the open windows' counts
    const all = await entries();
    const counted = (client: string | null, reason: string): number =>
      all
        .filter((e) => e.client === client)
        .reduce(
          (sum, e) =>
            sum +
            (e.action === 'audit.refusals'
              ? (e.counts?.[reason] ?? 0)
              : e.decision === 'deny' && e.reason === reason
                ? 1
                : 0),
          0,
        );
    // Written one by one or counted: each refusal the callers saw is in the log exactly once.
    for (const reason of ['UNAUTHENTICATED', 'RATE_LIMITED']) {
      expect(counted(null, reason), reason).toBe(seen.unknown.get(reason) ?? 0);
    }
    expect(counted('tight', 'RATE_LIMITED')).toBe(seen.tight.get('RATE_LIMITED') ?? 0);

    const flood = all.filter(
      (e) => e.client === null && (e.decision === 'deny' || e.action === 'audit.refusals'),
    );
    const floodBytes = flood.reduce((sum, e) => sum + e.line, 0);
    const refusals = [...seen.unknown.values()].reduce((a, b) => a + b, 0);
    const tight = all.filter((e) => e.client === 'tight');
    process.stdout.write(
      `in all: ${refusals} unknown-token refusals over ${(2 * FLOOD_MS) / 1000} s took ` +
        `${flood.length} lines, ${floodBytes} bytes; a sustained flood costs at most ` +
        `${individualPerWindow + 1} lines per ${windowSeconds} s window, ` +
        `about ${kb(((individualPerWindow + 1) * (floodBytes / flood.length) * 3600) / windowSeconds)}/h. ` +
        `The valid client past its rate: ${tight.length} lines for ` +
        `${[...seen.tight.values()].reduce((a, b) => a + b, 0)} calls\n`,
    );
    expect(floodBytes).toBeLessThan(4 * 1024);

    const verified = await verifyAuditLog(auditLog);
    expect(verified).toMatchObject({ ok: true, pruned: 0 });
    const cli = await run(process.execPath, [
      join(repoRoot, 'policy', 'main.ts'),
      'audit',
      'verify',
      '--log',
      auditLog,
    ]);
    expect(cli.stdout).toMatch(/^OK: \d+ entries, chain intact across \d+ segments/);

    // The head kept in the sealed store matches the log across its segments: no alarm.
    const restartErr: string[] = [];
    endpoint = await spawnEndpoint(endpointConfig, { onStderr: (l) => restartErr.push(l) });
    expect(restartErr.filter((l) => /SECURITY/.test(l))).toEqual([]);
    await expect(rooms('good')()).resolves.toBeDefined();
    expect(stderr.filter((l) => /internal error/.test(l))).toEqual([]);
  }, 120_000);
});
