import { describe, expect, it, vi } from 'vitest';

// Wrap timingSafeEqual so the tests can see the authorizer compares with it, and how often.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const { timingSafeEqual } = await import('node:crypto');
const {
  Authorizer,
  CAPABILITIES,
  ROOM_SCOPED,
  auditRecordFor,
  generateToken,
  roomTrust,
  sharingStrategyFor,
  tokenSha256,
  validatePolicy,
} = await import('../../policy/index.ts');
type Capability = (typeof CAPABILITIES)[number];
type Policy = import('../../policy/index.ts').Policy;

function policyWith(clients: Record<string, unknown>[], rooms?: unknown): Policy {
  const result = validatePolicy({ version: 1, clients, ...(rooms ? { rooms } : {}) });
  if (!result.ok) throw new Error(JSON.stringify(result.problems));
  return result.policy;
}

function clientEntry(name: string, token: string, capabilities: Capability[], extra = {}) {
  return {
    name,
    tokenSha256: tokenSha256(token),
    created: '2025-01-15T09:30:00.000Z',
    capabilities,
    ...extra,
  };
}

const ROOM = '!room:example.org';
const OTHER_ROOM = '!other:example.org';

describe('authorize: the capability matrix', () => {
  // One client per capability, holding only that one.
  const tokens = new Map(CAPABILITIES.map((c) => [c, generateToken()]));
  const policy = policyWith(
    CAPABILITIES.map((c) => clientEntry(`only-${c.replace('.', '-')}`, tokens.get(c) ?? '', [c])),
  );
  const authorizer = new Authorizer(policy);

  for (const held of CAPABILITIES) {
    for (const asked of CAPABILITIES) {
      const allowed = held === asked;
      it(`a client with ${held} ${allowed ? 'may' : 'may not'} use ${asked}`, () => {
        const decision = authorizer.authorize({
          token: tokens.get(held) ?? '',
          action: asked,
          roomId: ROOM_SCOPED.has(asked) ? ROOM : undefined,
        });
        if (allowed) {
          expect(decision).toMatchObject({ allowed: true });
          expect(decision.allowed && decision.client.name).toBe(`only-${held.replace('.', '-')}`);
        } else {
          expect(decision).toEqual({
            allowed: false,
            code: 'FORBIDDEN_CAPABILITY',
            reason: `this client may not use ${asked}`,
            client: `only-${held.replace('.', '-')}`,
          });
        }
      });
    }
  }

  it('a client with every capability may use each, in any room', () => {
    const token = generateToken();
    const all = new Authorizer(policyWith([clientEntry('all', token, [...CAPABILITIES])]));
    for (const action of CAPABILITIES) {
      expect(all.authorize({ token, action, roomId: ROOM }).allowed).toBe(true);
    }
  });
});

