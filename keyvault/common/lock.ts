import { randomBytes } from 'node:crypto';
import { link, readFile, unlink, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

export class LockError extends Error {
  readonly code = 'POLICY_LOCKED';
  /** The holder's pid, when the lock file names one. */
  readonly owner: number | undefined;
  constructor(message: string, owner?: number) {
    super(message);
    this.owner = owner;
  }
}

/** Locks this process holds, by lock file: a second open in the same process is refused too (its pid alone cannot tell). */
const held = new Set<string>();

export interface Lock {
  release(): Promise<void>;
}

/**
 * A lock file beside `path` (`path.lock`, or `options.lockFile`, holding the owner's pid), so
 * that two writers never interleave: two `token create` runs, two endpoints appending to one
 * audit log or one store's journal. A lock whose process is gone (kill -9) is taken over. Best
 * effort against a pid reused by an unrelated process: then the error says which file to
 * remove. The one lock every compartment uses.
 */
export async function acquireLock(
  path: string,
  options: { waitMs?: number; lockFile?: string } = {},
): Promise<Lock> {
  const lockPath = options.lockFile ?? `${path}.lock`;
  if (held.has(lockPath)) {
    throw new LockError(`${path} is locked by process ${process.pid} (this process)`, process.pid);
  }
  const deadline = Date.now() + (options.waitMs ?? 0);
  for (;;) {
    // Written whole under a temporary name, then linked into place (link fails when the name
    // exists): the lock file is never seen empty or half-written.
    const tmp = `${lockPath}.${process.pid}.${randomBytes(4).toString('hex')}`;
    await writeFile(tmp, `${process.pid}\n`, { mode: 0o600, flag: 'wx' });
    let taken = false;
    try {
      await link(tmp, lockPath);
      taken = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    if (taken) {
      held.add(lockPath);
      let released = false;
      return {
        release: async () => {
          if (released) return;
          released = true;
          held.delete(lockPath);
          await unlink(lockPath).catch(() => undefined);
        },
      };
    }
    const owner = await lockOwner(lockPath);
    // Our own pid in a lock we do not hold: a previous process with the same pid left it.
    if (owner === undefined || owner === process.pid || !isAlive(owner)) {
      // Stale: its process died without releasing it.
      await unlink(lockPath).catch(() => undefined);
      continue;
    }
    if (Date.now() >= deadline) {
      throw new LockError(
        `${path} is locked by process ${owner}; if that process is not running, remove ${lockPath}`,
        owner,
      );
    }
    await sleep(50);
  }
}

async function lockOwner(lockPath: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(lockPath, 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number.parseInt(text, 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
