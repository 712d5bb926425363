import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_RATE_LIMIT,
  EXAMPLE_POLICY,
  PolicyError,
  PolicyHolder,
  loadPolicyFile,
  parsePolicy,
  validatePolicy,
} from '../../policy/index.ts';

const HASH = 'ab'.repeat(32);
const client = (over: Record<string, unknown> = {}) => ({
  name: 'ui',
  tokenSha256: HASH,
  created: '2025-01-15T09:30:00.000Z',
  capabilities: ['rooms.read'],
  ...over,
});

/** The problems for a policy, as "path: message" strings. */
function problems(json: unknown): string[] {
  const result = validatePolicy(json);
  if (result.ok) return [];
  return result.problems.map((p) => `${p.path}: ${p.message}`);
}

describe('policy schema', () => {
  it('accepts the documented example and fills in safe defaults', () => {
    const result = validatePolicy(EXAMPLE_POLICY);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const [web, bot] = result.policy.clients;
    expect(web?.rateLimit).toEqual(DEFAULT_RATE_LIMIT);
    expect(web?.rooms).toBeUndefined();
    expect(bot?.rooms).toEqual(['!alerts:example.org']);
    expect(result.policy.rooms.overrides['!board:example.org']).toEqual({
      roomKeyRecipients: 'verified-only',
    });
  });

  it('a minimal file gets the safe defaults: encryption, MSC4153 recipients, unverified hidden', () => {
    const result = validatePolicy({ version: 1 });
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.policy.clients).toEqual([]);
    expect(result.policy.rooms.default).toEqual({
      encryptionRequired: true,
      roomKeyRecipients: 'cross-signed',
      showUnverifiedMessages: false,
    });
    expect(result.policy.rooms.overrides).toEqual({});
  });

  it('the README example is the one the tests check', async () => {
    const { readFile } = await import('node:fs/promises');
    const readme = await readFile(new URL('../../policy/README.md', import.meta.url), 'utf8');
    const block = /```json\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(block).toBeDefined();
    expect(JSON.parse(block ?? '')).toEqual(EXAMPLE_POLICY);
  });

  const bad: [string, unknown, string][] = [
    ['no version', { clients: [] }, 'version: '],
    ['a later version', { version: 2 }, 'version: expected 1'],
    [
      'encryption switched off',
      { version: 1, rooms: { default: { encryptionRequired: false } } },
      'rooms.default.encryptionRequired: must be true in this version: the homeserver is untrusted',
    ],
    [
      'encryption switched off for one room',
      { version: 1, rooms: { overrides: { '!a:b': { encryptionRequired: false } } } },
      'rooms.overrides["!a:b"].encryptionRequired: must be true',
    ],
    [
      'an unknown recipients rule',
      { version: 1, rooms: { default: { roomKeyRecipients: 'everyone' } } },
      'rooms.default.roomKeyRecipients: expected one of verified-only, cross-signed, tofu',
    ],
    [
      'an override keyed by something that is not a room id',
      { version: 1, rooms: { overrides: { general: {} } } },
      'rooms.overrides.general: keys must be room ids',
    ],
    [
      'an unknown capability',
      { version: 1, clients: [client({ capabilities: ['rooms.read', 'keys.export'] })] },
      'clients[0].capabilities[1]: expected one of rooms.read, messages.read',
    ],
    [
      'no capabilities',
      { version: 1, clients: [client({ capabilities: [] })] },
      'clients[0].capabilities: a client needs at least one capability',
    ],
    [
      'a repeated capability',
      { version: 1, clients: [client({ capabilities: ['rooms.read', 'rooms.read'] })] },
      'clients[0].capabilities[1]: duplicate capability',
    ],
    [
      'a token hash that is not SHA-256 hex',
      { version: 1, clients: [client({ tokenSha256: 'AB'.repeat(32) })] },
      'clients[0].tokenSha256: expected 64 lowercase hex digits',
    ],
    [
      'a bad client name',
      { version: 1, clients: [client({ name: 'Web UI' })] },
      'clients[0].name: expected 1-64 characters',
    ],
    [
      'a bad room in the allow-list',
      { version: 1, clients: [client({ rooms: ['!ok:b', 'general'] })] },
      'clients[0].rooms[1]: expected a room id',
    ],
    [
      'a zero rate',
      { version: 1, clients: [client({ rateLimit: { requestsPerMinute: 0 } })] },
      'clients[0].rateLimit.requestsPerMinute: ',
    ],
    [
      'a bad created time',
      { version: 1, clients: [client({ created: 'yesterday' })] },
      'clients[0].created: expected an ISO 8601 time',
    ],
    [
      'an unknown field (e.g. a token pasted in)',
      { version: 1, clients: [client({ token: 'secret' })] },
      'clients[0]: unknown field "token"',
    ],
    [
      'two clients with one name',
      { version: 1, clients: [client(), client({ tokenSha256: 'cd'.repeat(32) })] },
      'clients[1].name: duplicate client name (as clients[0])',
    ],
    [
      'two clients with one token',
      { version: 1, clients: [client(), client({ name: 'other' })] },
      'clients[1].tokenSha256: the same token as clients[0]',
    ],
    ['not an object', [], '(top level): expected object'],
  ];
  for (const [what, json, expected] of bad) {
    it(`rejects ${what}, naming the path`, () => {
      const found = problems(json);
      expect(
        found.some((p) => p.startsWith(expected)),
        found.join('\n'),
      ).toBe(true);
    });
  }

  it('never echoes a value it rejects', () => {
    const secret = 'hunter2-SECRET-value';
    const found = problems({
      version: 1,
      clients: [client({ name: secret, tokenSha256: secret, capabilities: [secret] })],
      rooms: { default: { roomKeyRecipients: secret } },
    });
    expect(found.length).toBeGreaterThanOrEqual(4);
    expect(found.join('\n')).not.toContain('hunter2');
  });

  it('reports JSON syntax errors by position, not by quoting the text', () => {
    const result = parsePolicy('{"version": 1,\n "clients": [hunter2]}');
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.problems[0]?.message).toMatch(/^not valid JSON/);
    expect(JSON.stringify(result.problems)).not.toContain('hunter2');
  });
});

describe('loading and reloading', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'policy-load-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function write(name: string, json: unknown, mode = 0o600): Promise<string> {
    const path = join(dir, name);
    await writeFile(path, typeof json === 'string' ? json : JSON.stringify(json));
    await chmod(path, mode);
    return path;
  }

  it('refuses to start without a valid policy, naming the path and problem', async () => {
    const path = await write('bad.json', { version: 1, clients: [client({ capabilities: [] })] });
    await expect(PolicyHolder.open(path)).rejects.toThrow(
      /bad\.json: clients\[0\]\.capabilities: a client needs at least one capability/,
    );
    await expect(PolicyHolder.open(join(dir, 'missing.json'))).rejects.toThrow(
      /missing\.json: \(file\): cannot read it \(ENOENT\)/,
    );
  });

  it('refuses a policy file other users can write', async () => {
    const path = await write('open.json', { version: 1 }, 0o666);
    const error = await loadPolicyFile(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PolicyError);
    expect((error as Error).message).toMatch(/writable by other users \(mode 666\); chmod 600 it/);
  });

  it('reload swaps in a valid policy and keeps the last valid one otherwise', async () => {
    const path = await write('live.json', { version: 1, clients: [client()] });
    const holder = await PolicyHolder.open(path);
    const seen: number[] = [];
    holder.onChange((p) => seen.push(p.clients.length));
    const first = holder.current;
    expect(holder.generation).toBe(1);

    expect(await holder.reload()).toEqual({ ok: true, changed: false });
    expect(holder.current).toBe(first);

    await write('live.json', '{"version": 1, "clients": [');
    const broken = await holder.reload();
    expect(broken.ok).toBe(false);
    expect(!broken.ok && broken.error).toMatch(/live\.json: \(file\): not valid JSON/);
    expect(holder.current).toBe(first);

    await write('live.json', { version: 1, clients: [client({ capabilities: ['nope'] })] });
    const invalid = await holder.reload();
    expect(!invalid.ok && invalid.error).toMatch(
      /clients\[0\]\.capabilities\[0\]: expected one of/,
    );
    expect(holder.current).toBe(first);

    await rm(path);
    expect((await holder.reload()).ok).toBe(false);
    expect(holder.current).toBe(first);

    await write('live.json', {
      version: 1,
      clients: [client(), client({ name: 'two', tokenSha256: 'cd'.repeat(32) })],
    });
    expect(await holder.reload()).toEqual({ ok: true, changed: true });
    expect(holder.current.clients.map((c) => c.name)).toEqual(['ui', 'two']);
    expect(holder.generation).toBe(2);
    expect(seen).toEqual([2]);
  });

  it('concurrent reloads are serialised and all see the final file', async () => {
    const path = await write('race.json', { version: 1 });
    const holder = await PolicyHolder.open(path);
    await write('race.json', { version: 1, clients: [client()] });
    const results = await Promise.all([holder.reload(), holder.reload(), holder.reload()]);
    expect(results.filter((r) => r.ok && r.changed)).toHaveLength(1);
    expect(holder.current.clients).toHaveLength(1);
  });
});