describe('authorize: rooms, tokens, requests', () => {
  const token = generateToken();
  const roomless = generateToken();
  const policy = policyWith([
    clientEntry('limited', token, ['messages.read', 'messages.send', 'rooms.read'], {
      rooms: [ROOM],
    }),
    clientEntry('everywhere', roomless, ['messages.read']),
  ]);
  const authorizer = new Authorizer(policy);

  it('a room allow-list admits its rooms and refuses others', () => {
    expect(authorizer.authorize({ token, action: 'messages.send', roomId: ROOM }).allowed).toBe(
      true,
    );
    expect(authorizer.authorize({ token, action: 'messages.send', roomId: OTHER_ROOM })).toEqual({
      allowed: false,
      code: 'FORBIDDEN_ROOM',
      reason: 'this client may not use this room',
      client: 'limited',
    });
    expect(
      authorizer.authorize({ token: roomless, action: 'messages.read', roomId: OTHER_ROOM })
        .allowed,
    ).toBe(true);
  });

  it('the allowed client tells the endpoint which rooms to show in lists', () => {
    const decision = authorizer.authorize({ token, action: 'rooms.read' });
    expect(decision.allowed).toBe(true);
    if (!decision.allowed) return;
    expect(decision.client.mayAccessRoom(ROOM)).toBe(true);
    expect(decision.client.mayAccessRoom(OTHER_ROOM)).toBe(false);
    expect([...(decision.client.rooms ?? [])]).toEqual([ROOM]);
  });

  it('a room-scoped capability must name its room, so an allow-list cannot be skipped', () => {
    expect(authorizer.authorize({ token, action: 'messages.send' })).toMatchObject({
      allowed: false,
      code: 'INVALID_REQUEST',
    });
  });

  it('an unknown action or a malformed room id is an invalid request', () => {
    expect(authorizer.authorize({ token, action: 'keys.export', roomId: ROOM })).toMatchObject({
      allowed: false,
      code: 'INVALID_REQUEST',
    });
    expect(authorizer.authorize({ token, action: 'messages.read', roomId: 'room' })).toMatchObject({
      allowed: false,
      code: 'INVALID_REQUEST',
    });
  });

  it('an unknown, empty, oversized or non-string token is UNAUTHENTICATED', () => {
    const unknown = {
      allowed: false,
      code: 'UNAUTHENTICATED',
      reason: 'unknown or revoked token',
    };
    for (const bad of [generateToken(), '', 'x'.repeat(10_000), tokenSha256(token)]) {
      expect(authorizer.authorize({ token: bad, action: 'rooms.read' })).toEqual(unknown);
    }
    expect(authorizer.authorize({ token: 42 as unknown as string, action: 'rooms.read' })).toEqual(
      unknown,
    );
  });

  it('a token differing only in its last character is refused', () => {
    const last = token.at(-1);
    const twin = token.slice(0, -1) + (last === 'A' ? 'B' : 'A');
    expect(authorizer.authorize({ token: twin, action: 'rooms.read' })).toMatchObject({
      allowed: false,
      code: 'UNAUTHENTICATED',
    });
    // ...and one with an extra character, or one fewer.
    expect(authorizer.authorize({ token: `${token}A`, action: 'rooms.read' }).allowed).toBe(false);
    expect(authorizer.authorize({ token: token.slice(0, -1), action: 'rooms.read' }).allowed).toBe(
      false,
    );
  });

  it('compares with timingSafeEqual against every client, whichever matches', () => {
    const many = Array.from({ length: 10 }, () => generateToken());
    const big = new Authorizer(
      policyWith(many.map((t, i) => clientEntry(`c${i}`, t, ['rooms.read']))),
    );
    const compare = vi.mocked(timingSafeEqual);
    for (const presented of [many[0], many[9], generateToken()]) {
      compare.mockClear();
      big.authorize({ token: presented ?? '', action: 'rooms.read' });
      expect(compare).toHaveBeenCalledTimes(10);
    }
  });

  it('a revoked token fails after the policy without it is in force', () => {
    let current = policy;
    const live = new Authorizer(() => current);
    expect(live.authorize({ token, action: 'rooms.read' }).allowed).toBe(true);
    current = policyWith([clientEntry('everywhere', roomless, ['messages.read'])]);
    expect(live.authorize({ token, action: 'rooms.read' })).toMatchObject({
      allowed: false,
      code: 'UNAUTHENTICATED',
    });
  });
});

