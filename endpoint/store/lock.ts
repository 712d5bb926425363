/**
 * One writer per store directory: two processes appending to one journal would interleave
 * sequence numbers and brick it. The shared lock (keyvault/common/lock.ts) with the store's
 * LOCK file and the store's error code.
 */
import { realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { LockError, acquireLock } from '../../keyvault/common/lock.ts';
import { StoreCode, StoreError } from './errors.ts';

export async function lockDirectory(dir: string): Promise<() => Promise<void>> {
  const real = await realpath(dir);
  try {
    const lock = await acquireLock(real, { lockFile: join(real, 'LOCK') });
    return () => lock.release();
  } catch (e) {
    if (!(e instanceof LockError)) throw e;
    const who = e.owner !== undefined ? `process ${e.owner}` : 'another process';
    throw new StoreError(
      StoreCode.Locked,
      `the store in ${dir} is open in ${who}; stop it first (only one endpoint may use a store)`,
    );
  }
}
