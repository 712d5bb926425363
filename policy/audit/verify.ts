import { open } from 'node:fs/promises';
import { basename } from 'node:path';
import { formatPath } from '../load.ts';
import {
  type AuditEntry,
  GENESIS_HASH,
  MAX_LINE_BYTES,
  entryHash,
  storedEntrySchema,
} from './entry.ts';
import { listSealed } from './files.ts';

export type AuditProblem =
  | 'unparsable'
  | 'invalid-entry'
  | 'hash-mismatch'
  | 'seq-gap'
  | 'prevhash-mismatch'
  | 'torn-tail'
  | 'segment-missing'
  | 'segment-truncated'
  | 'segment-reordered'
  | 'prune-mismatch';

export interface BrokenEntry {
  /** The first seq the chain cannot vouch for (every entry before it verified). */
  seq: number;
  /** 1-based line number in `file`. */
  line: number;
  /** The segment file the line is in (its name, without the directory). */
  file: string;
  /** The seq the line itself claims, when it has one. */
  foundSeq: number | null;
  problem: AuditProblem;
  /** One line for people; never the line's content. */
  detail: string;
}

export type VerifyResult =
  | {
      ok: true;
      /** Entries checked (those kept: pruned ones are gone). */
      count: number;
      head: { seq: number; hash: string };
      /** Files checked: sealed segments and the one being written. */
      segments: number;
      /** How many entries before the oldest kept one were deleted by recorded pruning. */
      pruned: number;
    }
  | { ok: false; count: number; broken: BrokenEntry };

export const DETAIL = {
  unparsable: 'not a JSON object',
  'hash-mismatch':
    "the entry's content does not match its hash: it was changed after it was written",
  'prevhash-mismatch': "prevHash is not the previous entry's hash: the chain was spliced",
  'torn-tail':
    'the last line is incomplete (no newline at the end): an append was cut short, most likely by a crash',
} as const;

export type LineCheck =
  | { ok: true; entry: AuditEntry }
  | { ok: false; problem: AuditProblem; detail: string; foundSeq: number | null };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Checks one line on its own: JSON, schema, its own hash. */
