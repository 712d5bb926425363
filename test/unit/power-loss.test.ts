/**
 * Power loss, not only kill -9: the real durable store runs on a simulated disk that logs
 * every write, fsync, rename, unlink, truncate and directory sync (and the vault counter's
 * increments), through appends, group commits, compactions, a close and a reopen. Then, for
 * every cut point in that log, each disk state a power cut there may leave (see
 * test/fixtures/power-loss.ts) is opened with the counter as it was, and must hold every
 * commit acknowledged before the cut, nothing out of order, and open without complaint
 * (no "rolled back", "tampered" or "counter mismatch" when only the power failed). The
 * states the opens themselves write are cut again (a second power cut during recovery).
 */
import { describe, expect, it } from 'vitest';
import {
  openDatabase,
  openDurableStore,
  requestResult,
  transactionDone,
  type DurableStore,
  type DurableStoreOptions,
  type IdbDatabase,
} from '../../endpoint/store/index.ts';
import { SimCounter, SimDisk, crashStates, type CrashState } from '../fixtures/power-loss.ts';

const DIR = '/data/store';
const KEY = new Uint8Array(32).fill(7);
const silent = { warn: () => undefined, info: () => undefined };

interface Commit {
  /** null: the upgrade that creates the database. */
  key: string | null;
  value: string;
  /** disk.ops.length when the commit was acknowledged, or null if it never was. */
  ackAt: number | null;
}

function valueFor(i: number): string {
  const size = [24, 600, 1500, 5000, 90, 12_000][i % 6] ?? 24;
  return `${String(i)}:`.padEnd(size, String.fromCharCode(97 + (i % 26)));
}

/** Commits to a store on `disk`, recording each and when it was acknowledged. */
class Driver {
  readonly commits: Commit[] = [];
  readonly disk: SimDisk;
  readonly counter: SimCounter;
  #n = 0;

  constructor() {
    this.disk = new SimDisk(new Map([['/data', null]]));
    this.counter = new SimCounter(this.disk, 0n);
  }

  open(extra: Partial<DurableStoreOptions> = {}): Promise<DurableStore> {
    return openDurableStore({
      dir: DIR,
      storeKey: KEY,
      counter: this.counter,
      fs: this.disk,
      logger: silent,
      ...extra,
    });
  }

  async kv(store: DurableStore): Promise<IdbDatabase> {
    const schema: Commit = { key: null, value: '', ackAt: null };
    const db = await openDatabase(store.indexedDB, 'test', 1, (db) => {
      this.commits.push(schema);
      db.createObjectStore('kv');
    });
    if (this.commits.includes(schema)) schema.ackAt = this.disk.ops.length;
    return db;
  }

  /** Resolves true once acknowledged, false if refused (only a full disk may refuse). */
  put(db: IdbDatabase): Promise<boolean> {
    const i = this.#n++;
    const key = `k${String(i).padStart(3, '0')}`;
    const commit: Commit = { key, value: valueFor(i), ackAt: null };
    this.commits.push(commit);
    const tx = db.transaction('kv', 'readwrite');
    const done = transactionDone(tx);
    tx.objectStore('kv').put(commit.value, key);
    return done.then(
      () => {
        commit.ackAt = this.disk.ops.length;
        return true;
      },
      (e: unknown) => {
        if (!/STORAGE_FULL/.test(String(e))) throw e;
        return false;
      },
    );
  }

  async burst(db: IdbDatabase, count: number): Promise<boolean[]> {
    return Promise.all(Array.from({ length: count }, () => this.put(db)));
  }
}

