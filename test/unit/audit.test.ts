import { execFile, spawn } from 'node:child_process';
import {
  appendFile,
  chmod,
  mkdtemp,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AuditBounds,
  AuditLog,
  type AuditLogOptions,
  type AuditRecord,
  GENESIS_HASH,
  canonicalJson,
  entryHash,
  segmentPath,
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
        `broken at seq ${N + 1} \\(line ${N + 1} of log-\\d+\\.jsonl\\): torn tail: the last line is incomplete`,
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

// ---------------------------------------------------------------------------------------------
// Segments, the size bound, and counting refusal floods

const SMALL = { segmentBytes: 2048, maxBytes: 1 << 20 };

/** A log in segments of 2 KiB (about 7 entries each) with n entries appended. */
async function segmentedLog(n: number, bounds: AuditBounds = SMALL): Promise<string> {
  const path = join(dir, `seg-${++counter}.jsonl`);
  const log = await AuditLog.open(path, { bounds });
  for (let i = 1; i <= n; i++) await log.append(record(i));
  await log.close();
  return path;
}

/** The sealed segment files of a log, oldest first (full paths). */
async function sealedOf(path: string): Promise<string[]> {
  const base = basename(path);
  return (await readdir(dirname(path)))
    .filter((f) => new RegExp(`^${base.replace('.', '\\.')}\\.\\d{6}$`).test(f))
    .sort()
    .map((f) => join(dirname(path), f));
}

type Entry = { seq: number; hash: string; prevHash: string } & Record<string, unknown>;
async function entriesOf(file: string): Promise<Entry[]> {
  return (await lines(file)).map((l) => JSON.parse(l) as Entry);
}

async function bytesOf(path: string): Promise<number> {
  let total = (await stat(path)).size;
  for (const f of await sealedOf(path)) total += (await stat(f)).size;
  return total;
}

describe('audit log: segments', { timeout: 30_000 }, () => {
  it('rotates into numbered segments, each chained to the one before, verified as one chain', async () => {
    const path = await segmentedLog(60);
    const sealed = await sealedOf(path);
    expect(sealed.length).toBeGreaterThanOrEqual(4);
    expect(sealed.map((f) => f.slice(-7))).toEqual(
      sealed.map((_, i) => `.${String(i + 1).padStart(6, '0')}`),
    );
    const files = [...sealed, path];
    let before: Entry | undefined;
    for (const [i, file] of files.entries()) {
      expect((await stat(file)).size).toBeLessThanOrEqual(SMALL.segmentBytes);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      const entries = await entriesOf(file);
      const first = entries[0];
      if (i === 0) {
        expect(first).toMatchObject({ seq: 1, prevHash: GENESIS_HASH });
      } else {
        // The first entry of a new segment chains to the last of the previous one.
        expect(first).toMatchObject({
          action: 'audit.segment',
          segment: i + 1,
          decision: 'info',
          reason: 'SEGMENT_START',
          seq: (before?.seq ?? 0) + 1,
          prevHash: before?.hash,
        });
      }
      before = entries.at(-1);
    }
    expect(await verifyAuditLog(path)).toEqual({
      ok: true,
      count: 60 + sealed.length,
      head: { seq: before?.seq, hash: before?.hash },
      segments: files.length,
      pruned: 0,
    });
    // Reopened, it continues the chain in the segment being written.
    const log = await AuditLog.open(path, { bounds: SMALL });
    expect(log.head).toEqual({ seq: before?.seq, hash: before?.hash });
    await log.append(record(1));
    await log.close();
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 61 + sealed.length });
  });

  it('deletes the oldest segments past maxBytes after recording where they end; verify accepts that', async () => {
    const bounds = { segmentBytes: 2048, maxBytes: 8192 };
    const path = await segmentedLog(200, bounds);
    expect(await bytesOf(path)).toBeLessThanOrEqual(bounds.maxBytes);
    const sealed = await sealedOf(path);
    const oldest = (await entriesOf(sealed[0] ?? ''))[0];
    expect(oldest?.action).toBe('audit.segment');
    expect(oldest?.segment).toBeGreaterThan(10);
    const all = (await Promise.all([...sealed, path].map(entriesOf))).flat();
    const prunes = all.filter((e) => e.action === 'audit.prune');
    expect(prunes.length).toBeGreaterThan(0);
    // The newest prune names exactly the entry the oldest kept segment continues from.
    expect(prunes.at(-1)).toMatchObject({
      decision: 'info',
      reason: 'SIZE_BOUND',
      pruned: {
        segment: Number(oldest?.segment) - 1,
        seq: (oldest?.seq ?? 0) - 1,
        hash: oldest?.prevHash,
      },
    });
    const head = all.at(-1);
    expect(await verifyAuditLog(path)).toEqual({
      ok: true,
      count: all.length,
      head: { seq: head?.seq, hash: head?.hash },
      segments: sealed.length + 1,
      pruned: (oldest?.seq ?? 0) - 1,
    });
  });

  it('a prune interrupted before its files were deleted verifies, and the next open finishes it', async () => {
    const path = await segmentedLog(40);
    const before = await sealedOf(path);
    const copies = await Promise.all(before.map(async (f) => [f, await readFile(f)] as const));
    const tight = { segmentBytes: 2048, maxBytes: 4096 };
    await (await AuditLog.open(path, { bounds: tight })).close();
    const after = await sealedOf(path);
    expect(after.length).toBeLessThan(before.length);
    // As if the process died after the audit.prune entry was durable, before any unlink.
    for (const [file, bytes] of copies) {
      if (!after.includes(file)) await writeFile(file, bytes, { mode: 0o600 });
    }
    expect(await verifyAuditLog(path)).toMatchObject({ ok: true, pruned: 0 });
    await (await AuditLog.open(path, { bounds: tight })).close();
    const result = await verifyAuditLog(path);
    expect(result).toMatchObject({ ok: true });
    expect(result.ok && result.pruned).toBeGreaterThan(0);
  });

  it('continues after a crash between sealing a segment and starting the next', async () => {
    for (const leftover of ['none', 'empty'] as const) {
      const path = await segmentedLog(30);
      const n = (await sealedOf(path)).length + 1;
      const head = (await entriesOf(path)).at(-1);
      await rename(path, segmentPath(path, n));
      if (leftover === 'empty') await writeFile(path, '', { mode: 0o600 });
      expect(await verifyAuditLog(path)).toMatchObject({
        ok: true,
        segments: leftover === 'empty' ? n + 1 : n,
      });
      const log = await AuditLog.open(path, { bounds: SMALL });
      // The new segment's header is chained at once.
      expect(log.head.seq).toBe((head?.seq ?? 0) + 1);
      await log.append(record(1));
      await log.close();
      const [header] = await entriesOf(path);
      expect(header).toMatchObject({
        action: 'audit.segment',
        segment: n + 1,
        seq: (head?.seq ?? 0) + 1,
        prevHash: head?.hash,
      });
      expect(await verifyAuditLog(path)).toMatchObject({ ok: true, segments: n + 1 });
    }
  });

  it('without bounds it stays one file (short-lived writers such as reset-store)', async () => {
    const path = join(dir, `unbounded-${++counter}.jsonl`);
    const log = await AuditLog.open(path);
    for (let i = 0; i < 40; i++) await log.append(record(i));
    await log.close();
    expect(await sealedOf(path)).toEqual([]);
    expect((await stat(path)).size).toBeGreaterThan(SMALL.segmentBytes);
  });

  it('refuses bounds that cannot hold a sealed segment beside the one being written', async () => {
    const path = join(dir, `bad-bounds-${++counter}.jsonl`);
    await expect(
      AuditLog.open(path, { bounds: { segmentBytes: 4096, maxBytes: 6000 } }),
    ).rejects.toThrow(/at least twice segmentBytes/);
  });
});

