import { describe, expect, it } from 'vitest';
import { EventHub, apiHandlers } from '../../endpoint/api/index.ts';
import type { Endpoint } from '../../endpoint/device.ts';
import { Foreground } from '../../endpoint/foreground.ts';
import type { FailedSend, Outbox, OutboxEntry } from '../../endpoint/outbox.ts';
import { isRpcError } from '../../keyvault/common/rpc/index.ts';
import { Authorizer, tokenSha256, validatePolicy } from '../../policy/index.ts';

// Failed sends are listed across rooms (acrossRooms), so the handler must filter them itself: a
// client limited to one room never sees, retries or discards another room's failed send.
const ROOM_A = '!a:example.org';
const ROOM_B = '!b:example.org';
const LIMITED = 'limited-token-0123456789abcdefghijklmnop';
const FULL = 'full-token-0123456789abcdefghijklmnopqrs';

function failed(roomId: string, txnId: string): FailedSend {
  const entry: OutboxEntry = {
    txnId,
    roomId,
    body: `secret text in ${roomId}`,
    kind: 'text',
    acceptedAt: 1,
    seq: 0,
  };
  return { entry, reason: 'refused', code: 'M_FORBIDDEN', failedAt: 2 };
}

function setup() {
  const client = (name: string, token: string, extra = {}) => ({
    name,
    tokenSha256: tokenSha256(token),
    created: '2025-01-15T09:30:00.000Z',
    capabilities: ['messages.send'],
    rateLimit: { requestsPerMinute: 60_000 },
    ...extra,
  });
  const result = validatePolicy({
    version: 1,
    clients: [client('limited', LIMITED, { rooms: [ROOM_A] }), client('full', FULL)],
  });
  if (!result.ok) throw new Error(JSON.stringify(result.problems));
  const policy = result.policy;
  const list = [failed(ROOM_A, `mte.${'a'.repeat(24)}`), failed(ROOM_B, `mte.${'b'.repeat(24)}`)];
  const acted: string[] = [];
  const outbox = {
    failed: () => Promise.resolve(list),
    retry: (txnId: string) => {
      acted.push(`retry ${txnId}`);
      return Promise.resolve(true);
    },
    discard: (txnId: string) => {
      acted.push(`discard ${txnId}`);
      return Promise.resolve(true);
    },
  } as unknown as Outbox;
  const endpoint = {
    userId: '@me:example.org',
    room: (roomId: string) => ({ roomId, membership: 'join', members: [], encrypted: true }),
    foreground: new Foreground(),
  } as unknown as Endpoint;
  const handlers = apiHandlers({
    endpoint,
    outbox,
    authorizer: new Authorizer(() => policy),
    audit: { append: () => Promise.resolve() },
    policy: () => policy,
    hub: new EventHub(),
  });
  const ctx = { method: 'failedSends', signal: new AbortController().signal };
  return { handlers, ctx, list, acted };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isRpcError(e)) return e.code;
    throw e;
  }
  return 'OK';
}

describe('failed sends are scoped to the rooms a client may use', () => {
  it('lists only the failed sends of allowed rooms', async () => {
    const { handlers, ctx } = setup();
    const limited = await handlers.failedSends({ auth: { token: LIMITED } }, ctx);
    expect(limited.failed.map((f) => f.roomId)).toEqual([ROOM_A]);
    const full = await handlers.failedSends({ auth: { token: FULL } }, ctx);
    expect(full.failed.map((f) => f.roomId)).toEqual([ROOM_A, ROOM_B]);
  });

  it("refuses to retry or discard another room's failed send, and does nothing", async () => {
    const { handlers, ctx, list, acted } = setup();
    const other = list[1]?.entry.txnId ?? '';
    expect(await codeOf(handlers.retrySend({ auth: { token: LIMITED }, txnId: other }, ctx))).toBe(
      'FORBIDDEN_ROOM',
    );
    expect(
      await codeOf(handlers.discardSend({ auth: { token: LIMITED }, txnId: other }, ctx)),
    ).toBe('FORBIDDEN_ROOM');
    expect(acted).toEqual([]);
    const own = list[0]?.entry.txnId ?? '';
    expect(await codeOf(handlers.retrySend({ auth: { token: LIMITED }, txnId: own }, ctx))).toBe(
      'OK',
    );
    expect(acted).toEqual([`retry ${own}`]);
  });
});
