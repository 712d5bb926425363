/**
 * One writer per store directory: two processes appending to one journal would interleave
 * sequence numbers and brick it. The shared lock (keyvault/common/lock.ts) with the store's
 * LOCK file and the store's error code. On a simulated filesystem (tests) no other process
 * can see the directory, so the lock is this process's alone.
 */
import { realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { LockError, acquireLock } from '../../keyvault/common/lock.ts';
import { StoreCode, StoreError } from './errors.ts';
import { nodeFs, type StoreFs } from './fs.ts';

const simulated = new WeakMap<StoreFs, Set<string>>();

function locked(dir: string, who: string): StoreError {
  return new StoreError(
    StoreCode.Locked,
    `the store in ${dir} is open in ${who}; stop it first (only one endpoint may use a store)`,
  );
}

export async function lockDirectory(
  dir: string,
  fs: StoreFs = nodeFs,
): Promise<() => Promise<void>> {
  if (fs !== nodeFs) {
    const held = simulated.get(fs) ?? new Set<string>();
    simulated.set(fs, held);
    if (held.has(dir)) throw locked(dir, 'this process');
    held.add(dir);
    return () => {
      held.delete(dir);
      return Promise.resolve();
    };
  }
  const real = await realpath(dir);
  try {
    const lock = await acquireLock(real, { lockFile: join(real, 'LOCK') });
    return () => lock.release();
  } catch (e) {
    if (!(e instanceof LockError)) throw e;
    throw locked(dir, e.owner !== undefined ? `process ${e.owner}` : 'another process');
  }
}
