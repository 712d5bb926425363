/**
 * Epochs and the anti-rollback counter. A store's files are sealed for one epoch, and the
 * epoch of the store in use must equal the vault's monotonic counter. A new epoch (at
 * creation and at every compaction) is reached in this order:
 *
 *   1. write snapshot.next for E+1 (temp file, fsync, rename, fsync dir)
 *   2. counter E -> E+1
 *   3. write an empty journal for E+1 over the old one (atomic, as 1)
 *   4. rename snapshot.next -> snapshot, fsync dir
 *
 * Open, by what a crash can leave:
 *   - counter E, snapshot.next E+1 (crash before 2): discard snapshot.next; snapshot E and
 *     journal E hold everything.
 *   - counter E+1, snapshot.next E+1 (crash after 2): roll forward from snapshot.next, which
 *     holds everything journal E held; replace journal E with an empty E+1 if 3 did not run.
 *   - otherwise: snapshot and journal must both be for exactly the counter's epoch. Older is
 *     a rollback and refused; there is no window in which an older epoch has to be accepted.
 */
import { mkdir, open, readFile, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../keyvault/common/atomic-file.ts';
import { StoreCode, StoreError } from './errors.ts';
import {
  JOURNAL_HEADER_BYTES,
  journalEpoch,
  journalHeader,
  openSnapshot,
  scanJournal,
  sealSnapshot,
  snapshotEpoch,
} from './format.ts';
import type { JournalPosition } from './journal.ts';
import type { StoreKeys } from './keys.ts';

export interface StoreCounter {
  read(): Promise<bigint>;
  /** Increments and returns the new value. */
  increment(): Promise<bigint>;
}

export interface StoreLogger {
  warn(message: string): void;
  info(message: string): void;
}

/** Points of the epoch protocol, for fault-injection tests; a hook that throws acts as a crash. */
export type EpochStep = 'snapshot-next-written' | 'counter-incremented' | 'journal-reset';

export interface EpochContext {
  dir: string;
  keys: StoreKeys;
  counter: StoreCounter;
  logger: StoreLogger;
  onStep?: ((step: EpochStep) => void | Promise<void>) | undefined;
}

export const FILES = { snapshot: 'snapshot', next: 'snapshot.next', journal: 'journal' } as const;

/** Thrown by a test hook: the store stops as a killed process would, touching nothing. */
export class SimulatedCrash extends Error {
  constructor(step: EpochStep, options?: { cause?: unknown }) {
    super(`simulated crash after ${step}`, options);
    this.name = 'SimulatedCrash';
  }
}

async function readIfExists(path: string): Promise<Buffer | null> {
  try {
    return await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function step(ctx: EpochContext, name: EpochStep): Promise<void> {
  if (!ctx.onStep) return;
  try {
    await ctx.onStep(name);
  } catch (e) {
    throw new SimulatedCrash(name, { cause: e });
  }
}

async function openJournal(ctx: EpochContext, epoch: bigint, seq: number, size: number) {
  const handle = await open(join(ctx.dir, FILES.journal), 'r+');
  return { handle, epoch, seq, size } satisfies JournalPosition;
}

async function resetJournal(ctx: EpochContext, epoch: bigint): Promise<void> {
  await writeFileAtomic(join(ctx.dir, FILES.journal), journalHeader(ctx.keys, epoch), {
    replace: true,
    mode: 0o600,
  });
}

export type AdvanceResult =
  | { ok: true; position: JournalPosition; snapshotBytes: number }
  /** `safe`: the counter did not move and the current epoch's files are intact: carry on. */
  | { ok: false; safe: boolean; error: unknown };

/** Moves the store from epoch `from` to `from + 1` with `plaintext` as the new snapshot. */
export async function advanceEpoch(
  ctx: EpochContext,
  from: bigint,
  plaintext: Uint8Array,
): Promise<AdvanceResult> {
  const target = from + 1n;
  const nextPath = join(ctx.dir, FILES.next);
  const sealed = sealSnapshot(ctx.keys, target, plaintext);
  try {
    await writeFileAtomic(nextPath, sealed, { replace: true, mode: 0o600 });
  } catch (error) {
    await unlink(nextPath).catch(() => undefined);
    return { ok: false, safe: true, error };
  }
  try {
    await step(ctx, 'snapshot-next-written');
    let value: bigint;
    try {
      value = await ctx.counter.increment();
    } catch (error) {
      // The increment may or may not have happened (a vault RPC can fail after the TPM
      // answered): ask again, and either undo step 1 or carry on with step 3.
      value = await ctx.counter.read();
      if (value === from) {
        await unlink(nextPath);
        return { ok: false, safe: true, error };
      }
    }
    if (value !== target) {
      throw new StoreError(
        StoreCode.CounterMismatch,
        `the vault counter moved to ${value} while advancing the store from epoch ${from}; ` +
          'is another store sharing this counter?',
      );
    }
    await step(ctx, 'counter-incremented');
    await resetJournal(ctx, target);
    await step(ctx, 'journal-reset');
    await rename(nextPath, join(ctx.dir, FILES.snapshot));
    await syncDir(ctx.dir);
    const position = await openJournal(ctx, target, 0, JOURNAL_HEADER_BYTES);
    return { ok: true, position, snapshotBytes: sealed.length };
  } catch (error) {
    return { ok: false, safe: false, error };
  }
}

export interface RecoveredFiles {
  epoch: bigint;
  /** Decrypted snapshot content (encoded). */
  snapshot: Buffer;
  snapshotBytes: number;
  /** Decrypted journal payloads, in order. */
  records: Buffer[];
  journal: JournalPosition;
  created: boolean;
}

function rolledBack(epoch: bigint, counter: bigint): StoreError {
  return new StoreError(
    StoreCode.RolledBack,
    `the store is at epoch ${epoch} but the vault's counter is at ${counter}: this is an older ` +
      'copy of the store (restored backup or copied directory) and is refused, because it may ' +
      'hold keys or state that were since replaced. Restore the newest copy of the store ' +
      'directory. If none exists, move this directory away and start a new device (its keys ' +
      'cannot be recovered from an old copy safely).',
  );
}

function counterBehind(epoch: bigint, counter: bigint): StoreError {
  return new StoreError(
    StoreCode.CounterBehind,
    `the store is at epoch ${epoch} but the vault's counter is only at ${counter}: the store ` +
      'was written with a different vault (or the vault was reset). Open it with its own vault.',
  );
}

/** Removes temp files an interrupted atomic write left (never a store file). */
async function removeTempFiles(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    if (/^(snapshot|snapshot\.next|journal)\.[0-9a-f]{12}\.tmp$/.test(name)) {
      await unlink(join(dir, name)).catch(() => undefined);
    }
  }
}

/**
 * Brings the directory to a consistent epoch equal to the counter (finishing or discarding an
 * interrupted compaction, creating a store when there is none), checks it, drops a torn
 * journal tail, and returns the decrypted content for replay.
 */
export async function recoverFiles(
  ctx: EpochContext,
  emptySnapshot: () => Uint8Array,
): Promise<RecoveredFiles> {
  await mkdir(ctx.dir, { recursive: true, mode: 0o700 });
  await removeTempFiles(ctx.dir);
  const counter = await ctx.counter.read();
  const snapshotPath = join(ctx.dir, FILES.snapshot);
  const journalPath = join(ctx.dir, FILES.journal);
  const nextPath = join(ctx.dir, FILES.next);

  const next = await readIfExists(nextPath);
  if (next) {
    const epoch = snapshotEpoch(ctx.keys, next, FILES.next);
    if (epoch === counter) {
      openSnapshot(ctx.keys, next, FILES.next);
      const journal = await readIfExists(journalPath);
      if (!journal || journalEpoch(ctx.keys, journal, FILES.journal) !== epoch) {
        await resetJournal(ctx, epoch);
      }
      await rename(nextPath, snapshotPath);
      await syncDir(ctx.dir);
      ctx.logger.info(`store: finished an interrupted compaction (epoch ${epoch})`);
    } else {
      await unlink(nextPath);
      await syncDir(ctx.dir);
      ctx.logger.info(`store: discarded an unfinished compaction (epoch ${epoch})`);
    }
  }

  let created = false;
  let snapshotFile = await readIfExists(snapshotPath);
  if (!snapshotFile) {
    if (await readIfExists(journalPath)) {
      throw new StoreError(StoreCode.Tampered, 'the journal exists but the snapshot is missing');
    }
    if (counter > 0n) {
      ctx.logger.warn(
        `store: no store in ${ctx.dir} though the vault counter is at ${counter}; creating a new one`,
      );
    }
    const result = await advanceEpoch(ctx, counter, emptySnapshot());
    if (!result.ok) throw result.error;
    await result.position.handle.close();
    created = true;
    snapshotFile = await readFile(snapshotPath);
  }

  const { epoch, plaintext } = openSnapshot(ctx.keys, snapshotFile, FILES.snapshot);
  const current = created ? counter + 1n : counter;
  if (epoch < current) throw rolledBack(epoch, current);
  if (epoch > current) throw counterBehind(epoch, current);

  const journal = await readIfExists(journalPath);
  if (!journal) throw new StoreError(StoreCode.Tampered, 'the journal is missing');
  const journalAt = journalEpoch(ctx.keys, journal, FILES.journal);
  if (journalAt !== epoch) {
    throw new StoreError(
      StoreCode.Tampered,
      `the journal is for epoch ${journalAt}, the snapshot for ${epoch}`,
    );
  }
  const scan = scanJournal(ctx.keys, journal, epoch, FILES.journal);
  const position = await openJournal(ctx, epoch, scan.payloads.length, scan.validLength);
  if (scan.tornBytes > 0) {
    try {
      await position.handle.truncate(scan.validLength);
      await position.handle.sync();
    } catch (e) {
      await position.handle.close();
      throw e;
    }
    ctx.logger.warn(
      `store: dropped a torn journal tail (${scan.tornBytes} bytes of an unacknowledged write)`,
    );
  }
  return {
    epoch,
    snapshot: plaintext,
    snapshotBytes: snapshotFile.length,
    records: scan.payloads,
    journal: position,
    created,
  };
}
