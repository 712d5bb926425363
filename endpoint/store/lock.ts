/**
 * One writer per store directory: two processes appending to one journal would interleave
 * sequence numbers and brick it. The lock file holds the owner's pid; a lock whose process is
 * gone (kill -9 leaves it behind) is taken over. Within one process a registry catches a
 * second open of the same directory, which the pid alone cannot tell apart.
 */
import { open, readFile, realpath, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { StoreCode, StoreError } from './errors.ts';

const held = new Set<string>();
const FRESH_EMPTY_LOCK_MS = 10_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function locked(dir: string, pid: number): StoreError {
  const who = pid > 0 ? `process ${pid}` : 'another process';
  return new StoreError(
    StoreCode.Locked,
    `the store in ${dir} is open in ${who}; stop it first (only one endpoint may use a store)`,
  );
}

export async function lockDirectory(dir: string): Promise<() => Promise<void>> {
  const real = await realpath(dir);
  if (held.has(real)) throw locked(dir, process.pid);
  const path = join(real, 'LOCK');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      try {
        await handle.writeFile(`${process.pid}\n`);
        await handle.sync();
      } finally {
        await handle.close();
      }
      held.add(real);
      let released = false;
      return async () => {
        if (released) return;
        released = true;
        held.delete(real);
        await unlink(path).catch(() => undefined);
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (!Number.isSafeInteger(pid) || pid <= 0) {
      // Created but its pid not written yet: another opener is between those two steps.
      const age = Date.now() - (await stat(path).catch(() => ({ mtimeMs: 0 }))).mtimeMs;
      if (age < FRESH_EMPTY_LOCK_MS) throw locked(dir, 0);
    } else if (pid !== process.pid && alive(pid)) {
      // Our own pid in a lock we do not hold: a previous process with the same pid left it.
      throw locked(dir, pid);
    }
    await unlink(path).catch(() => undefined);
  }
  throw new StoreError(StoreCode.Locked, `could not take the lock in ${dir}`);
}