describe('audit log: the verifier checks the whole set of segments', { timeout: 30_000 }, () => {
  let path: string;
  let sealed: string[];
  let segments: Entry[][];
  beforeAll(async () => {
    path = await segmentedLog(60);
    sealed = await sealedOf(path);
    segments = await Promise.all(sealed.map(entriesOf));
  });

  /** A copy of the log (every segment) to tamper with. */
  async function copy(): Promise<{ path: string; sealed: string[] }> {
    const to = join(dir, `copy-${++counter}.jsonl`);
    const copies = sealed.map((f) => `${to}${f.slice(path.length)}`);
    for (const [i, f] of sealed.entries()) await writeFile(copies[i] ?? '', await readFile(f));
    await writeFile(to, await readFile(path));
    return { path: to, sealed: copies };
  }

  const seg = (i: number): Entry[] => segments[i] ?? [];
  const lastSeq = (i: number): number => seg(i).at(-1)?.seq ?? 0;

  async function broken(at: string) {
    const result = await verifyAuditLog(at);
    expect(result.ok).toBe(false);
    return result.ok ? undefined : result.broken;
  }

  it('a missing middle segment: named, at the first line of the one after', async () => {
    const c = await copy();
    await unlink(c.sealed[1] ?? '');
    expect(await broken(c.path)).toMatchObject({
      problem: 'segment-missing',
      file: basename(c.sealed[2] ?? ''),
      line: 1,
      seq: lastSeq(0) + 1,
      detail: expect.stringMatching(/^segment 2 is missing/) as unknown,
    });
  });

  it('two segments swapped: reordered, at the first line of the first misplaced file', async () => {
    const c = await copy();
    const [, two = '', three = ''] = c.sealed;
    await rename(two, `${two}.x`);
    await rename(three, two);
    await rename(`${two}.x`, three);
    expect(await broken(c.path)).toMatchObject({
      problem: 'segment-reordered',
      file: basename(two),
      line: 1,
      detail: expect.stringMatching(/holds segment 3/) as unknown,
    });
  });

  it('a segment cut short at a line end: truncated, with the entries that are gone', async () => {
    const c = await copy();
    await rewrite(c.sealed[1] ?? '', (ls) => ls.slice(0, -2));
    expect(await broken(c.path)).toMatchObject({
      problem: 'segment-truncated',
      file: basename(c.sealed[2] ?? ''),
      line: 1,
      seq: lastSeq(1) - 1,
      detail: expect.stringMatching(
        new RegExp(`^entries ${lastSeq(1) - 1}-${lastSeq(1)} were cut off`),
      ) as unknown,
    });
  });

  it('a segment cut mid-line: truncated, at its last line', async () => {
    const c = await copy();
    const file = c.sealed[1] ?? '';
    const bytes = await readFile(file);
    await writeFile(file, bytes.subarray(0, bytes.length - 20));
    expect(await broken(c.path)).toMatchObject({
      problem: 'segment-truncated',
      file: basename(file),
      line: seg(1).length,
      seq: lastSeq(1),
    });
  });

  it('an edited line in a sealed segment: a hash mismatch at that file and line', async () => {
    const c = await copy();
    const file = c.sealed[2] ?? '';
    await rewrite(file, (ls) =>
      ls.map((l, i) => (i === 2 ? l.replace(/"decision":"(allow|deny)"/, '"decision":"info"') : l)),
    );
    expect(await broken(c.path)).toMatchObject({
      problem: 'hash-mismatch',
      file: basename(file),
      line: 3,
      seq: seg(2)[2]?.seq,
    });
  });

  it('the oldest segment deleted without a recorded prune: missing, entries from seq 1', async () => {
    const c = await copy();
    await unlink(c.sealed[0] ?? '');
    const b = await broken(c.path);
    expect(b).toMatchObject({
      problem: 'segment-missing',
      file: basename(c.sealed[1] ?? ''),
      seq: 1,
    });
    expect(b?.detail).toMatch(
      new RegExp(`entries 1-${lastSeq(0)} are gone and no audit.prune entry records deleting them`),
    );
  });

  it('in a pruned log, deleting the oldest kept segment is still seen', async () => {
    const pruned = await segmentedLog(200, { segmentBytes: 2048, maxBytes: 8192 });
    const [oldest = ''] = await sealedOf(pruned);
    const start = (await entriesOf(oldest))[0]?.seq ?? 0;
    await unlink(oldest);
    const b = await broken(pruned);
    expect(b).toMatchObject({ problem: 'segment-missing', seq: start });
    expect(b?.detail).toMatch(new RegExp(`pruning is recorded up to seq ${start - 1}`));
  });

  it('a segment header inside a segment, or an ordinary entry with a log-only field, is refused', async () => {
    const c = await copy();
    // A header copied into the middle of a file, its hash fixed up, breaks the chain there.
    await rewrite(c.sealed[1] ?? '', (ls) =>
      ls.map((l, i) => {
        if (i !== 3) return l;
        const e = JSON.parse(l) as Parameters<typeof entryHash>[0];
        const body = { ...e, segment: 7 };
        return canonicalJson({ ...body, hash: entryHash(body) });
      }),
    );
    expect(await broken(c.path)).toMatchObject({
      problem: 'invalid-entry',
      file: basename(c.sealed[1] ?? ''),
      line: 4,
      detail: expect.stringMatching(/^segment: not a field of/) as unknown,
    });
  });
});

