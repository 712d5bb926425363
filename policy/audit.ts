import { createHash } from 'node:crypto';
import { type FileHandle, open, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import type { AuthorizeRequest, Decision } from './evaluate.ts';
import { formatPath } from './load.ts';
import { type Lock, acquireLock } from '../keyvault/common/lock.ts';
import { CAPABILITIES, CLIENT_NAME, ROOM_ID, isCapability, sha256Hex } from './schema.ts';

/**
 * The audit log: one JSON object per line, append-only, hash-chained. Each entry records who
 * (client name), did what (capability), to what (room or user id), and the decision, and
 * nothing else: the schema has no free-form field, every string is a bounded identifier or a
 * code, so message content, tokens or other secrets have nowhere to go.
 *
 * `hash` is SHA-256 (hex) over the canonical JSON (sorted keys, no whitespace) of the entry
 * without `hash`; `prevHash` is the previous entry's hash (64 zeros for the first), so changing,
 * removing or reordering any entry breaks the chain from there on. Cutting entries off the END
 * cannot be seen from the file alone: compare `head` with a copy kept elsewhere for that.
 */

/** What an entry's `action` may be: a capability, or one of the endpoint's own events. */
export const AUDIT_ACTIONS = [
  ...CAPABILITIES,
  /** Any valid token may ask who it is and who the endpoint is. */
  'status',
  /** A request naming no known capability (recorded, refused). */
  'unknown',
  'policy.load',
  'policy.reload',
  /** The log itself: a torn last line (a crash mid-append) was cut off at open. */
  'audit.recover',
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
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

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
const REASON = /^[A-Z][A-Z0-9_]{0,63}$/;

const recordFields = {
  client: z.string().regex(CLIENT_NAME, 'expected a client name').nullable(),
  action: z.enum(AUDIT_ACTIONS),
  target: target.nullable(),
  decision: z.enum(AUDIT_DECISIONS),
  reason: z.string().regex(REASON, 'expected a code such as FORBIDDEN_ROOM'),
};

/** What a caller appends. Everything else (seq, ts, hashes) the log fills in. */
export const auditRecordSchema = z
  .object({ ...recordFields, target: recordFields.target.default(null) })
  .strict();
export type AuditRecord = z.input<typeof auditRecordSchema>;

const unhashedEntry = z
  .object({
    seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    ts: z.iso.datetime(),
    ...recordFields,
    prevHash: sha256Hex,
  })
  .strict();

export const auditEntrySchema = unhashedEntry.extend({ hash: sha256Hex }).strict();
export type AuditEntry = z.output<typeof auditEntrySchema>;

/** For reading: a bad `hash` is reported as a hash mismatch, not as a malformed entry. */
const storedEntry = unhashedEntry.extend({ hash: z.string().max(256) }).strict();

export class AuditError extends Error {
  readonly code:
    'AUDIT_INVALID_RECORD' | 'AUDIT_TORN_TAIL' | 'AUDIT_CORRUPT' | 'AUDIT_FAILED' | 'AUDIT_CLOSED';
  constructor(code: AuditError['code'], message: string) {
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

export function entryHash(entry: Omit<AuditEntry, 'hash'>): string {
  const { seq, ts, client, action, target, decision, reason, prevHash } = entry;
  const body = { seq, ts, client, action, target, decision, reason, prevHash };
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

// ---------------------------------------------------------------------------------------------
// Verification

export type AuditProblem =
  'unparsable' | 'invalid-entry' | 'hash-mismatch' | 'seq-gap' | 'prevhash-mismatch' | 'torn-tail';

export interface BrokenEntry {
  /** The first seq the chain cannot vouch for (every entry before it verified). */
  seq: number;
  /** 1-based line number in the file. */
  line: number;
  /** The seq the line itself claims, when it has one. */
  foundSeq: number | null;
  problem: AuditProblem;
  /** One line for people; never the line's content. */
  detail: string;
}

export type VerifyResult =
  | { ok: true; count: number; head: { seq: number; hash: string } }
  | { ok: false; count: number; broken: BrokenEntry };

const DETAIL: Record<AuditProblem, string> = {
  unparsable: 'not a JSON object',
  'invalid-entry': 'not a valid audit entry',
  'hash-mismatch':
    "the entry's content does not match its hash: it was changed after it was written",
  'seq-gap': 'an entry is missing or out of order',
  'prevhash-mismatch': "prevHash is not the previous entry's hash: the chain was spliced",
  'torn-tail':
    'the last line is incomplete (no newline at the end): an append was cut short, most likely by a crash',
};

type LineCheck =
  | { ok: true; entry: AuditEntry }
  | { ok: false; problem: AuditProblem; detail: string; foundSeq: number | null };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Checks one line on its own: JSON, schema, its own hash. */
function checkLine(bytes: Uint8Array): LineCheck {
  if (bytes.length > MAX_LINE_BYTES) {
    return {
      ok: false,
      problem: 'unparsable',
      detail: `longer than ${MAX_LINE_BYTES} bytes`,
      foundSeq: null,
    };
  }
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch {
    return {
      ok: false,
      problem: 'unparsable',
      detail: bytes.length === 0 ? 'an empty line' : 'not valid JSON',
      foundSeq: null,
    };
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    return { ok: false, problem: 'unparsable', detail: DETAIL.unparsable, foundSeq: null };
  }
  const claimed = (json as { seq?: unknown }).seq;
  const foundSeq = typeof claimed === 'number' && Number.isSafeInteger(claimed) ? claimed : null;
  const parsed = storedEntry.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? formatPath(issue.path) : '(entry)';
    const what =
      issue?.code === 'unrecognized_keys'
        ? 'a field that audit entries do not have'
        : (issue?.message ?? 'invalid');
    return { ok: false, problem: 'invalid-entry', detail: `${where}: ${what}`, foundSeq };
  }
  const entry = parsed.data;
  if (entryHash(entry) !== entry.hash) {
    return { ok: false, problem: 'hash-mismatch', detail: DETAIL['hash-mismatch'], foundSeq };
  }
  return { ok: true, entry };
}

/**
 * Reads the whole log and checks every entry: its own hash, seq one more than the last, and
 * prevHash equal to the last entry's hash. Stops at the first entry that fails, and says which
 * and why. Streams, so a large log needs little memory.
 */
export async function verifyAuditLog(path: string): Promise<VerifyResult> {
  const handle = await open(path, 'r');
  try {
    let expectedSeq = 1;
    let prevHash = GENESIS_HASH;
    let lineNo = 0;
    const fail = (
      problem: AuditProblem,
      detail: string,
      foundSeq: number | null,
    ): VerifyResult => ({
      ok: false,
      count: expectedSeq - 1,
      broken: { seq: expectedSeq, line: lineNo, foundSeq, problem, detail },
    });
    const checkChained = (bytes: Uint8Array): VerifyResult | undefined => {
      lineNo++;
      const checked = checkLine(bytes);
      if (!checked.ok) return fail(checked.problem, checked.detail, checked.foundSeq);
      const { entry } = checked;
      if (entry.seq !== expectedSeq) {
        return fail('seq-gap', `expected seq ${expectedSeq}, found ${entry.seq}`, entry.seq);
      }
      if (entry.prevHash !== prevHash) {
        return fail('prevhash-mismatch', DETAIL['prevhash-mismatch'], entry.seq);
      }
      expectedSeq++;
      prevHash = entry.hash;
      return undefined;
    };

    const chunk = Buffer.alloc(64 * 1024);
    let pending: Buffer = Buffer.alloc(0);
    for (;;) {
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      let data = Buffer.concat([pending, chunk.subarray(0, bytesRead)]);
      let nl: number;
      while ((nl = data.indexOf(0x0a)) >= 0) {
        const result = checkChained(data.subarray(0, nl));
        if (result) return result;
        data = data.subarray(nl + 1);
      }
      if (data.length > MAX_LINE_BYTES) {
        lineNo++;
        return fail('unparsable', `longer than ${MAX_LINE_BYTES} bytes`, null);
      }
      pending = Buffer.from(data);
    }
    if (pending.length > 0) {
      lineNo++;
      const checked = checkLine(pending);
      const foundSeq = checked.ok ? checked.entry.seq : checked.foundSeq;
      return fail('torn-tail', DETAIL['torn-tail'], foundSeq);
    }
    return { ok: true, count: expectedSeq - 1, head: { seq: expectedSeq - 1, hash: prevHash } };
  } finally {
    await handle.close();
  }
}

export function describeBroken(broken: BrokenEntry): string {
  const name = broken.problem.replace('-', ' ').replace('prevhash', 'prevHash');
  return `broken at seq ${broken.seq} (line ${broken.line}): ${name}: ${broken.detail}`;
}

// ---------------------------------------------------------------------------------------------
// Appending

export interface AuditLogOptions {
  /**
   * A torn last line (the process died mid-append) is, by default, cut off (its first 64 KiB
   * kept in `<log>.torn-<ms>`) and an `audit.recover` entry appended in its place: that entry
   * was never acknowledged, so nothing acknowledged is lost. `refuse` throws AUDIT_TORN_TAIL.
   */
  onTornTail?: 'repair' | 'refuse';
  /** `tail` (default) checks the last entry; `full` verifies the whole chain first. */
  verifyOnOpen?: 'tail' | 'full';
  /** Most entries written with one fsync (group commit). */
  maxBatch?: number;
  /** For tests. */
  now?: () => Date;
}

interface Pending {
  line: string;
  entry: AuditEntry;
  resolve: (entry: AuditEntry) => void;
  reject: (error: Error) => void;
}

/**
 * The writer. One per log file (a lock file enforces it, across processes too).
 *
 * `append()` resolves only once its entry is on disk (fdatasync). Appends made while an fsync is
 * running are written together with the next one (group commit, at most `maxBatch`, default
 * 256, per fsync), so many requests share one fsync but none is acknowledged early. If a write
 * fails the log stops: that append and every later one is rejected (AUDIT_FAILED) and the
 * caller must not carry on unaudited; reopening repairs the tail.
 */
export class AuditLog {
  readonly path: string;
  readonly #handle: FileHandle;
  readonly #lock: Lock;
  readonly #now: () => Date;
  readonly #maxBatch: number;
  #seq: number;
  #hash: string;
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #failed: Error | undefined;
  #closed = false;

  private constructor(
    path: string,
    handle: FileHandle,
    lock: Lock,
    head: { seq: number; hash: string },
    options: AuditLogOptions,
  ) {
    this.path = path;
    this.#handle = handle;
    this.#lock = lock;
    this.#seq = head.seq;
    this.#hash = head.hash;
    this.#now = options.now ?? (() => new Date());
    this.#maxBatch = Math.max(1, options.maxBatch ?? 256);
  }

  /** Opens (creating, mode 0600) the log, checks its tail, and continues its chain. */
  static async open(path: string, options: AuditLogOptions = {}): Promise<AuditLog> {
    const lock = await acquireLock(path);
    let handle: FileHandle | undefined;
    try {
      handle = await open(path, 'a+', 0o600);
      const info = await handle.stat();
      if (!info.isFile()) throw new AuditError('AUDIT_CORRUPT', `${path}: not a regular file`);
      if ((info.mode & 0o022) !== 0) {
        throw new AuditError(
          'AUDIT_CORRUPT',
          `${path}: writable by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
        );
      }
      if (options.verifyOnOpen === 'full') {
        const result = await verifyAuditLog(path);
        if (!result.ok && result.broken.problem !== 'torn-tail') {
          throw new AuditError('AUDIT_CORRUPT', `${path}: ${describeBroken(result.broken)}`);
        }
      }
      const { head, torn } = await readTail(handle, path, options.onTornTail ?? 'repair');
      const log = new AuditLog(path, handle, lock, head, options);
      if (torn) {
        await log.append({
          client: null,
          action: 'audit.recover',
          target: null,
          decision: 'info',
          reason: 'TORN_TAIL_DISCARDED',
        });
      }
      return log;
    } catch (e) {
      await handle?.close();
      await lock.release();
      throw e;
    }
  }

  /** The last entry appended (or, before any, the one the file ended with). */
  get head(): { seq: number; hash: string } {
    return { seq: this.#seq, hash: this.#hash };
  }

  append(record: AuditRecord): Promise<AuditEntry> {
    if (this.#closed)
      return Promise.reject(new AuditError('AUDIT_CLOSED', 'the audit log is closed'));
    if (this.#failed) return Promise.reject(this.#failed);
    const parsed = auditRecordSchema.safeParse(record);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue ? formatPath(issue.path) : '(record)';
      // Name the field, never the value: a rejected record may be exactly what must not leak.
      return Promise.reject(
        new AuditError(
          'AUDIT_INVALID_RECORD',
          `audit record: ${where}: ${issue?.message ?? 'invalid'}`,
        ),
      );
    }
    const body = {
      seq: this.#seq + 1,
      ts: this.#now().toISOString(),
      ...parsed.data,
      prevHash: this.#hash,
    };
    const entry: AuditEntry = { ...body, hash: entryHash(body) };
    this.#seq = entry.seq;
    this.#hash = entry.hash;
    return new Promise<AuditEntry>((resolve, reject) => {
      this.#queue.push({ line: `${canonicalJson(entry)}\n`, entry, resolve, reject });
      this.#flushing ??= this.#flush();
    });
  }

  /**
   * Drains the queue. #flushing is cleared in the same synchronous step that sees the queue
   * empty, so an append made after that always starts a new flush.
   */
  async #flush(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.#maxBatch);
        try {
          const data = Buffer.from(batch.map((p) => p.line).join(''), 'utf8');
          let written = 0;
          while (written < data.length) {
            const { bytesWritten } = await this.#handle.write(data, written);
            written += bytesWritten;
          }
          await this.#handle.datasync();
        } catch (e) {
          const reason = (e as NodeJS.ErrnoException).code ?? 'error';
          this.#failed = new AuditError(
            'AUDIT_FAILED',
            `cannot write the audit log ${this.path} (${reason}); it is stopped`,
          );
          for (const p of [...batch, ...this.#queue.splice(0)]) p.reject(this.#failed);
          return;
        }
        for (const p of batch) p.resolve(p.entry);
      }
    } finally {
      this.#flushing = undefined;
    }
  }

  /** Waits for pending appends, then closes the file and releases the lock. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    await this.#handle.close();
    await this.#lock.release();
  }
}

/**
 * Finds the last complete entry and checks it, so appends continue its chain. A torn last line
 * is cut off (or refused); a last entry that does not verify is refused: someone changed it.
 */
async function readTail(
  handle: FileHandle,
  path: string,
  onTorn: 'repair' | 'refuse',
): Promise<{ head: { seq: number; hash: string }; torn: boolean }> {
  const size = (await handle.stat()).size;
  if (size === 0) return { head: { seq: 0, hash: GENESIS_HASH }, torn: false };
  const lastNl = await lastNewlineBefore(handle, size);
  let end = size;
  let torn = false;
  if (lastNl !== size - 1) {
    if (onTorn === 'refuse') {
      throw new AuditError(
        'AUDIT_TORN_TAIL',
        `${path}: ${DETAIL['torn-tail']}; open it with repair to cut it off`,
      );
    }
    end = lastNl + 1;
    // Keep the fragment beside the log for whoever investigates, then cut it off.
    const fragment = await readAt(handle, end, Math.min(size - end, 64 * 1024));
    await writeFile(`${path}.torn-${Date.now()}`, fragment, { mode: 0o600, flag: 'wx' });
    await handle.truncate(end);
    await handle.sync();
    torn = true;
  }
  if (end === 0) return { head: { seq: 0, hash: GENESIS_HASH }, torn };
  const start = (await lastNewlineBefore(handle, end - 1)) + 1;
  const length = end - 1 - start;
  const checked =
    length > MAX_LINE_BYTES
      ? ({ ok: false, problem: 'unparsable', detail: 'too long', foundSeq: null } as const)
      : checkLine(await readAt(handle, start, length));
  if (!checked.ok) {
    throw new AuditError(
      'AUDIT_CORRUPT',
      `${path}: the last entry does not verify (${checked.problem.replace('-', ' ')}); ` +
        `run "node policy/main.ts audit verify --log ${path}" and keep the file for investigation`,
    );
  }
  return { head: { seq: checked.entry.seq, hash: checked.entry.hash }, torn };
}

async function readAt(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.subarray(0, done);
}

/** Position of the last "\n" before `end`, or -1. Reads backwards in chunks. */
async function lastNewlineBefore(handle: FileHandle, end: number): Promise<number> {
  const step = 64 * 1024;
  let to = end;
  while (to > 0) {
    const from = Math.max(0, to - step);
    const chunk = await readAt(handle, from, to - from);
    const i = chunk.lastIndexOf(0x0a);
    if (i >= 0) return from + i;
    to = from;
  }
  return -1;
}
