import { type FileHandle, open, writeFile } from 'node:fs/promises';
import { type AuditEntry, AuditError, MAX_LINE_BYTES } from './entry.ts';
import { lastNewlineBefore, readAt, readFirstLine } from './files.ts';
import { DETAIL, checkLine } from './verify.ts';

/** Where a chain stands: the last entry's seq and hash. */
export interface Head {
  seq: number;
  hash: string;
}

/**
 * Finds the last complete entry of the segment being written and checks it, so appends
 * continue its chain. A torn last line is cut off (or refused); a last entry that does not
 * verify is refused: someone changed it. `head` is null when the file has no entry.
 */
export async function readTail(
  handle: FileHandle,
  path: string,
  onTorn: 'repair' | 'refuse',
): Promise<{ head: Head | null; torn: boolean; size: number }> {
  const size = (await handle.stat()).size;
  if (size === 0) return { head: null, torn: false, size };
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
  if (end === 0) return { head: null, torn, size: 0 };
  const entry = await lastEntry(handle, path, end);
  return { head: { seq: entry.seq, hash: entry.hash }, torn, size: end };
}

async function lastEntry(handle: FileHandle, path: string, end: number): Promise<AuditEntry> {
  const start = (await lastNewlineBefore(handle, end - 1)) + 1;
  const length = end - 1 - start;
  const checked =
    length > MAX_LINE_BYTES
      ? ({ ok: false, problem: 'unparsable', detail: 'too long', foundSeq: null } as const)
      : checkLine(await readAt(handle, start, length));
  if (!checked.ok) {
    throw new AuditError(
      'AUDIT_CORRUPT',
      `${path}: the last entry does not verify (${checked.problem.replaceAll('-', ' ')}); ` +
        `run "node policy/main.ts audit verify --log ${path}" and keep the file for investigation`,
    );
  }
  return checked.entry;
}

/** The first entry of a file, if it has one that verifies on its own (else undefined). */
export async function firstEntry(handle: FileHandle): Promise<AuditEntry | undefined> {
  const line = await readFirstLine(handle, MAX_LINE_BYTES);
  if (line === null) return undefined;
  const checked = checkLine(line);
  return checked.ok ? checked.entry : undefined;
}

/**
 * A sealed segment's first entry (where it continues the chain from) and, on request, its last
 * (where the next one must continue). Sealed segments were complete when sealed: a torn or
 * unverifiable last line is refused.
 */
export async function readSealed(
  path: string,
  withLast: boolean,
): Promise<{ bytes: number; first: AuditEntry | undefined; last: AuditEntry | undefined }> {
  const handle = await open(path, 'r');
  try {
    const info = await handle.stat();
    if (!info.isFile() || (info.mode & 0o022) !== 0) {
      throw new AuditError(
        'AUDIT_CORRUPT',
        `${path}: not a regular file, or writable by other users; chmod 600 it`,
      );
    }
    const first = await firstEntry(handle);
    let last: AuditEntry | undefined;
    if (withLast) {
      if (info.size === 0 || (await lastNewlineBefore(handle, info.size)) !== info.size - 1) {
        throw new AuditError(
          'AUDIT_CORRUPT',
          `${path}: a sealed segment that is empty or ends in an incomplete line; ` +
            `run "node policy/main.ts audit verify" on the log`,
        );
      }
      last = await lastEntry(handle, path, info.size);
    }
    return { bytes: info.size, first, last };
  } finally {
    await handle.close();
  }
}