describe(
  'audit log: counting refusals a caller can repeat without limit',
  { timeout: 30_000 },
  () => {
    const unknownToken = (reason: string): AuditRecord => ({
      client: null,
      action: 'status',
      target: null,
      decision: 'deny',
      reason,
    });

    it('unknown tokens: the first few written one by one, the rest counted into one entry', async () => {
      const path = join(dir, `flood-${++counter}.jsonl`);
      const log = await AuditLog.open(path, {
        refusals: { windowMs: 60_000, individualPerWindow: 3 },
      });
      const results = await Promise.all(
        Array.from({ length: 1000 }, (_, i) =>
          log.appendRefusal(unknownToken(i % 4 === 0 ? 'UNAUTHENTICATED' : 'RATE_LIMITED')),
        ),
      );
      expect(results.filter((r) => r !== null)).toHaveLength(3);
      // Until the window ends the counts are in memory only: what a crash would lose.
      expect(await lines(path)).toHaveLength(3);
      await log.flushRefusals();
      const entries = await entriesOf(path);
      expect(entries).toHaveLength(4);
      const summary = entries[3];
      expect(summary).toMatchObject({
        client: null,
        action: 'audit.refusals',
        target: null,
        decision: 'deny',
        reason: 'AGGREGATED',
        counts: { RATE_LIMITED: 748, UNAUTHENTICATED: 249 }, // 1000 less the 3 written
      });
      expect(Date.parse(String(summary?.since))).toBeLessThanOrEqual(
        Date.parse(String(summary?.ts)),
      );
      await log.close();
      expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 4 });
      expect((await stat(path)).size).toBeLessThan(2000);
    });

    it('a window ends by itself; the next one writes its first few again', async () => {
      const path = join(dir, `windows-${++counter}.jsonl`);
      const log = await AuditLog.open(path, {
        refusals: { windowMs: 100, individualPerWindow: 2 },
      });
      for (let i = 0; i < 10; i++) await log.appendRefusal(unknownToken('UNAUTHENTICATED'));
      await new Promise((r) => setTimeout(r, 300));
      const first = await entriesOf(path);
      expect(first.map((e) => e.action)).toEqual(['status', 'status', 'audit.refusals']);
      expect(first[2]?.counts).toEqual({ UNAUTHENTICATED: 8 });
      for (let i = 0; i < 10; i++) await log.appendRefusal(unknownToken('RATE_LIMITED'));
      await log.close(); // closing writes the open window's counts
      const all = await entriesOf(path);
      expect(all.map((e) => e.action)).toEqual([
        ...['status', 'status', 'audit.refusals'],
        ...['status', 'status', 'audit.refusals'],
      ]);
      expect(all[5]?.counts).toEqual({ RATE_LIMITED: 8 });
      expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 6 });
    });

    it('allowed calls and refusals a client pays for are each written; its rate-limit refusals are counted under its name', async () => {
      const path = join(dir, `clients-${++counter}.jsonl`);
      const log = await AuditLog.open(path, {
        refusals: { windowMs: 60_000, individualPerWindow: 2 },
      });
      const as = (client: string, decision: 'allow' | 'deny', reason: string): AuditRecord => ({
        client,
        action: 'messages.send',
        target: '!room:example.org',
        decision,
        reason,
      });
      const written: unknown[] = [];
      for (let i = 0; i < 20; i++) {
        written.push(await log.append(as('web-ui', 'allow', 'OK')));
        written.push(await log.appendRefusal(as('web-ui', 'deny', 'FORBIDDEN_ROOM')));
      }
      expect(written.every((w) => w !== null)).toBe(true);
      // A refused policy reload has no client either, and is no flood: always written.
      const reload = await log.appendRefusal({
        client: null,
        action: 'policy.reload',
        target: null,
        decision: 'deny',
        reason: 'POLICY_INVALID',
      });
      expect(reload).not.toBeNull();
      const limited = [];
      for (const client of ['web-ui', 'bot']) {
        for (let i = 0; i < 20; i++) {
          limited.push(await log.appendRefusal(as(client, 'deny', 'RATE_LIMITED')));
        }
      }
      expect(limited.filter((w) => w !== null)).toHaveLength(4);
      await log.close();
      const entries = await entriesOf(path);
      expect(entries.filter((e) => e.client === 'web-ui' && e.decision === 'allow')).toHaveLength(
        20,
      );
      expect(entries.filter((e) => e.reason === 'FORBIDDEN_ROOM')).toHaveLength(20);
      const summaries = entries.filter((e) => e.action === 'audit.refusals');
      expect(summaries.map((e) => [e.client, e.counts])).toEqual([
        ['web-ui', { RATE_LIMITED: 18 }],
        ['bot', { RATE_LIMITED: 18 }],
      ]);
      expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 40 + 1 + 4 + 2 });
    });

    it("append() refuses the log's own entries and fields", async () => {
      const path = join(dir, `own-${++counter}.jsonl`);
      const log = await AuditLog.open(path);
      for (const action of ['audit.segment', 'audit.prune', 'audit.refusals'] as const) {
        await expect(
          log.append({ client: null, action, target: null, decision: 'info', reason: 'OK' }),
        ).rejects.toThrow(/^audit record: action: written by the audit log itself/);
      }
      await expect(log.append({ ...record(1), counts: { OK: 1 } } as AuditRecord)).rejects.toThrow(
        /^audit record: /,
      );
      await log.close();
      expect(await verifyAuditLog(path)).toMatchObject({ ok: true, count: 0 });
    });
  },
);

