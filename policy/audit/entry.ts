import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { AuthorizeRequest, Decision } from '../evaluate.ts';
import { CAPABILITIES, CLIENT_NAME, ROOM_ID, isCapability, sha256Hex } from '../schema.ts';

/**
 * What one audit entry is. Each entry records who (client name), did what (capability), to
 * what (room or user id), and the decision, and nothing else: the schema has no free-form
 * field, every string is a bounded identifier or a code, so message content, tokens or other
 * secrets have nowhere to go.
 *
 * `hash` is SHA-256 (hex) over the canonical JSON (sorted keys, no whitespace) of the entry
 * without `hash`; `prevHash` is the previous entry's hash (64 zeros for the first), so changing,
 * removing or reordering any entry breaks the chain from there on, across segment files too.
 */

/**
 * The log's own bookkeeping entries. Only the log writes them (append() refuses them), each
 * with the one extra field that says what it did.
 */
export const LOG_ACTIONS = [
  /** The first entry of every segment after the first: `segment` is its number. */
  'audit.segment',
  /** Older segments were deleted to stay within the size bound: `pruned` says up to where. */
  'audit.prune',
  /** Refusals counted rather than written one by one: `since` and `counts` (by reason). */
  'audit.refusals',
] as const;

/** What an entry's `action` may be: a capability, or one of the endpoint's own events. */
export const AUDIT_ACTIONS = [
  ...CAPABILITIES,
  /** Any valid token may ask who it is and who the endpoint is. */
  'status',
  /** A request naming no known capability (recorded, refused). */
  'unknown',
  /**
   * A browser request the gateway's web UI listener refused before any call: a foreign Host
   * (DNS rebinding), Origin or site, or a CORS preflight. No client, no target.
   */
  'gateway.refusal',
  'policy.load',
  'policy.reload',
  /** The log itself: a torn last line (a crash mid-append) was cut off at open. */
  'audit.recover',
  ...LOG_ACTIONS,
  /**
   * The operator started a new device (`endpoint/main.ts reset-store`): the sealed store was
   * replaced by an empty one; the reason is the operator's, as a code.
   */
  'store.reset',
  /**
   * The steps of the `verification` capability that change trust, each with the user it
   * concerns as the target: who was asked, accepted, confirmed (cross-signed), cancelled,
   * whose changed identity was acknowledged, whose verification withdrawn.
   */
  'verification.request',
  'verification.accept',
  'verification.confirm',
  'verification.cancel',
  'identity.acknowledge',
  'identity.withdraw',
  /**
   * The `attestation` capability's decisions, with the peer user as the target: who was
   * asked to attest, the verdict (reason OK or the first failure code), and our own evidence
   * given out for an auditor's nonce.
   */
  'attestation.request',
  'attestation.result',
  'attestation.evidence',
  'attestation.activate',
  /**
   * Key backup: a backup version made (create, rotate), a restore, and the homeserver's
   * current backup refused for uploads (the reason is the refusal's code).
   */
  'backup.create',
  'backup.rotate',
  'backup.recover',
  'backup.refused',
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];
type LogAction = (typeof LOG_ACTIONS)[number];

export const AUDIT_DECISIONS = ['allow', 'deny', 'info'] as const;
export type AuditDecision = (typeof AUDIT_DECISIONS)[number];

export const GENESIS_HASH = '0'.repeat(64);

/** The longest line an entry can make is well under this; a longer line is not an entry. */
export const MAX_LINE_BYTES = 4096;

/** A room id, or a user id `@local:server`. */
const USER_ID = /^@[\x21-\x39\x3b-\x7e]{1,255}:[\x21-\x7e]{1,255}$/;
const target = z
  .string()
  .max(255)
  .refine((s) => ROOM_ID.test(s) || USER_ID.test(s), 'expected a room id or a user id');

/** Codes, not sentences: `OK`, `FORBIDDEN_ROOM`, `POLICY_INVALID`. */
export const REASON = /^[A-Z][A-Z0-9_]{0,63}$/;
const count = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

const recordFields = {
  client: z.string().regex(CLIENT_NAME, 'expected a client name').nullable(),
  action: z.enum(AUDIT_ACTIONS),
  target: target.nullable(),
  decision: z.enum(AUDIT_DECISIONS),
  reason: z.string().regex(REASON, 'expected a code such as FORBIDDEN_ROOM'),
};

/** The fields of the log's own entries (LOG_ACTIONS); absent from every other entry. */
const logFields = {
  segment: count.optional(),
  pruned: z
    .object({
      /** The newest segment deleted: every segment up to it is gone. */
      segment: count,
      /** The last entry deleted, and its hash: the oldest kept entry continues from it. */
      seq: count,
      hash: sha256Hex,
    })
    .strict()
    .optional(),
  /** When the first refusal counted in this entry was refused. */
  since: z.iso.datetime().optional(),
  counts: z
    .record(z.string().regex(REASON), count)
    .refine((c) => Object.keys(c).length <= 8, 'at most 8 reasons')
    .optional(),
};
type LogField = keyof typeof logFields;

