import { execFile } from 'node:child_process';
import {
  appendFile,
  chmod,
  mkdtemp,
  readFile,
  readdir,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuditLog,
  type AuditLogOptions,
  type AuditRecord,
  GENESIS_HASH,
  canonicalJson,
  entryHash,
  verifyAuditLog,
} from '../../policy/index.ts';

const MAIN = fileURLToPath(new URL('../../policy/main.ts', import.meta.url));
const N = 12;

let dir: string;
let counter = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'audit-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function record(i: number): AuditRecord {
  return {
    client: i % 3 === 0 ? null : `client-${i % 3}`,
    action: i % 2 === 0 ? 'messages.send' : 'rooms.read',
    target: i % 2 === 0 ? '!room:example.org' : '@bob:example.org',
    decision: i % 4 === 0 ? 'deny' : 'allow',
    reason: i % 4 === 0 ? 'FORBIDDEN_ROOM' : 'OK',
  };
}

/** A fresh log with N entries; returns its path. */
async function logWith(n = N, options: AuditLogOptions = {}): Promise<string> {
  const path = join(dir, `log-${++counter}.jsonl`);
  const log = await AuditLog.open(path, options);
  for (let i = 1; i <= n; i++) await log.append(record(i));
  await log.close();
  return path;
}

async function lines(path: string): Promise<string[]> {
  return (await readFile(path, 'utf8')).split('\n').slice(0, -1);
}

async function rewrite(path: string, edit: (lines: string[]) => string[]): Promise<void> {
  await writeFile(
    path,
    edit(await lines(path))
      .map((l) => `${l}\n`)
      .join(''),
  );
}

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('audit log: appending', () => {
  it('appends N chained entries that verify, with mode 0600', async () => {
    const path = await logWith();
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: N, head: { seq: N } });
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const entries = (await lines(path)).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(entries[0]).toMatchObject({ seq: 1, prevHash: GENESIS_HASH });
    expect(entries[1]?.prevHash).toBe(entries[0]?.hash);
    // hash = SHA-256 over the canonical JSON of the entry without hash
    const { hash, ...body } = entries[0] as { hash: string } & Record<string, unknown>;
    expect(hash).toBe(entryHash(body as Parameters<typeof entryHash>[0]));
    expect(Object.keys(entries[0] ?? {}).sort()).toEqual(
      ['action', 'client', 'decision', 'hash', 'prevHash', 'reason', 'seq', 'target', 'ts'].sort(),
    );
  });

  it('continues the chain after reopening, and concurrent appends keep seq order', async () => {
    const path = await logWith(3);
    const log = await AuditLog.open(path);
    expect(log.head.seq).toBe(3);
    const appended = await Promise.all(Array.from({ length: 50 }, (_, i) => log.append(record(i))));
    expect(appended.map((e) => e.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 4));
    await log.close();
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 53 });
  });

  it('refuses records that could carry content or secrets, naming the field only', async () => {
    const path = join(dir, 'strict.jsonl');
    const log = await AuditLog.open(path);
    const secret = 'hunter2 the message body';
    const bad: unknown[] = [
      { ...record(1), message: secret },
      { ...record(1), reason: secret },
      { ...record(1), client: secret },
      { ...record(1), target: secret },
      { ...record(1), target: `!${'a'.repeat(300)}` },
      { ...record(1), action: 'keys.export' },
      { ...record(1), decision: 'maybe' },
    ];
    for (const r of bad) {
      const error = await log.append(r as AuditRecord).catch((e: unknown) => e as Error);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).message).toMatch(/^audit record: /);
      expect((error as Error).message).not.toContain('hunter2');
    }
    await log.append(record(1));
    await log.close();
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 1 });
  });

  it('one writer per log: a second open is refused while the first holds it', async () => {
    const path = await logWith(1);
    const first = await AuditLog.open(path);
    await expect(AuditLog.open(path)).rejects.toThrow(/is locked by process \d+/);
    await first.close();
    const again = await AuditLog.open(path);
    await again.close();
  });

  it('takes over the lock of a writer that died (kill -9)', async () => {
    const path = await logWith(1);
    // pid_max is at most 2^22 on Linux: this pid cannot be running.
    await writeFile(`${path}.lock`, '4194305\n');
    const log = await AuditLog.open(path);
    expect(log.head.seq).toBe(1);
    await log.close();
  });

  it('refuses to continue after a last entry that does not verify', async () => {
    const path = await logWith(3);
    await rewrite(path, (ls) => [...ls.slice(0, -1), (ls.at(-1) ?? '').replace('"OK"', '"NO"')]);
    await expect(AuditLog.open(path)).rejects.toThrow(/the last entry does not verify/);
  });

  it('refuses a log other users can write', async () => {
    const path = await logWith(1);
    await chmod(path, 0o666);
    await expect(AuditLog.open(path)).rejects.toThrow(/writable by other users/);
  });

  it('canonical JSON sorts keys and has no whitespace', () => {
    expect(canonicalJson({ b: 1, a: [true, null, 'x'], c: { z: 1, y: 2 } })).toBe(
      '{"a":[true,null,"x"],"b":1,"c":{"y":2,"z":1}}',
    );
  });
});