describe('audit log: kill -9 while segments rotate and are pruned', { timeout: 60_000 }, () => {
  it('every reopen repairs and continues, and the whole set verifies each time', async () => {
    const path = join(dir, `killed-${++counter}.jsonl`);
    const index = fileURLToPath(new URL('../../policy/index.ts', import.meta.url));
    const writer = join(dir, 'writer.ts');
    const bounds = { segmentBytes: 2048, maxBytes: 8192 };
    await writeFile(
      writer,
      `import { AuditLog } from ${JSON.stringify(index)};
const log = await AuditLog.open(process.argv[2], { bounds: ${JSON.stringify(bounds)},
  refusals: { windowMs: 5, individualPerWindow: 1 } });
process.stdout.write('open\\n');
const r = (client, decision, reason) => ({ client, action: 'rooms.read', target: null, decision, reason });
for (;;) await Promise.all([log.append(r('web-ui', 'allow', 'OK')),
  log.appendRefusal(r(null, 'deny', 'UNAUTHENTICATED')), log.append(r('bot', 'deny', 'FORBIDDEN_ROOM'))]);
`,
    );
    let last = 0;
    for (let round = 0; round < 10; round++) {
      const child = spawn(process.execPath, [writer, path], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      await new Promise((resolve) => child.stdout.once('data', resolve));
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 200));
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('exit', resolve));
      const log = await AuditLog.open(path, { bounds });
      expect(log.head.seq).toBeGreaterThanOrEqual(last);
      last = log.head.seq;
      await log.close();
      const result = await verifyAuditLog(path);
      expect(result, `after kill ${round + 1}`).toMatchObject({ ok: true });
    }
    expect(await sealedOf(path)).not.toHaveLength(0);
    expect(await bytesOf(path)).toBeLessThanOrEqual(bounds.maxBytes);
  });
});
