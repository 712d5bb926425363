import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuditLog,
  Authorizer,
  DEFAULT_AUDIT,
  PolicyHolder,
  segmentPath,
  validatePolicy,
} from '../../policy/index.ts';

const MAIN = fileURLToPath(new URL('../../policy/main.ts', import.meta.url));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

// Each test starts the command a few times (about 0.3 s each).
describe('policy CLI', { timeout: 30_000 }, () => {
  let dir: string;
  let policy: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'policy-cli-'));
    policy = join(dir, 'policy.json');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('token create prints a token once, which then authorizes; the file keeps only its hash', async () => {
    const run = await cli(
      'token',
      'create',
      '--policy',
      policy,
      '--name',
      'web-ui',
      '--cap',
      'rooms.read',
      '--cap',
      'messages.send',
      '--room',
      '!a:example.org',
    );
    expect(run.code).toBe(0);
    const token = run.stdout.trim();
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(run.stderr).toMatch(/shown only this once/);
    expect(run.stderr).not.toContain(token);

    const text = await readFile(policy, 'utf8');
    expect(text).not.toContain(token);
    expect((await stat(policy)).mode & 0o777).toBe(0o600);

    const holder = await PolicyHolder.open(policy);
    const authorizer = new Authorizer(holder);
    expect(
      authorizer.authorize({ token, action: 'messages.send', roomId: '!a:example.org' }),
    ).toMatchObject({ allowed: true, client: { name: 'web-ui' } });
    expect(
      authorizer.authorize({ token, action: 'messages.read', roomId: '!a:example.org' }),
    ).toMatchObject({ allowed: false, code: 'FORBIDDEN_CAPABILITY' });

    // --json, a second client; the file's mode (here 0640) is kept across the rewrite.
    await chmod(policy, 0o640);
    const bot = await cli(
      'token',
      'create',
      '--policy',
      policy,
      '--name',
      'bot',
      '--cap',
      'messages.send',
      '--rate',
      '30',
      '--json',
    );
    expect(bot.code).toBe(0);
    const created = JSON.parse(bot.stdout) as { name: string; token: string; rooms: null };
    expect(created).toMatchObject({ name: 'bot', capabilities: ['messages.send'], rooms: null });
    expect((await stat(policy)).mode & 0o777).toBe(0o640);
    expect(await holder.reload()).toEqual({ ok: true, changed: true });
    expect(
      authorizer.authorize({ token: created.token, action: 'messages.send', roomId: '!z:y' })
        .allowed,
    ).toBe(true);

    // list shows names and capabilities, never a token or a hash
    const list = await cli('token', 'list', '--policy', policy);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/web-ui .*rooms\.read,messages\.send/);
    expect(list.stdout).toMatch(/bot .*messages\.send/);
    const listJson = await cli('token', 'list', '--policy', policy, '--json');
    const hashes = (JSON.parse(text) as { clients: { tokenSha256: string }[] }).clients.map(
      (c) => c.tokenSha256,
    );
    for (const out of [list.stdout, listJson.stdout]) {
      expect(out).not.toContain(token);
      expect(out).not.toContain(created.token);
      for (const h of hashes) expect(out).not.toContain(h);
      expect(out).not.toContain('tokenSha256');
    }
    expect(JSON.parse(listJson.stdout)).toMatchObject({
      clients: [
        { name: 'web-ui', rooms: ['!a:example.org'], requestsPerMinute: 300 },
        { name: 'bot', rooms: null, requestsPerMinute: 30 },
      ],
    });

    // revoke: the token fails after the endpoint reloads
    const revoke = await cli('token', 'revoke', '--policy', policy, '--name', 'web-ui');
    expect(revoke.code).toBe(0);
    expect(await holder.reload()).toEqual({ ok: true, changed: true });
    expect(authorizer.authorize({ token, action: 'rooms.read' })).toMatchObject({
      allowed: false,
      code: 'UNAUTHENTICATED',
    });
    expect(
      authorizer.authorize({ token: created.token, action: 'messages.send', roomId: '!z:y' })
        .allowed,
    ).toBe(true);
  });

  it('refuses a duplicate name, an unknown capability (listing the valid ones), bad input', async () => {
    const base = ['token', 'create', '--policy', policy, '--cap', 'rooms.read'];
    await cli(...base, '--name', 'dup');
    const before = await readFile(policy, 'utf8');

    const dup = await cli(...base, '--name', 'dup');
    expect(dup).toMatchObject({ code: 1, stdout: '' });
    expect(dup.stderr).toBe(
      'policy: a client named "dup" exists already (revoke it first, or choose another name)\n',
    );

    const unknown = await cli(...base, '--name', 'x', '--cap', 'keys.export');
    expect(unknown).toMatchObject({ code: 1, stdout: '' });
    expect(unknown.stderr).toBe(
      'policy: unknown capability "keys.export" (valid: rooms.read, messages.read, messages.send, ' +
        'rooms.create, rooms.manage, rooms.join, contacts.read, verification, attestation, events.stream, backup)\n',
    );

    const room = await cli(...base, '--name', 'x', '--room', 'general');
    expect(room.code).toBe(1);
    expect(room.stderr).toMatch(/^policy: a room is a room id/);
    const rate = await cli(...base, '--name', 'x', '--rate', 'fast');
    expect(rate.code).toBe(1);
    const name = await cli(...base, '--name', 'Bad Name');
    expect(name.code).toBe(1);

    const missing = await cli('token', 'revoke', '--policy', policy, '--name', 'ghost');
    expect(missing).toMatchObject({
      code: 1,
      stderr: 'policy: there is no client named "ghost"\n',
    });

    // None of the refusals changed the file.
    expect(await readFile(policy, 'utf8')).toBe(before);
  });

  it('usage errors exit 2 in one line; --help exits 0', async () => {
    const cases = [
      [],
      ['token'],
      ['token', 'create', '--name', 'x', '--cap', 'rooms.read'],
      ['token', 'create', '--policy', policy, '--cap', 'rooms.read'],
      ['token', 'create', '--policy', policy, '--name', 'x'],
      ['token', 'list', '--policy', policy, '--cap', 'rooms.read'],
      ['check', '--policy', policy, '--token', 'abc'],
      ['audit', 'verify'],
      ['frobnicate'],
    ];
    const runs = await Promise.all(cases.map((args) => cli(...args)));
    runs.forEach((run, i) => {
      expect(run.code, cases[i]?.join(' ')).toBe(2);
      expect(run.stderr).toMatch(/^policy: [^\n]+\n$/);
    });
    const help = await cli('--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/token create/);
    expect((await cli('token', 'create', '--help')).stdout).toMatch(/shown\s|once/);
  });

  it('check prints every problem with its path, exit 1; a valid file exits 0', async () => {
    const ok = await cli('check', '--policy', policy);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^ok: .* is a valid policy \(\d+ clients\)\n$/);

    const bad = join(dir, 'bad.json');
    await writeFile(
      bad,
      JSON.stringify({
        version: 1,
        rooms: { default: { encryptionRequired: false } },
        clients: [{ name: 'x', capabilities: ['nope'] }],
      }),
      { mode: 0o600 },
    );
    const run = await cli('check', '--policy', bad);
    expect(run.code).toBe(1);
    const lines = run.stdout.trim().split('\n');
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/bad\.json: rooms\.default\.encryptionRequired: must be true/),
        expect.stringMatching(/bad\.json: clients\[0\]\.tokenSha256: required/),
        expect.stringMatching(/bad\.json: clients\[0\]\.capabilities\[0\]: expected one of/),
      ]),
    );
    const json = await cli('check', '--policy', bad, '--json');
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      ok: false,
      problems: expect.arrayContaining([
        { path: 'clients[0].created', message: 'required' },
      ]) as unknown,
    });

    // An invalid file is never edited.
    const edit = await cli(
      'token',
      'create',
      '--policy',
      bad,
      '--name',
      'y',
      '--cap',
      'rooms.read',
    );
    expect(edit.code).toBe(1);
    expect(edit.stderr).toMatch(/fix the file first \(policy check\)/);
  });

  it('check validates the audit section (bounds, refusal windows) with its paths; defaults are safe', async () => {
    const minimal = validatePolicy({ version: 1 });
    expect(minimal.ok && minimal.policy.audit).toEqual(DEFAULT_AUDIT);
    const bad = join(dir, 'bad-audit.json');
    await writeFile(
      bad,
      JSON.stringify({
        version: 1,
        audit: { maxBytes: 100_000, segmentBytes: 65_536, refusals: { windowSeconds: 0 }, x: 1 },
      }),
      { mode: 0o600 },
    );
    const run = await cli('check', '--policy', bad);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/bad-audit\.json: audit: /);
    expect(run.stdout).toMatch(/bad-audit\.json: audit\.maxBytes: /);
    expect(run.stdout).toMatch(/bad-audit\.json: audit\.refusals\.windowSeconds: /);
    const tooSmall = validatePolicy({
      version: 1,
      audit: { maxBytes: 1 << 20, segmentBytes: 1 << 20 },
    });
    expect(tooSmall.ok ? [] : tooSmall.problems).toEqual([
      expect.objectContaining({
        path: 'audit.maxBytes',
        message: expect.stringMatching(/at least twice segmentBytes/) as unknown,
      }),
    ]);
    const tooMany = validatePolicy({
      version: 1,
      audit: { maxBytes: 2 ** 40, segmentBytes: 65_536 },
    });
    expect(tooMany.ok ? [] : tooMany.problems.map((p) => p.path)).toEqual(['audit.segmentBytes']);
  });

  it('audit verify checks every segment: pruning as recorded is OK, a missing segment is named', async () => {
    const log = join(dir, 'audit.log');
    const audit = await AuditLog.open(log, { bounds: { segmentBytes: 2048, maxBytes: 8192 } });
    for (let i = 0; i < 150; i++) {
      await audit.append({
        client: 'web-ui',
        action: 'rooms.read',
        target: null,
        decision: 'allow',
        reason: 'OK',
      });
    }
    await audit.close();
    const ok = await cli('audit', 'verify', '--log', log);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(
      /^OK: \d+ entries, chain intact across 4 segments \(head seq \d+, hash [0-9a-f]{64}\); it starts after \d+ earlier entries were pruned, as recorded\n$/,
    );
    const json = await cli('audit', 'verify', '--log', log, '--json');
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: true, segments: 4 });

    const sealed = (await readdir(dir)).filter((f) => /^audit\.log\.\d{6}$/.test(f)).sort();
    const middle = Number(sealed[1]?.slice(-6));
    await unlink(segmentPath(log, middle));
    const broken = await cli('audit', 'verify', '--log', log);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toMatch(
      new RegExp(
        `^${log}: broken at seq \\d+ \\(line 1 of audit\\.log\\.${String(middle + 1).padStart(6, '0')}\\): segment missing: segment ${middle} is missing`,
      ),
    );
  });
});
