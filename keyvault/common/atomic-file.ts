import { randomBytes } from 'node:crypto';
import { link, mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * The operations writeFileAtomic needs, for callers that run it on another filesystem (the
 * durable store's power-loss tests). The default is node:fs/promises.
 */
export interface AtomicFileFs {
  /** mkdir -p with `mode`. */
  mkdir(path: string, mode: number): Promise<unknown>;
  open(
    path: string,
    flags: 'wx',
    mode: number,
  ): Promise<{
    writeFile(data: Uint8Array | string): Promise<void>;
    sync(): Promise<void>;
    close(): Promise<void>;
  }>;
  rename(from: string, to: string): Promise<void>;
  /** Needed only for `replace: false`. */
  link?(existing: string, path: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** fsync of a directory. */
  syncDir(path: string): Promise<void>;
}

const nodeAtomicFs: AtomicFileFs = {
  mkdir: (path, mode) => mkdir(path, { recursive: true, mode }),
  open: (path, flags, mode) => open(path, flags, mode),
  rename: (from, to) => rename(from, to),
  link: (existing, path) => link(existing, path),
  unlink: (path) => unlink(path),
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
 * Writes a file so that a crash leaves either the old content or the new, never a torn one:
 * temp file, fsync, then rename (or, with `replace: false`, a hard link, which fails when the
 * name exists, so provisioning can never overwrite a key), then fsync the directory so the
 * new name itself is durable. Returns false when `replace: false` found the file there.
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  options: { mode?: number; replace: boolean; fs?: AtomicFileFs },
): Promise<boolean> {
  const fs = options.fs ?? nodeAtomicFs;
  const dir = dirname(path);
  await fs.mkdir(dir, 0o700);
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  const file = await fs.open(tmp, 'wx', options.mode ?? 0o600);
  try {
    await file.writeFile(data);
    await file.sync();
  } catch (e) {
    await file.close();
    await fs.unlink(tmp).catch(() => undefined);
    throw e;
  }
  await file.close();
  let renamed = false;
  try {
    if (options.replace) {
      await fs.rename(tmp, path);
      renamed = true;
    } else {
      if (!fs.link) throw new Error('writeFileAtomic: replace: false needs fs.link');
      try {
        await fs.link(tmp, path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw e;
      }
    }
  } finally {
    // After a rename the temp name is gone; after a link (or a failure) it is removed here.
    if (!renamed) await fs.unlink(tmp).catch(() => undefined);
  }
  await fs.syncDir(dir);
  return true;
}
