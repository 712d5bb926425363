/**
 * Epochs and the anti-rollback counter. A store's files are sealed for one epoch, and the
 * epoch of the store in use must equal the vault's monotonic counter. A new epoch (at
 * creation and at every compaction) is reached in this order:
 *
 *   1. write snapshot.next for E+1 (temp file, fsync, rename, fsync dir), and an empty
 *      journal for E+1 under a temp name (fsync)
 *   2. counter E -> E+1
 *   3. rename that journal over the old one, fsync dir
 *   4. rename snapshot.next -> snapshot, fsync dir
 *
 * After 2 only renames and directory syncs remain, which need no free space; one that still
 * fails for lack of it is retried (EpochContext.onNoSpace) rather than abandoned.
 *
 * Open, by what a crash can leave:
 *   - counter E, snapshot.next E+1 (crash before 2): discard snapshot.next; snapshot E and
 *     journal E hold everything.
 *   - counter E+1, snapshot.next E+1 (crash after 2): roll forward from snapshot.next, which
 *     holds everything journal E held; replace journal E with an empty E+1 if 3 did not run.
 *   - otherwise: snapshot and journal must both be for exactly the counter's epoch. Older is
 *     a rollback and refused; there is no window in which an older epoch has to be accepted.
 */
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
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
import { isNoSpace, type StoreFs } from './fs.ts';
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
  /** Every file operation goes through this (nodeFs, or a test's simulated disk). */
  fs: StoreFs;
  keys: StoreKeys;
  counter: StoreCounter;
  logger: StoreLogger;
  onStep?: ((step: EpochStep) => void | Promise<void>) | undefined;
  /**
   * Called when a step that cannot be undone (after the counter moved) fails for lack of
   * space; resolves true (after a pause) to try it again, false to give up.
   */
  onNoSpace?: ((error: unknown) => Promise<boolean>) | undefined;
}

export const FILES = { snapshot: 'snapshot', next: 'snapshot.next', journal: 'journal' } as const;

/** Thrown by a test hook: the store stops as a killed process would, touching nothing. */
export class SimulatedCrash extends Error {
  constructor(step: EpochStep, options?: { cause?: unknown }) {
    super(`simulated crash after ${step}`, options);
    this.name = 'SimulatedCrash';
  }
}

