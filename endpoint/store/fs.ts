/**
 * The filesystem operations the store uses, behind one small interface, so that tests can run
 * the real store on a recording in-memory filesystem and cut the power between any two of its
 * operations (test/fixtures/power-loss.ts). `nodeFs` is the real one (node:fs/promises).
 *
 * What the store relies on, and what the power-loss test assumes of a filesystem:
 *   - data written to a file is durable only once `datasync`/`sync` on it returned;
 *   - a creation, rename or unlink in a directory is durable only once `syncDir` on that
 *     directory returned (before that, a power cut may or may not have applied it);
 *   - a rename replaces its target atomically (old file or new, never neither).
 */
import { constants } from 'node:fs';
import { mkdir, open, readdir, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

/** The open modes the store uses: read, read-write (never created), exclusive create. */
export type StoreOpenFlags = 'r' | 'r+' | 'wx';

export interface StoreFileHandle {
  read(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesRead: number }>;
  /** May write fewer bytes than asked (a full disk writes what fits, then fails). */
  write(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesWritten: number }>;
  /** Writes all of `data` at the current position (0 for a file just created). */
  writeFile(data: Uint8Array | string): Promise<void>;
  datasync(): Promise<void>;
  sync(): Promise<void>;
  truncate(length: number): Promise<void>;
  close(): Promise<void>;
}

export interface StoreFs {
  open(path: string, flags: StoreOpenFlags, mode?: number): Promise<StoreFileHandle>;
  /** Rejects with code ENOENT when the file does not exist. */
  readFile(path: string): Promise<Buffer>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  /** mkdir -p with `mode`: returns the first directory it created, or undefined if none. */
  mkdir(path: string, mode: number): Promise<string | undefined>;
  /** fsync of a directory: makes the creations, renames and unlinks in it durable. */
  syncDir(path: string): Promise<void>;
}

/** The store's open modes with O_NOFOLLOW: a symlink in the store's place fails (ELOOP). */
const NO_FOLLOW: Record<StoreOpenFlags, number> = {
  r: constants.O_RDONLY | constants.O_NOFOLLOW,
  'r+': constants.O_RDWR | constants.O_NOFOLLOW,
  wx: constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
};

export const nodeFs: StoreFs = {
  open: (path, flags, mode) => open(path, NO_FOLLOW[flags], mode),
  readFile: async (path) => {
    const handle = await open(path, NO_FOLLOW.r);
    try {
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  },
  rename: (from, to) => rename(from, to),
  unlink: (path) => unlink(path),
  readdir: (path) => readdir(path),
  mkdir: (path, mode) => mkdir(path, { recursive: true, mode }),
  syncDir: async (path) => {
    const handle = await open(path, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
};

/**
 * Creates `dir` (and missing parents) and makes the new directories themselves durable: a
 * directory's name lives in its parent, so a power cut before the parent is synced can take
 * a whole new store (files fsynced or not) with it, while the vault's counter has moved.
 */
export async function makeDirDurable(fs: StoreFs, dir: string, mode = 0o700): Promise<void> {
  const first = await fs.mkdir(dir, mode);
  if (first === undefined) return;
  const created: string[] = [];
  for (let path = dir; ; path = dirname(path)) {
    created.unshift(path);
    if (path === first || dirname(path) === path) break;
  }
  for (const path of created) await fs.syncDir(dirname(path));
}

/** ENOSPC or EDQUOT: the write failed for lack of space, and may succeed once space returns. */
export function isNoSpace(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}
