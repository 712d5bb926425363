import { type FileHandle, open, readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * The files of one log. `<log>` is the segment being written; sealed segments sit beside it
 * as `<log>.000001`, `<log>.000002`, ... numbered in the order they were written and never
 * renamed again, so a name says which segment a file claims to be (its first entry, hashed,
 * says the same from segment 2 on).
 */

const DIGITS = 6;

export function segmentPath(log: string, segment: number): string {
  return `${log}.${String(segment).padStart(DIGITS, '0')}`;
}

export interface SealedFile {
  segment: number;
  path: string;
}

/** The sealed segments beside `log`, oldest first. Names not written by segmentPath are ignored. */
export async function listSealed(log: string): Promise<SealedFile[]> {
  const dir = dirname(log);
  const prefix = `${basename(log)}.`;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const found: SealedFile[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const digits = name.slice(prefix.length);
    if (!/^\d{6,15}$/.test(digits)) continue;
    const segment = Number(digits);
    if (segment < 1 || String(segment).padStart(DIGITS, '0') !== digits) continue;
    found.push({ segment, path: join(dir, name) });
  }
  return found.sort((a, b) => a.segment - b.segment);
}

/** Makes renames, creations and deletions in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function readAt(
  handle: FileHandle,
  position: number,
  length: number,
): Promise<Buffer> {
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
export async function lastNewlineBefore(handle: FileHandle, end: number): Promise<number> {
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

/** The first line (without its newline), or null when there is no complete one in `limit` bytes. */
export async function readFirstLine(handle: FileHandle, limit: number): Promise<Buffer | null> {
  const head = await readAt(handle, 0, limit + 1);
  const nl = head.indexOf(0x0a);
  return nl < 0 ? null : head.subarray(0, nl);
}