/** Appends, group commits, compactions (explicit, by count, by size, on close), reopens. */
async function ordinaryRun(d: Driver): Promise<void> {
  // Session 1: creation, appends, group commits, an explicit compaction and automatic ones
  // (by record count), and the compaction on close.
  const first = await d.open({ compactEvery: 9 });
  const db = await d.kv(first);
  for (let i = 0; i < 4; i++) await d.put(db);
  await d.burst(db, 4);
  await first.compact();
  for (let i = 0; i < 5; i++) await d.put(db);
  await d.burst(db, 6);
  await first.flush();
  for (let i = 0; i < 3; i++) await d.put(db);
  db.close();
  await first.close();

  // Session 2: reopen, appends, automatic compaction by size, a close that does not compact
  // (the journal keeps its records for the next open).
  const second = await d.open({ compactOnClose: false, compactBytes: 24_000 });
  const db2 = await d.kv(second);
  for (let i = 0; i < 6; i++) await d.put(db2);
  await d.burst(db2, 5);
  await second.flush();
  for (let i = 0; i < 2; i++) await d.put(db2);
  db2.close();
  await second.close();

  // Session 3: reopen onto that journal, a burst, an explicit compaction, a few more.
  const third = await d.open();
  const db3 = await d.kv(third);
  await d.burst(db3, 8);
  await third.compact();
  for (let i = 0; i < 3; i++) await d.put(db3);
  db3.close();
  await third.close();
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 2));
}

/** The disk fills up mid-run (a partial write, refused commits, a compaction without room). */
async function fullDiskRun(d: Driver): Promise<void> {
  const store = await d.open({ fullRetryMs: 5, compactOnClose: true });
  const db = await d.kv(store);
  for (let i = 0; i < 3; i++) await d.put(db);
  d.disk.capacity = d.disk.used() + 700; // part of the next group fits
  expect(await d.burst(db, 3)).toContain(false);
  expect(await d.put(db)).toBe(false);
  d.disk.capacity = Infinity;
  await until(() => !store.health().full);
  for (let i = 0; i < 2; i++) expect(await d.put(db)).toBe(true);
  // A compaction that finds no room for its snapshot, then appends that still fit.
  d.disk.capacity = d.disk.used() + 16_000; // the snapshot needs about 26 kB
  await expect(store.compact()).rejects.toMatchObject({ code: 'STORAGE_FULL' });
  expect(await d.put(db)).toBe(true);
  d.disk.capacity = Infinity;
  await store.compact();
  await d.put(db);
  db.close();
  await store.close();
}

interface Check {
  state: CrashState;
  /** Commits acknowledged before the cut: they must all be there. */
  required: number;
  /** Whether the commit a previous check made after recovering must be there too. */
  marker: boolean;
}

interface Outcome {
  problem: string | null;
  /** The disk after the check's session (for cutting it again), and its log's length. */
  disk: SimDisk;
  ended: number;
  /** disk.ops.length when the marker commit was acknowledged. */
  markerAt: number;
}

/** Written by each check once the store is open: recovery must leave it able to carry on. */
const MARKER = 'zz-after-recovery';

/**
 * Opens a crash state with the counter as it was, compares what is there with the commits,
 * then commits once more and closes (that session's log is cut again by the caller).
 */
async function check(commits: Commit[], { state, required, marker }: Check): Promise<Outcome> {
  const disk = new SimDisk(state.image);
  const counter = new SimCounter(disk, state.counter);
  const outcome = (problem: string | null, markerAt = Infinity): Outcome => ({
    problem,
    disk,
    ended: disk.ops.length,
    markerAt,
  });
  let store: DurableStore;
  try {
    store = await openDurableStore({
      dir: DIR,
      storeKey: KEY,
      counter,
      fs: disk,
      logger: silent,
      compactOnClose: false,
    });
  } catch (e) {
    const code = (e as { code?: string }).code ?? 'error';
    return outcome(`open failed: ${code}: ${(e as Error).message}`);
  }
  try {
    let upgraded = false;
    const db = await openDatabase(store.indexedDB, 'test', 1, (db) => {
      upgraded = true;
      db.createObjectStore('kv');
    });
    const tx = db.transaction('kv', 'readonly');
    const [keys, values] = await Promise.all([
      requestResult(tx.objectStore('kv').getAllKeys()),
      requestResult(tx.objectStore('kv').getAll()),
    ]);
    const found = new Map(keys.map((k, i) => [k, values[i]]));
    const hadMarker = found.delete(MARKER);
    // What is there must be the first m commits, m >= required, with their values.
    let m = 0;
    for (const commit of commits) {
      const present = commit.key === null ? !upgraded : found.has(commit.key);
      if (!present) break;
      if (commit.key !== null && found.get(commit.key) !== commit.value) {
        return outcome(`${commit.key} has another value`);
      }
      m++;
    }
    const prefix = new Set(commits.slice(0, m).map((c) => c.key));
    const extra = [...found.keys()].map(String).filter((k) => !prefix.has(k));
    if (extra.length > 0) {
      return outcome(`out of order: ${extra.join(',')} present after a gap at ${m}`);
    }
    if (m < required) {
      const lost = commits[m]?.key ?? 'the database';
      return outcome(`lost acknowledged commits: ${required - m} (from ${lost})`);
    }
    if (marker && !hadMarker) return outcome('lost the commit acknowledged after recovery');
    // Carry on after recovery: one more commit, durable before the close.
    const write = db.transaction('kv', 'readwrite');
    const written = transactionDone(write);
    write.objectStore('kv').put('after', MARKER);
    await written;
    const markerAt = disk.ops.length;
    db.close();
    return outcome(null, markerAt);
  } catch (e) {
    return outcome(`failed after opening: ${(e as Error).message}`);
  } finally {
    await store.close();
  }
}