const FIELDS_OF: Record<LogAction, readonly LogField[]> = {
  'audit.segment': ['segment'],
  'audit.prune': ['pruned'],
  'audit.refusals': ['since', 'counts'],
};

/** Each log action carries exactly its own fields; every other entry none of them. */
function logFieldsMatchAction(
  entry: { action: AuditAction } & Partial<Record<LogField, unknown>>,
  ctx: z.core.$RefinementCtx,
): void {
  const wanted: readonly LogField[] = isLogAction(entry.action) ? FIELDS_OF[entry.action] : [];
  for (const field of Object.keys(logFields) as LogField[]) {
    const has = entry[field] !== undefined;
    if (has && !wanted.includes(field)) {
      ctx.addIssue({ code: 'custom', path: [field], message: `not a field of ${entry.action}` });
    } else if (!has && wanted.includes(field)) {
      ctx.addIssue({ code: 'custom', path: [field], message: `required for ${entry.action}` });
    }
  }
}

export function isLogAction(action: string): action is LogAction {
  return (LOG_ACTIONS as readonly string[]).includes(action);
}

/** What a caller appends. Everything else (seq, ts, hashes) the log fills in. */
export const auditRecordSchema = z
  .object({ ...recordFields, target: recordFields.target.default(null) })
  .strict()
  .refine((r) => !isLogAction(r.action), {
    path: ['action'],
    message: 'written by the audit log itself',
  });
export type AuditRecord = z.input<typeof auditRecordSchema>;

/** A record with the log's own fields, as only the log makes them. */
export type LogRecord = z.output<typeof auditRecordSchema> & {
  [K in LogField]?: z.output<(typeof logFields)[K]>;
};

const unhashedFields = {
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  ts: z.iso.datetime(),
  ...recordFields,
  ...logFields,
  prevHash: sha256Hex,
};

export const auditEntrySchema = z
  .object({ ...unhashedFields, hash: sha256Hex })
  .strict()
  .superRefine(logFieldsMatchAction);
export type AuditEntry = z.output<typeof auditEntrySchema>;

/** For reading: a bad `hash` is reported as a hash mismatch, not as a malformed entry. */
export const storedEntrySchema = z
  .object({ ...unhashedFields, hash: z.string().max(256) })
  .strict()
  .superRefine(logFieldsMatchAction);

export type AuditErrorCode =
  'AUDIT_INVALID_RECORD' | 'AUDIT_TORN_TAIL' | 'AUDIT_CORRUPT' | 'AUDIT_FAILED' | 'AUDIT_CLOSED';

export class AuditError extends Error {
  readonly code: AuditErrorCode;
  constructor(code: AuditErrorCode, message: string) {
    super(message);
    this.name = 'AuditError';
    this.code = code;
  }
}

/** JSON with object keys sorted and no whitespace: the bytes an entry's hash is taken over. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    const text = JSON.stringify(value) as string | undefined;
    if (text === undefined) throw new TypeError('canonicalJson: not a JSON value');
    return text;
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const object = value as Record<string, unknown>;
  const members = Object.keys(object)
    .filter((k) => object[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(object[k])}`);
  return `{${members.join(',')}}`;
}

/**
 * Names the fields it hashes, so nothing else an object carries can change an entry's hash.
 * The log's own fields are absent (undefined, left out) on ordinary entries: entries written
 * before they existed hash as they did.
 */
export function entryHash(entry: Omit<AuditEntry, 'hash'>): string {
  const { seq, ts, client, action, target, decision, reason, prevHash } = entry;
  const { segment, pruned, since, counts } = entry;
  const body = {
    seq,
    ts,
    client,
    action,
    target,
    decision,
    reason,
    prevHash,
    segment,
    pruned,
    since,
    counts,
  };
  return createHash('sha256').update(canonicalJson(body), 'utf8').digest('hex');
}

/** The record for one authorize() call: who, which capability, which room, the outcome. */
export function auditRecordFor(
  request: Pick<AuthorizeRequest, 'action' | 'roomId'>,
  decision: Decision,
): AuditRecord {
  const room = request.roomId;
  return {
    client: decision.allowed ? decision.client.name : (decision.client ?? null),
    action:
      isCapability(request.action) || request.action === 'status' ? request.action : 'unknown',
    target: typeof room === 'string' && ROOM_ID.test(room) ? room : null,
    decision: decision.allowed ? 'allow' : 'deny',
    reason: decision.allowed ? 'OK' : decision.code,
  };
}