export function checkLine(bytes: Uint8Array): LineCheck {
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
  const parsed = storedEntrySchema.safeParse(json);
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

interface LogFile {
  path: string;
  /** From the file's name; undefined for the segment being written (`<log>` itself). */
  segment: number | undefined;
}

/**
 * Reads every segment of the log, oldest first, and checks every entry: its own hash, seq one
 * more than the last, and prevHash equal to the last entry's hash, across segment boundaries
 * too, and that each segment is the one its name and first entry say. The oldest kept segment
 * may start after seq 1 only where an `audit.prune` entry names exactly the entry it continues
 * from. Stops at the first problem, and says where and why. Streams: little memory.
 */
export async function verifyAuditLog(path: string): Promise<VerifyResult> {
  const files: LogFile[] = (await listSealed(path)).map((s) => ({
    path: s.path,
    segment: s.segment,
  }));
  // Without sealed segments the log is `path` alone, and a missing one is an error to report.
  if (files.length === 0 || (await exists(path))) files.push({ path, segment: undefined });
  const chain = new Chain();
  for (const file of files) {
    const broken = await chain.file(file);
    if (broken) return broken;
  }
  return chain.finish(files.length);
}

async function exists(path: string): Promise<boolean> {
  try {
    await (await open(path, 'r')).close();
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

interface Prune {
  segment: number;
  seq: number;
  hash: string;
  at: { seq: number; line: number; file: string };
}

/** The state carried from line to line and file to file. */
class Chain {
  #count = 0;
  #prev: { seq: number; hash: string; segment: number; file: string } | undefined;
  #start: { seq: number; prevHash: string; file: string } | undefined;
  readonly #prunes: Prune[] = [];
  /** seq -> hash of the last entry of each sealed segment (where a prune may end). */
  readonly #ends = new Map<number, string>();

  async file(file: LogFile): Promise<VerifyResult | undefined> {
    const name = basename(file.path);
    const handle = await open(file.path, 'r');
    let line = 0;
    const fail = (
      problem: AuditProblem,
      detail: string,
      foundSeq: number | null,
      seq = this.#prev ? this.#prev.seq + 1 : (foundSeq ?? 1),
    ): VerifyResult => ({
      ok: false,
      count: this.#count,
      broken: { seq, line, file: name, foundSeq, problem, detail },
    });
    const onLine = (bytes: Uint8Array): VerifyResult | undefined => {
      line++;
      const checked = checkLine(bytes);
      if (!checked.ok) return fail(checked.problem, checked.detail, checked.foundSeq);
      const { entry } = checked;
      const problem = line === 1 ? this.#first(entry, file, name) : this.#next(entry);
      if (problem) return fail(problem.problem, problem.detail, entry.seq);
      if (entry.pruned) {
        if (entry.pruned.seq >= entry.seq) {
          return fail(
            'prune-mismatch',
            'an audit.prune entry naming entries after itself',
            entry.seq,
          );
        }
        this.#prunes.push({ ...entry.pruned, at: { seq: entry.seq, line, file: name } });
      }
      this.#prev = {
        seq: entry.seq,
        hash: entry.hash,
        segment: this.#prev && line > 1 ? this.#prev.segment : this.#segmentOf(entry, file),
        file: name,
      };
      this.#count++;
      return undefined;
    };
    try {
      const chunk = Buffer.alloc(64 * 1024);
      let pending: Buffer = Buffer.alloc(0);
      for (;;) {
        const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
        if (bytesRead === 0) break;
        let data = Buffer.concat([pending, chunk.subarray(0, bytesRead)]);
        let nl: number;
        while ((nl = data.indexOf(0x0a)) >= 0) {
          const result = onLine(data.subarray(0, nl));
          if (result) return result;
          data = data.subarray(nl + 1);
        }
        if (data.length > MAX_LINE_BYTES) {
          line++;
          return fail('unparsable', `longer than ${MAX_LINE_BYTES} bytes`, null);
        }
        pending = Buffer.from(data);
      }
      const sealed = file.segment !== undefined;
      if (pending.length > 0) {
        line++;
        const checked = checkLine(pending);
        const foundSeq = checked.ok ? checked.entry.seq : checked.foundSeq;
        // Only a crash mid-append tears a line, and only the segment being written has appends.
        return sealed
          ? fail(
              'segment-truncated',
              `the last line of ${name} is incomplete: the segment was cut short`,
              foundSeq,
            )
          : fail('torn-tail', DETAIL['torn-tail'], foundSeq);
      }
      if (sealed && line === 0) {
        line = 1;
        return fail('segment-truncated', `${name} is empty: a sealed segment has entries`, null);
      }
      if (sealed && this.#prev) this.#ends.set(this.#prev.seq, this.#prev.hash);
      return undefined;
    } finally {
      await handle.close();
    }
  }

  /** A segment's number: its first entry's (segment 2 on), else its name's, else 1. */
  #segmentOf(first: AuditEntry, file: LogFile): number {
    return first.segment ?? file.segment ?? 1;
  }

  #next(entry: AuditEntry): { problem: AuditProblem; detail: string } | undefined {
    const prev = this.#prev;
    if (!prev) return undefined;
    if (entry.seq !== prev.seq + 1) {
      return {
        problem: 'seq-gap',
        detail: `expected seq ${prev.seq + 1}, found ${entry.seq}: an entry is missing or out of order`,
      };
    }
    if (entry.prevHash !== prev.hash) {
      return { problem: 'prevhash-mismatch', detail: DETAIL['prevhash-mismatch'] };
    }
    if (entry.action === 'audit.segment') {
      return { problem: 'segment-reordered', detail: 'a segment header inside a segment' };
    }
    return undefined;
  }

  /** The first entry of a file: where the set starts, or a segment boundary. */
  #first(
    entry: AuditEntry,
    file: LogFile,
    name: string,
  ): { problem: AuditProblem; detail: string } | undefined {
    const header = entry.segment;
    if (file.segment !== undefined && header !== undefined && header !== file.segment) {
      return {
        problem: 'segment-reordered',
        detail: `${name} holds segment ${header}: segment files were renamed or swapped`,
      };
    }
    const segment = this.#segmentOf(entry, file);
    const prev = this.#prev;
    if (!prev) {
      if (entry.seq === 1 && entry.prevHash !== GENESIS_HASH) {
        return { problem: 'prevhash-mismatch', detail: 'the first entry does not start the chain' };
      }
      this.#start = { seq: entry.seq, prevHash: entry.prevHash, file: name };
      return undefined;
    }
    const expected = prev.seq + 1;
    const cut = `${prev.file} ends at seq ${prev.seq}, ${name} starts at seq ${entry.seq}`;
    if (segment > prev.segment + 1) {
      const from = prev.segment + 1;
      const which =
        segment - 1 > from ? `segments ${from}-${segment - 1} are` : `segment ${from} is`;
      return { problem: 'segment-missing', detail: `${which} missing (${cut})` };
    }
    if (segment <= prev.segment) {
      return {
        problem: 'segment-reordered',
        detail:
          header === undefined
            ? `${name} does not start with a segment header, though it follows ${prev.file}`
            : `${name} is segment ${segment}, after segment ${prev.segment}`,
      };
    }
    if (entry.seq > expected) {
      return {
        problem: 'segment-truncated',
        detail: `entries ${range(expected, entry.seq - 1)} were cut off the end of ${prev.file} or the start of ${name} (${cut})`,
      };
    }
    if (entry.seq < expected) {
      return {
        problem: 'segment-reordered',
        detail: `${name} does not follow ${prev.file} (${cut})`,
      };
    }
    if (entry.prevHash !== prev.hash) {
      return {
        problem: 'prevhash-mismatch',
        detail: `${name} does not continue ${prev.file}: its first prevHash is not the last hash there`,
      };
    }
    if (header === undefined) {
      return {
        problem: 'segment-reordered',
        detail: `${name} does not start with a segment header`,
      };
    }
    return undefined;
  }

  /** The set's start: seq 1, or exactly where a recorded prune ended. */
  finish(segments: number): VerifyResult {
    const head = this.#prev
      ? { seq: this.#prev.seq, hash: this.#prev.hash }
      : { seq: 0, hash: GENESIS_HASH };
    const start = this.#start;
    const broken = (b: Omit<BrokenEntry, 'foundSeq'>, count: number): VerifyResult => ({
      ok: false,
      count,
      broken: { ...b, foundSeq: b.seq },
    });
    if (start && start.seq > 1) {
      const recorded = this.#prunes.some(
        (p) => p.seq === start.seq - 1 && p.hash === start.prevHash,
      );
      if (!recorded) {
        // Pruning that did happen (an earlier prune) accounts for the entries up to its end.
        const upTo = Math.max(
          0,
          ...this.#prunes.filter((p) => p.seq < start.seq).map((p) => p.seq),
        );
        return broken(
          {
            seq: upTo + 1,
            line: 1,
            file: start.file,
            problem: 'segment-missing',
            detail:
              `the oldest segment, ${start.file}, starts at seq ${start.seq}: entries ${range(upTo + 1, start.seq - 1)} ` +
              `are gone and no audit.prune entry records deleting them` +
              (upTo > 0 ? ` (pruning is recorded up to seq ${upTo})` : ''),
          },
          0,
        );
      }
    }
    const firstKept = start?.seq ?? 1;
    for (const p of this.#prunes) {
      // A prune ending before the oldest kept entry deleted what it says; one ending later was
      // interrupted (its segments are still here), so it must end where a kept segment ends.
      const fits =
        p.seq === firstKept - 1
          ? p.hash === start?.prevHash
          : p.seq < firstKept - 1 || this.#ends.get(p.seq) === p.hash;
      if (!fits) {
        return broken(
          {
            seq: p.at.seq,
            line: p.at.line,
            file: p.at.file,
            problem: 'prune-mismatch',
            detail: `this audit.prune says segment ${p.segment} ended at seq ${p.seq}, which is not where a segment ends`,
          },
          p.at.seq - firstKept,
        );
      }
    }
    return { ok: true, count: this.#count, head, segments, pruned: firstKept - 1 };
  }
}

function range(from: number, to: number): string {
  return from === to ? String(from) : `${from}-${to}`;
}

export function describeBroken(broken: BrokenEntry): string {
  const name = broken.problem.replaceAll('-', ' ').replace('prevhash', 'prevHash');
  return `broken at seq ${broken.seq} (line ${broken.line} of ${broken.file}): ${name}: ${broken.detail}`;
}