async function readIfExists(fs: StoreFs, path: string): Promise<Buffer | null> {
  try {
    return await fs.readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
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
  const handle = await ctx.fs.open(join(ctx.dir, FILES.journal), 'r+');
  return { handle, epoch, seq, size } satisfies JournalPosition;
}

async function resetJournal(ctx: EpochContext, epoch: bigint): Promise<void> {
  await writeFileAtomic(join(ctx.dir, FILES.journal), journalHeader(ctx.keys, epoch), {
    replace: true,
    mode: 0o600,
    fs: ctx.fs,
  });
}

/**
 * Writes and fsyncs `data` under a temp name beside `name` (one that removeTempFiles clears
 * at open) and returns the name; renaming it into place is left to the caller.
 */
async function writeTemp(ctx: EpochContext, name: string, data: Uint8Array): Promise<string> {
  const tmp = join(ctx.dir, `${name}.${randomBytes(6).toString('hex')}.tmp`);
  const file = await ctx.fs.open(tmp, 'wx', 0o600);
  try {
    await file.writeFile(data);
    await file.sync();
  } catch (e) {
    await file.close().catch(() => undefined);
    await ctx.fs.unlink(tmp).catch(() => undefined);
    throw e;
  }
  await file.close();
  return tmp;
}

/** Runs a step that must not be abandoned, again while it fails for lack of space. */
async function untilSpace(ctx: EpochContext, run: () => Promise<void>): Promise<void> {
  for (;;) {
    try {
      await run();
      return;
    } catch (e) {
      if (!isNoSpace(e) || !ctx.onNoSpace || !(await ctx.onNoSpace(e))) throw e;
    }
  }
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
  const journalPath = join(ctx.dir, FILES.journal);
  const sealed = sealSnapshot(ctx.keys, target, plaintext);
  let journalTmp = '';
  try {
    await writeFileAtomic(nextPath, sealed, { replace: true, mode: 0o600, fs: ctx.fs });
    // Step 3's file is written now too, before the counter moves: past that point only
    // renames remain, which need no space, so a full disk cannot strand a compaction.
    journalTmp = await writeTemp(ctx, FILES.journal, journalHeader(ctx.keys, target));
  } catch (error) {
    await ctx.fs.unlink(nextPath).catch(() => undefined);
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
        await ctx.fs.unlink(journalTmp).catch(() => undefined);
        await ctx.fs.unlink(nextPath);
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
    // The new journal must be durable before the snapshot's rename: a snapshot for E+1 next
    // to a journal for E is refused.
    await untilSpace(ctx, () => ctx.fs.rename(journalTmp, journalPath));
    await untilSpace(ctx, () => ctx.fs.syncDir(ctx.dir));
    await step(ctx, 'journal-reset');
    await untilSpace(ctx, () => ctx.fs.rename(nextPath, join(ctx.dir, FILES.snapshot)));
    await untilSpace(ctx, () => ctx.fs.syncDir(ctx.dir));
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
async function removeTempFiles(fs: StoreFs, dir: string): Promise<void> {
  for (const name of await fs.readdir(dir)) {
    if (/^(snapshot|snapshot\.next|journal)\.[0-9a-f]{12}\.tmp$/.test(name)) {
      await fs.unlink(join(dir, name)).catch(() => undefined);
    }
  }
}

export interface RecoverOptions {
  /**
   * Create a store even though the counter (or the birth record) shows one existed: a new
   * device, on the operator's explicit request (the endpoint's reset-store command).
   */
  allowFresh?: boolean | undefined;
  /**
   * The counter's value before any store used it: a store may be created without allowFresh
   * only at this value. Default 0n (dev and PKCS#11 vaults create their counters at 0); null
   * when unknown (a TPM counter starts above the highest value any counter on that TPM had),
   * and then only the birth record tells that a store existed.
   */
  counterStart?: bigint | null | undefined;
  /** Sees the decrypted snapshot before anything else is read or changed; throws to refuse. */
  checkSnapshot?: ((plaintext: Buffer) => void) | undefined;
}

/**
 * Beside the store directory (`<dir>.created`): written once a store exists there, so that a
 * store directory that went missing is noticed even where the counter cannot tell (see
 * RecoverOptions.counterStart). It can only make an open refuse, never allow anything.
 */
export function birthRecordPath(dir: string): string {
  return join(dirname(dir), `${basename(dir)}.created`);
}

async function writeBirthRecord(ctx: EpochContext, epoch: bigint): Promise<void> {
  const record = `${JSON.stringify({ v: 1, store: basename(ctx.dir), createdAtEpoch: String(epoch) })}\n`;
  await writeFileAtomic(birthRecordPath(ctx.dir), record, {
    replace: true,
    mode: 0o600,
    fs: ctx.fs,
  });
}

function missing(ctx: EpochContext, why: string): StoreError {
  return new StoreError(
    StoreCode.Missing,
    `no store in ${ctx.dir}, though ${why}: refused rather than silently becoming a new device. ` +
      'Put the store directory back (an older copy is refused as rolled back), or start a new ' +
      "device deliberately with the endpoint's reset-store command",
  );
}

/**
 * Brings the directory to a consistent epoch equal to the counter (finishing or discarding an
 * interrupted compaction, creating a store when there is none and none existed), checks it,
 * drops a torn journal tail, and returns the decrypted content for replay.
 */
export async function recoverFiles(
  ctx: EpochContext,
  emptySnapshot: () => Uint8Array,
  options: RecoverOptions = {},
): Promise<RecoveredFiles> {
  await ctx.fs.mkdir(ctx.dir, 0o700);
  await removeTempFiles(ctx.fs, ctx.dir);
  const counter = await ctx.counter.read();
  const snapshotPath = join(ctx.dir, FILES.snapshot);
  const journalPath = join(ctx.dir, FILES.journal);
  const nextPath = join(ctx.dir, FILES.next);

  const next = await readIfExists(ctx.fs, nextPath);
  if (next) {
    const epoch = snapshotEpoch(ctx.keys, next, FILES.next);
    if (epoch === counter) {
      openSnapshot(ctx.keys, next, FILES.next);
      const journal = await readIfExists(ctx.fs, journalPath);
      if (!journal || journalEpoch(ctx.keys, journal, FILES.journal) !== epoch) {
        await resetJournal(ctx, epoch);
      }
      await ctx.fs.rename(nextPath, snapshotPath);
      await ctx.fs.syncDir(ctx.dir);
      ctx.logger.info(`store: finished an interrupted compaction (epoch ${epoch})`);
    } else {
      await ctx.fs.unlink(nextPath);
      await ctx.fs.syncDir(ctx.dir);
      ctx.logger.info(`store: discarded an unfinished compaction (epoch ${epoch})`);
    }
  }

  let created = false;
  let snapshotFile = await readIfExists(ctx.fs, snapshotPath);
  if (!snapshotFile) {
    if (await readIfExists(ctx.fs, journalPath)) {
      throw new StoreError(StoreCode.Tampered, 'the journal exists but the snapshot is missing');
    }
    const start = options.counterStart === undefined ? 0n : options.counterStart;
    const born = await readIfExists(ctx.fs, birthRecordPath(ctx.dir));
    const why =
      start !== null && counter > start
        ? `the vault's counter is at ${counter}, past its starting value ${start}`
        : born
          ? `${birthRecordPath(ctx.dir)} records that a store was created there`
          : null;
    if (why !== null) {
      if (!options.allowFresh) throw missing(ctx, why);
      ctx.logger.warn(`store: creating a new store in ${ctx.dir} as asked, though ${why}`);
    }
    const result = await advanceEpoch(ctx, counter, emptySnapshot());
    if (!result.ok) throw result.error;
    await result.position.handle.close();
    created = true;
    snapshotFile = await ctx.fs.readFile(snapshotPath);
  }

  const { epoch, plaintext } = openSnapshot(ctx.keys, snapshotFile, FILES.snapshot);
  try {
    options.checkSnapshot?.(plaintext);
  } catch (e) {
    plaintext.fill(0);
    throw e;
  }
  const current = created ? counter + 1n : counter;
  if (epoch < current) throw rolledBack(epoch, current);
  if (epoch > current) throw counterBehind(epoch, current);

  const journal = await readIfExists(ctx.fs, journalPath);
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
      `store: dropped ${scan.tornBytes} bytes of an unacknowledged write at the end of the journal`,
    );
  }
  if (created || !(await readIfExists(ctx.fs, birthRecordPath(ctx.dir)))) {
    try {
      await writeBirthRecord(ctx, epoch);
    } catch (e) {
      await position.handle.close();
      throw e;
    }
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