describe('audit log: verification finds the first broken entry', { timeout: 30_000 }, () => {
  const K = 5; // the entry tampered with

  const cases: [string, (ls: string[]) => string[], { seq: number; problem: string }][] = [
    [
      'a changed field',
      (ls) => ls.map((l, i) => (i === K - 1 ? l.replace('"client-2"', '"client-1"') : l)),
      { seq: K, problem: 'hash-mismatch' },
    ],
    [
      'a changed decision',
      (ls) => ls.map((l, i) => (i === K - 1 ? l.replace('"allow"', '"deny"') : l)),
      { seq: K, problem: 'hash-mismatch' },
    ],
    ['a deleted line', (ls) => ls.filter((_, i) => i !== K - 1), { seq: K, problem: 'seq-gap' }],
    [
      'two lines reordered',
      (ls) => ls.map((l, i) => (i === K - 1 ? ls[K] : i === K ? ls[K - 1] : l) ?? ''),
      { seq: K, problem: 'seq-gap' },
    ],
    [
      'a truncated hash',
      (ls) =>
        ls.map((l, i) =>
          i === K - 1 ? l.replace(/("hash":"[0-9a-f]{20})[0-9a-f]{44}"/, '$1"') : l,
        ),
      { seq: K, problem: 'hash-mismatch' },
    ],
    [
      'an unparsable line',
      (ls) => ls.map((l, i) => (i === K - 1 ? l.slice(0, 30) : l)),
      { seq: K, problem: 'unparsable' },
    ],
    [
      'an added field (content smuggled in), hash recomputed',
      (ls) =>
        ls.map((l, i) => {
          if (i !== K - 1) return l;
          const e = JSON.parse(l) as Record<string, unknown>;
          return canonicalJson({ ...e, body: 'secret' });
        }),
      { seq: K, problem: 'invalid-entry' },
    ],
    [
      'an entry rewritten with a fresh, self-consistent hash',
      (ls) =>
        ls.map((l, i) => {
          if (i !== K - 1) return l;
          // entryHash() takes only the entry's own fields; the old hash is replaced below.
          const e = JSON.parse(l) as Record<string, unknown>;
          const body = { ...e, decision: 'deny', reason: 'FORBIDDEN_ROOM' } as Parameters<
            typeof entryHash
          >[0];
          return canonicalJson({ ...body, hash: entryHash(body) });
        }),
      { seq: K + 1, problem: 'prevhash-mismatch' },
    ],
  ];

  for (const [what, tamper, expected] of cases) {
    it(`${what}: reports seq ${expected.seq} (${expected.problem}) and exits 1`, async () => {
      const path = await logWith();
      await rewrite(path, tamper);
      await expectBroken(path, expected);
    });
  }

  it('an entry spliced in from another log (valid on its own, right seq): prevHash mismatch', async () => {
    const path = await logWith();
    const other = await logWith(N, { now: () => new Date('2000-01-01T00:00:00Z') });
    const foreign = (await lines(other))[K - 1] ?? '';
    await rewrite(path, (ls) => ls.map((l, i) => (i === K - 1 ? foreign : l)));
    await expectBroken(path, { seq: K, problem: 'prevhash-mismatch' });
  });

  async function expectBroken(path: string, expected: { seq: number; problem: string }) {
    const result = await verifyAuditLog(path);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.broken).toMatchObject(expected);
    expect(result.count).toBe(expected.seq - 1);

    const run = await cli('audit', 'verify', '--log', path, '--json');
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout)).toMatchObject({ ok: false, broken: expected });
    const plain = await cli('audit', 'verify', '--log', path);
    expect(plain.code).toBe(1);
    expect(plain.stdout).toContain(`broken at seq ${expected.seq} `);
  }

  it('an untouched log: OK with the count, exit 0', async () => {
    const path = await logWith();
    const run = await cli('audit', 'verify', '--log', path);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`^OK: ${N} entries, chain intact`));
    const json = await cli('audit', 'verify', '--log', path, '--json');
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: true, count: N });
    const empty = join(dir, 'empty.jsonl');
    await writeFile(empty, '');
    expect(await verifyAuditLog(empty)).toMatchObject({ ok: true, count: 0 });
  });
});

