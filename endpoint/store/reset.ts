/**
 * Replacing a store with an empty one, on purpose: the only way past STORE_MISSING (and the
 * way out of a store that is refused for good, e.g. tampered or rolled back). The old
 * directory, if any, is moved aside (never deleted: it is sealed, and it is evidence), then a
 * new store is created at the counter's epoch with `allowFresh`, in the same call, so nothing
 * is left behind that could later recreate a store by itself.
 */
import { lstat, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { openDurableStore, type DurableStoreOptions } from './durable-store.ts';
import { lockDirectory } from './lock.ts';

export interface ResetResult {
  /** Where the old store directory went, or null when there was none. */
  movedTo: string | null;
  /** The new store's epoch (the vault's counter after its creation). */
  epoch: bigint;
}

/**
 * Whether there is anything at `dir` to keep: a symlink or file in its place, or a directory
 * with more in it than locks and temp files (a refused open leaves an empty directory).
 */
async function somethingThere(dir: string): Promise<boolean> {
  try {
    if (!(await lstat(dir)).isDirectory()) return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  const names = await readdir(dir);
  return names.some(
    (name) => name !== 'LOCK' && !name.startsWith('LOCK.') && !name.endsWith('.tmp'),
  );
}

/**
 * Moves `options.dir` aside (to `<dir>.reset-<time>`) and creates a new, empty store there.
 * `beforeChange` runs once nothing can stop the reset any more but before anything changed
 * (the endpoint writes its audit entry there); if it throws, nothing is changed. An open
 * store (another process holds its lock) is refused with STORE_LOCKED.
 */
export async function resetDurableStore(
  options: Omit<DurableStoreOptions, 'allowFresh'> & { beforeChange?: () => Promise<void> },
  now: Date = new Date(),
): Promise<ResetResult> {
  const { beforeChange, ...storeOptions } = options;
  let movedTo: string | null = null;
  if (await somethingThere(options.dir)) {
    const info = await lstat(options.dir);
    // A symlink is moved aside as it is (its target is left alone); a directory is locked
    // first, so that a running endpoint's store is never pulled from under it.
    const release = info.isDirectory() ? await lockDirectory(options.dir) : null;
    const aside = `${options.dir}.reset-${now.toISOString().replace(/[:.]/g, '-')}`;
    try {
      await beforeChange?.();
      await rename(options.dir, aside);
      movedTo = aside;
    } finally {
      await release?.();
      if (movedTo !== null) await unlink(join(movedTo, 'LOCK')).catch(() => undefined);
    }
  } else {
    await beforeChange?.();
  }
  const store = await openDurableStore({ ...storeOptions, allowFresh: true });
  const { epoch } = store.stats();
  await store.close();
  return { movedTo, epoch };
}