/**
 * Opens every distinct crash state of every cut point of `d`'s log and checks it, then cuts
 * each check's own session again. Returns the failures; prints a one-line summary.
 */
async function everyCut(name: string, d: Driver): Promise<string[]> {
  const started = Date.now();
  const { disk, commits } = d;
  const requiredAt = (cut: number): number =>
    commits.filter((c) => c.ackAt !== null && c.ackAt <= cut).length;
  const distinct = new Map<string, Check>();
  let enumerated = 0;
  for (let cut = 0; cut <= disk.ops.length; cut++) {
    for (const state of crashStates(disk, cut)) {
      enumerated++;
      const required = requiredAt(cut);
      const seen = distinct.get(state.key);
      if (!seen || required > seen.required) {
        distinct.set(state.key, { state, required, marker: false });
      }
    }
  }
  const firstLevel = distinct.size;

  const failures: string[] = [];
  const checked = new Set<string>();
  const sessions: { outcome: Outcome; required: number }[] = [];
  for (const [key, item] of distinct) {
    checked.add(key);
    const outcome = await check(commits, item);
    if (outcome.problem) failures.push(`${item.state.label} => ${outcome.problem}`);
    else sessions.push({ outcome, required: item.required });
  }
  // A second power cut anywhere in each check's session: while the open recovers (truncating
  // a torn tail, finishing or discarding a compaction, creating the store) and while it
  // commits once more.
  let secondLevel = 0;
  for (const { outcome, required } of sessions) {
    for (let cut = 1; cut <= outcome.ended; cut++) {
      for (const state of crashStates(outcome.disk, cut)) {
        enumerated++;
        if (checked.has(state.key)) continue;
        checked.add(state.key);
        secondLevel++;
        const marker = cut >= outcome.markerAt;
        const again = await check(commits, { state, required, marker });
        if (again.problem) failures.push(`cut again, ${state.label} => ${again.problem}`);
      }
    }
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const acked = commits.filter((c) => c.ackAt !== null).length;
  console.log(
    `power loss (${name}): ${disk.ops.length} logged operations, ${commits.length} commits ` +
      `(${acked} acknowledged); ${enumerated} crash states enumerated, ${checked.size} ` +
      `distinct states opened (${firstLevel} cut from the run, ${secondLevel} from the ` +
      `checks' own sessions cut again); ${failures.length} failures; ${seconds} s`,
  );
  // The kinds of failure (by what went wrong), then a few examples.
  const kinds = new Map<string, number>();
  for (const failure of failures) {
    const kind = (failure.split(' => ')[1] ?? failure).replace(/\d+/g, 'N');
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  for (const [kind, count] of kinds) console.log(`  ${count} x ${kind}`);
  for (const failure of failures.slice(0, 5)) console.log(`  e.g. ${failure}`);
  return failures;
}

describe('power loss', () => {
  it('loses no acknowledged commit and always opens, at every cut point', async () => {
    const d = new Driver();
    await ordinaryRun(d);
    expect(d.commits.every((c) => c.ackAt !== null)).toBe(true);
    expect(await everyCut('appends, compactions, reopens', d)).toEqual([]);
  }, 120_000);

  it('the same through a full disk and its recovery', async () => {
    const d = new Driver();
    await fullDiskRun(d);
    expect(d.commits.some((c) => c.ackAt === null)).toBe(true);
    expect(await everyCut('full disk', d)).toEqual([]);
  }, 120_000);
});