describe('audit log: a torn last line (a crash mid-append)', { timeout: 30_000 }, () => {
  it('verify reports it clearly as the torn tail', async () => {
    const path = await logWith();
    const next = (await lines(path))[0] ?? '';
    await appendFile(path, next.slice(0, 40));
    const result = await verifyAuditLog(path);
    expect(result).toMatchObject({
      ok: false,
      count: N,
      broken: { seq: N + 1, line: N + 1, problem: 'torn-tail' },
    });
    const run = await cli('audit', 'verify', '--log', path);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(
      new RegExp(
        `broken at seq ${N + 1} \\(line ${N + 1}\\): torn tail: the last line is incomplete`,
      ),
    );
  });

  it('open cuts it off, keeps it aside, records the recovery and continues the chain', async () => {
    const path = await logWith();
    await appendFile(path, '{"seq":13,"ts":"2025');
    const log = await AuditLog.open(path);
    expect(log.head.seq).toBe(N + 1);
    await log.append(record(1));
    await log.close();
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: N + 2 });
    const recovered = JSON.parse((await lines(path))[N] ?? '') as Record<string, unknown>;
    expect(recovered).toMatchObject({
      seq: N + 1,
      action: 'audit.recover',
      decision: 'info',
      reason: 'TORN_TAIL_DISCARDED',
    });
    const kept = (await readdir(dir)).filter((f) => f.startsWith(`log-${counter}.jsonl.torn-`));
    expect(kept).toHaveLength(1);
    expect(await readFile(join(dir, kept[0] ?? ''), 'utf8')).toBe('{"seq":13,"ts":"2025');
  });

  it('with onTornTail: refuse, open refuses instead', async () => {
    const path = await logWith(2);
    await appendFile(path, '{"seq"');
    await expect(AuditLog.open(path, { onTornTail: 'refuse' })).rejects.toThrow(
      /the last line is incomplete/,
    );
  });

  it('a log that is only a torn line starts afresh after recovery', async () => {
    const path = join(dir, 'only-torn.jsonl');
    await writeFile(path, '{"seq":1,', { mode: 0o600 });
    const log = await AuditLog.open(path);
    expect(log.head.seq).toBe(1);
    await log.close();
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 1 });
  });
});