describe('authorize: rate limits', () => {
  it('a token bucket per client: the burst, then refusals with a retry time, then refill', () => {
    let now = 0;
    const fast = generateToken();
    const slow = generateToken();
    const authorizer = new Authorizer(
      policyWith([
        clientEntry('slow', slow, ['rooms.read'], { rateLimit: { requestsPerMinute: 6 } }),
        clientEntry('fast', fast, ['rooms.read'], {
          rateLimit: { requestsPerMinute: 600, burst: 2 },
        }),
      ]),
      { now: () => now },
    );
    const ask = (token: string, action = 'rooms.read') => authorizer.authorize({ token, action });
    for (let i = 0; i < 6; i++) expect(ask(slow).allowed).toBe(true);
    const limited = ask(slow);
    expect(limited).toMatchObject({ allowed: false, code: 'RATE_LIMITED', client: 'slow' });
    expect(!limited.allowed && limited.retryAfterMs).toBe(10_000);
    // Another client's bucket is its own.
    expect(ask(fast).allowed).toBe(true);
    expect(ask(fast).allowed).toBe(true);
    expect(ask(fast).allowed).toBe(false);
    // Refused requests cost a token too: probing the policy is rate-limited.
    now += 9_999;
    expect(ask(slow).allowed).toBe(false);
    now += 10_000;
    expect(ask(slow, 'messages.send')).toMatchObject({ code: 'FORBIDDEN_CAPABILITY' });
    expect(ask(slow)).toMatchObject({ code: 'RATE_LIMITED' });
    now += 60_000;
    for (let i = 0; i < 6; i++) expect(ask(slow).allowed).toBe(true);
    expect(ask(slow).allowed).toBe(false);
  });

  it('clients without a rate limit get the default, never none', () => {
    const token = generateToken();
    const authorizer = new Authorizer(policyWith([clientEntry('d', token, ['rooms.read'])]), {
      now: () => 0,
    });
    let allowed = 0;
    while (authorizer.authorize({ token, action: 'rooms.read' }).allowed && allowed < 10_000)
      allowed++;
    expect(allowed).toBe(300);
  });
});

describe('room trust', () => {
  it('maps recipients rules to the endpoint sharing strategies', () => {
    expect(sharingStrategyFor('verified-only')).toBe('verified-devices-only');
    expect(sharingStrategyFor('cross-signed')).toBe('identity-based');
    expect(sharingStrategyFor('tofu')).toBe('identity-based');
  });

  it('applies a room override over the default', () => {
    const policy = policyWith([], {
      default: { roomKeyRecipients: 'tofu' },
      overrides: {
        [ROOM]: { roomKeyRecipients: 'verified-only', showUnverifiedMessages: true },
      },
    });
    expect(roomTrust(policy, OTHER_ROOM)).toEqual({
      encryptionRequired: true,
      roomKeyRecipients: 'tofu',
      showUnverifiedMessages: false,
      trust: { sharing: 'identity-based', decryption: 'cross-signed-or-legacy' },
    });
    expect(roomTrust(policy, ROOM)).toEqual({
      encryptionRequired: true,
      roomKeyRecipients: 'verified-only',
      showUnverifiedMessages: true,
      trust: { sharing: 'verified-devices-only', decryption: 'untrusted' },
    });
  });

  it('the default is the endpoint default (MSC4153)', () => {
    expect(roomTrust(policyWith([])).trust).toEqual({
      sharing: 'identity-based',
      decryption: 'cross-signed-or-legacy',
    });
  });
});

describe('audit records for decisions', () => {
  it('records who, what, where and the outcome, never the token', () => {
    const token = generateToken();
    const authorizer = new Authorizer(
      policyWith([clientEntry('ui', token, ['messages.send'], { rooms: [ROOM] })]),
    );
    const request = { token, action: 'messages.send', roomId: OTHER_ROOM };
    const record = auditRecordFor(request, authorizer.authorize(request));
    expect(record).toEqual({
      client: 'ui',
      action: 'messages.send',
      target: OTHER_ROOM,
      decision: 'deny',
      reason: 'FORBIDDEN_ROOM',
    });
    const anonymous = { token: 'nope', action: 'whatever', roomId: 'not-a-room' };
    expect(auditRecordFor(anonymous, authorizer.authorize(anonymous))).toEqual({
      client: null,
      action: 'unknown',
      target: null,
      decision: 'deny',
      reason: 'UNAUTHENTICATED',
    });
    expect(JSON.stringify(record)).not.toContain(token);
  });
});
