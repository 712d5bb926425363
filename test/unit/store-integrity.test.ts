/**
 * The durable store's integrity: no acknowledged record is ever dropped as a "torn
 * tail" (every flipped bit of the journal is refused, or, only in the last write, dropped and
 * reported as what it is); the store is bound to its Matrix identity; a missing store is an
 * error, not a new device; the directory must be private (owner, modes, no symlinks). The
 * vault's state directory gets the same file hygiene.
 */
import {
  chmod,
  chown,
  lstat,
  mkdir,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { privateDirProblems } from '../../keyvault/common/hygiene.ts';
import { openVault } from '../../keyvault/open.ts';
import { VaultCode } from '../../keyvault/vault.ts';
import { nodeFs } from '../../endpoint/store/fs.ts';
import {
  StoreCode,
  birthRecordPath,
  openDatabase,
  openDurableStore,
  requestResult,
  resetDurableStore,
  transactionDone,
  type DurableStore,
  type DurableStoreOptions,
  type IdbDatabase,
  type StoreCounter,
} from '../../endpoint/store/index.ts';
import { makeTempDir } from '../fixtures/process.ts';

let root: string;
beforeAll(async () => {
  root = await makeTempDir('store-integrity');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
const freshDir = (): string => join(root, `store-${n++}`, 'store');
const KEY = new Uint8Array(32).fill(7);

class MemoryCounter implements StoreCounter {
  value: bigint;
  constructor(start = 0n) {
    this.value = start;
  }
  read(): Promise<bigint> {
    return Promise.resolve(this.value);
  }
  increment(): Promise<bigint> {
    return Promise.resolve(++this.value);
  }
}

class Log {
  warnings: string[] = [];
  warn(m: string): void {
    this.warnings.push(m);
  }
  info(): void {
    // not needed
  }
}

function open(
  dir: string,
  counter: StoreCounter,
  extra: Partial<DurableStoreOptions> = {},
): Promise<DurableStore> {
  return openDurableStore({ dir, storeKey: KEY, counter, compactOnClose: false, ...extra });
}

function kvDb(store: DurableStore): Promise<IdbDatabase> {
  return openDatabase(store.indexedDB, 'test', 1, (db) => {
    db.createObjectStore('kv');
  });
}

async function put(db: IdbDatabase, key: string, value: unknown): Promise<void> {
  const tx = db.transaction('kv', 'readwrite');
  const done = transactionDone(tx);
  tx.objectStore('kv').put(value, key);
  await done;
}

async function keysIn(store: DurableStore): Promise<string[]> {
  const db = await kvDb(store);
  const tx = db.transaction('kv', 'readonly');
  const keys = await requestResult(tx.objectStore('kv').getAllKeys());
  db.close();
  return keys.map(String);
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<Error> {
  const error = await promise.then(
    () => new Error('resolved'),
    (e: unknown) => e as Error,
  );
  expect(error).toMatchObject({ code });
  return error;
}

const JOURNAL_HEADER = 48;
const RECORD_HEADER = 16;
const SECTOR = 512;

interface Frame {
  offset: number;
  size: number;
  group: number;
}

/** The records of a journal file, from their (trusted, undamaged) length and group fields. */
function frames(journal: Buffer): Frame[] {
  const out: Frame[] = [];
  for (let at = JOURNAL_HEADER; at < journal.length;) {
    const size = RECORD_HEADER + journal.readUInt32BE(at);
    out.push({ offset: at, size, group: journal.readUInt32BE(at + 4) });
    at += size;
  }
  return out;
}

const TORN = /^store: dropped \d+ bytes of an unacknowledged write at the end of the journal$/;

/** A store with six records, each its own acknowledged write (the database's creation first). */
async function sixRecords(): Promise<{ dir: string; counter: MemoryCounter; journal: Buffer }> {
  const dir = freshDir();
  const counter = new MemoryCounter();
  const store = await open(dir, counter);
  const db = await kvDb(store);
  const sizes = [600, 1500, 90, 3000, 2000];
  for (const [i, size] of sizes.entries()) await put(db, `k${i}`, 'x'.repeat(size));
  db.close();
  await store.close();
  const journal = await readFile(join(dir, 'journal'));
  expect(frames(journal)).toHaveLength(6);
  return { dir, counter, journal };
}

/** Opens with `bytes` as the journal; restores the original afterwards. */
async function openWith(
  dir: string,
  counter: StoreCounter,
  original: Buffer,
  bytes: Buffer,
): Promise<{ code: string | null; keys: string[]; warnings: string[] }> {
  const path = join(dir, 'journal');
  await writeFile(path, bytes);
  const log = new Log();
  try {
    const store = await open(dir, counter, { logger: log });
    const keys = await keysIn(store);
    await store.close();
    return { code: null, keys, warnings: log.warnings };
  } catch (e) {
    return { code: (e as { code?: string }).code ?? 'error', keys: [], warnings: log.warnings };
  } finally {
    await writeFile(path, original);
  }
}

describe('journal: torn or tampered', () => {
  it('refuses every flipped bit of every record header, and of a sample of body bits; only the last write may be dropped, and says so', async () => {
    const { dir, counter, journal } = await sixRecords();
    const records = frames(journal);
    const all = ['k0', 'k1', 'k2', 'k3', 'k4'];
    let refused = 0;
    let dropped = 0;
    for (const [index, frame] of records.entries()) {
      const last = index === records.length - 1;
      const bits: number[] = [];
      for (let bit = 0; bit < RECORD_HEADER * 8; bit++) bits.push(frame.offset * 8 + bit);
      // A sample of the body: nonce, ciphertext, tag, spread over the record.
      for (let i = 0; i < 24; i++) {
        const byte = frame.offset + RECORD_HEADER + Math.floor((i * (frame.size - 17)) / 23);
        bits.push(byte * 8 + (i % 8));
      }
      for (const bit of bits) {
        const copy = Buffer.from(journal);
        const byte = Math.floor(bit / 8);
        copy[byte] = (copy[byte] ?? 0) ^ (1 << (bit % 8));
        const result = await openWith(dir, counter, journal, copy);
        const where = `record ${index}, bit ${bit - frame.offset * 8}`;
        if (result.code !== null) {
          expect(result.code, where).toBe(StoreCode.Tampered);
          refused++;
          continue;
        }
        // Opened: only possible for the last write, which is then dropped and reported.
        const inHeader = bit < (frame.offset + RECORD_HEADER) * 8;
        expect(last && !inHeader, `${where} opened`).toBe(true);
        expect(result.keys, where).toEqual(all.slice(0, 4));
        expect(
          result.warnings.some((w) => TORN.test(w)),
          where,
        ).toBe(true);
        dropped++;
      }
    }
    expect(refused + dropped).toBe(records.length * (RECORD_HEADER * 8 + 24));
    expect(dropped).toBeLessThanOrEqual(1);
    // Intact again, everything is there.
    expect((await openWith(dir, counter, journal, journal)).keys).toEqual(all);
  }, 120_000);

  it('refuses a flipped bit anywhere in the journal file header', async () => {
    const { dir, counter, journal } = await sixRecords();
    for (let bit = 0; bit < JOURNAL_HEADER * 8; bit++) {
      const copy = Buffer.from(journal);
      copy[bit >> 3] = (copy[bit >> 3] ?? 0) ^ (1 << (bit % 8));
      expect((await openWith(dir, counter, journal, copy)).code, `bit ${bit}`).toBe(
        StoreCode.Tampered,
      );
    }
  }, 60_000);

  it('still opens real torn tails, dropping only the last write and saying so', async () => {
    const { dir, counter, journal } = await sixRecords();
    const records = frames(journal);
    const last = records.at(-1) as Frame;
    const end = journal.length;
    const zeroFrom = (from: number): Buffer => {
      const copy = Buffer.from(journal);
      copy.fill(0, from);
      return copy;
    };
    const lastSector = Math.floor((end - 1) / SECTOR) * SECTOR;
    const middleSector = Math.ceil((last.offset + RECORD_HEADER) / SECTOR) * SECTOR;
    expect(lastSector).toBeGreaterThan(last.offset + RECORD_HEADER);
    expect(middleSector + SECTOR).toBeLessThan(lastSector);
    const middleZero = Buffer.from(journal);
    middleZero.fill(0, middleSector, middleSector + SECTOR);
    const cases: [string, Buffer][] = [
      ['cut in the middle of the last record', journal.subarray(0, last.offset + 700)],
      ['cut inside the last record header', journal.subarray(0, last.offset + 7)],
      ['the last sector never written (zeros)', zeroFrom(lastSector)],
      ['a middle sector of the last write never written', middleZero],
      ['the last record unwritten from where the write began', zeroFrom(last.offset)],
    ];
    for (const [what, bytes] of cases) {
      const result = await openWith(dir, counter, journal, bytes);
      expect(result.code, what).toBeNull();
      expect(result.keys, what).toEqual(['k0', 'k1', 'k2', 'k3']);
      expect(
        result.warnings.some((w) => TORN.test(w)),
        what,
      ).toBe(true);
    }
    // The file extended with zeros past the last record (size grew, data never landed):
    // nothing acknowledged is lost.
    const extended = Buffer.concat([journal, Buffer.alloc(300)]);
    const result = await openWith(dir, counter, journal, extended);
    expect(result.keys).toEqual(['k0', 'k1', 'k2', 'k3', 'k4']);
    expect(result.warnings).toContainEqual(
      'store: dropped 300 bytes of an unacknowledged write at the end of the journal',
    );
  });

  it('refuses zeros that reach back into an earlier, acknowledged write', async () => {
    const { dir, counter, journal } = await sixRecords();
    const records = frames(journal);
    const [, , , , before, last] = records as [Frame, Frame, Frame, Frame, Frame, Frame];
    // From a sector boundary inside the record before the last one, to the end of the file.
    const sector = Math.ceil((before.offset + RECORD_HEADER + 1) / SECTOR) * SECTOR;
    expect(sector).toBeLessThan(last.offset);
    const zeroed = Buffer.from(journal);
    zeroed.fill(0, sector);
    expect((await openWith(dir, counter, journal, zeroed)).code).toBe(StoreCode.Tampered);
    // And a whole zero sector inside an earlier record, with everything after it intact.
    const inner = Math.ceil((records[4]?.offset ?? 0) / SECTOR) * SECTOR;
    const hole = Buffer.from(journal);
    hole.fill(0, inner, inner + SECTOR);
    expect((await openWith(dir, counter, journal, hole)).code).toBe(StoreCode.Tampered);
  });

  it('a group write torn inside the group, then new writes after it, opens again', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    let store = await open(dir, counter);
    const names = Array.from({ length: 6 }, (_, i) => `s${i}`);
    const wide = await openDatabase(store.indexedDB, 'wide', 1, (created) => {
      for (const name of names) created.createObjectStore(name);
    });
    let db = await kvDb(store);
    await put(db, 'first', 1);
    // Transactions on separate stores commit while an fsync runs: they share the next write
    // (group commit), one record each.
    await Promise.all(
      names.map(async (name) => {
        const tx = wide.transaction(name, 'readwrite');
        const done = transactionDone(tx);
        tx.objectStore(name).put('y'.repeat(300), 'v');
        await done;
      }),
    );
    await put(db, 'g5', 2);
    wide.close();
    db.close();
    await store.close();
    const journal = await readFile(join(dir, 'journal'));
    const records = frames(journal);
    const group = records.find((r) => r.group > r.size);
    expect(group, 'a write of several records').toBeDefined();
    // Cut inside that group's last record: the group is then the torn last write... once the
    // records after it (g5's) are cut off too.
    const end = (group?.offset ?? 0) + (group?.group ?? 0);
    const lastOfGroup = records.filter((r) => r.offset < end).at(-1) as Frame;
    await truncate(join(dir, 'journal'), lastOfGroup.offset + 100);
    store = await open(dir, counter);
    const kept = await keysIn(store);
    expect(kept).not.toContain('g5');
    expect(kept).toContain('first');
    db = await kvDb(store);
    await put(db, 'after', 2);
    db.close();
    await store.close();
    store = await open(dir, counter);
    expect(await keysIn(store)).toEqual([...kept, 'after'].sort());
    await store.close();
  });
});

describe('identity', () => {
  it('records the configured user and, after login, the device; refuses another account', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    let store = await open(dir, counter, { identity: { userId: 'alice' } });
    expect(store.identity).toEqual({ userId: 'alice' });
    const before = counter.value;
    await store.bindIdentity({ userId: '@alice:example.org', deviceId: 'DEVICE1' });
    expect(counter.value).toBe(before + 1n); // sealed in a new snapshot
    await store.bindIdentity({ userId: '@alice:example.org', deviceId: 'DEVICE1' });
    expect(counter.value).toBe(before + 1n); // nothing new: no compaction
    await expectCode(
      store.bindIdentity({ userId: '@alice:example.org', deviceId: 'OTHER' }),
      StoreCode.WrongIdentity,
    );
    await store.close();

    for (const userId of ['alice', 'Alice', '@alice:example.org']) {
      store = await open(dir, counter, { identity: { userId } });
      expect(store.identity).toEqual({ userId: '@alice:example.org', deviceId: 'DEVICE1' });
      await store.close();
    }
    for (const userId of ['bob', '@alice:elsewhere.org', '@bob:example.org']) {
      const error = await expectCode(
        open(dir, counter, { identity: { userId } }),
        StoreCode.WrongIdentity,
      );
      expect(error.message).toContain('@alice:example.org');
      expect(error.message).toContain(userId);
      expect(error.message).not.toContain('\n');
    }
    await expectCode(
      open(dir, counter, { identity: { userId: 'alice', deviceId: 'OTHER' } }),
      StoreCode.WrongIdentity,
    );
    // Without an identity to check (tools, tests), the recorded one stays.
    store = await open(dir, counter);
    expect(store.identity).toEqual({ userId: '@alice:example.org', deviceId: 'DEVICE1' });
    await store.close();
  });

  it("refuses another account's store even with that account's key (the @carol case)", async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const carol = await open(dir, counter, { identity: { userId: '@carol:example.org' } });
    await carol.bindIdentity({ userId: '@carol:example.org', deviceId: 'CAROLDEV' });
    await carol.close();
    const error = await expectCode(
      open(dir, counter, { identity: { userId: '@alice:example.org' } }),
      StoreCode.WrongIdentity,
    );
    expect(error.message).toMatch(/@carol:example\.org.*@alice:example\.org/);
  });

  it('keeps the identity sealed: it is inside the encrypted snapshot, not in clear', async () => {
    const dir = freshDir();
    const store = await open(dir, new MemoryCounter(), {
      identity: { userId: '@dora:example.org' },
    });
    await store.bindIdentity({ userId: '@dora:example.org', deviceId: 'DORADEVICE' });
    await store.close();
    for (const name of await readdir(dir)) {
      const text = (await readFile(join(dir, name))).toString('latin1');
      expect(text.includes('dora'), name).toBe(false);
    }
  });

  it('refuses a malformed identity option', async () => {
    await expectCode(
      open(freshDir(), new MemoryCounter(), { identity: { userId: '' } }),
      StoreCode.BadOptions,
    );
  });
});

describe('a missing store', () => {
  it('is refused once the counter moved past its start, and never silently recreated', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const store = await open(dir, counter, { compactOnClose: true });
    await put(await kvDb(store), 'a', 1);
    await store.close();
    expect(counter.value).toBe(2n);
    await rm(dir, { recursive: true });
    const error = await expectCode(open(dir, counter), StoreCode.Missing);
    expect(error.message).toContain('counter is at 2');
    expect(error.message).toContain('reset-store');
    expect(counter.value).toBe(2n);
    // Explicitly: a new store at the counter's epoch; its next deletion is refused again.
    const fresh = await open(dir, counter, { allowFresh: true });
    expect(fresh.stats().epoch).toBe(3n);
    expect(await keysIn(fresh)).toEqual([]);
    await fresh.close();
    await rm(dir, { recursive: true });
    await expectCode(open(dir, counter), StoreCode.Missing);
  });

  it('is refused by the birth record where the counter cannot tell (a TPM counter)', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter(17n); // a TPM counter starts wherever its TPM was
    const store = await open(dir, counter, { counterStart: null });
    await store.close();
    expect(JSON.parse(await readFile(birthRecordPath(dir), 'utf8'))).toMatchObject({
      createdAtEpoch: '18',
    });
    expect((await stat(birthRecordPath(dir))).mode & 0o777).toBe(0o600);
    await rm(dir, { recursive: true });
    const error = await expectCode(open(dir, counter, { counterStart: null }), StoreCode.Missing);
    expect(error.message).toContain(birthRecordPath(dir));
    // The residual: with the record gone too, nothing shows that a store existed.
    await rm(birthRecordPath(dir));
    await (await open(dir, counter, { counterStart: null })).close();
  });

  it('is replaced on purpose by resetDurableStore: old store moved aside, audit hook first', async () => {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const store = await open(dir, counter, { identity: { userId: 'erin' } });
    await put(await kvDb(store), 'old', 1);
    // While it is open, a reset is refused (the store's lock).
    await expectCode(
      resetDurableStore({ dir, storeKey: KEY, counter, identity: { userId: 'erin' } }),
      StoreCode.Locked,
    );
    await store.close();
    const steps: string[] = [];
    const result = await resetDurableStore({
      dir,
      storeKey: KEY,
      counter,
      identity: { userId: 'erin' },
      beforeChange: async () => {
        steps.push(
          `audit (store there: ${String(await lstat(join(dir, 'snapshot')).then(() => true))})`,
        );
      },
    });
    expect(steps).toEqual(['audit (store there: true)']);
    expect(result.movedTo).toMatch(/store\.reset-/);
    expect(await readdir(result.movedTo ?? '')).toEqual(
      expect.arrayContaining(['journal', 'snapshot']),
    );
    const fresh = await open(dir, counter, { identity: { userId: 'erin' } });
    expect(fresh.stats().epoch).toBe(result.epoch);
    expect(await keysIn(fresh)).toEqual([]);
    await fresh.close();
    // A failing audit hook changes nothing.
    await expectCode(
      resetDurableStore({
        dir,
        storeKey: KEY,
        counter,
        beforeChange: () =>
          Promise.reject(Object.assign(new Error('no log'), { code: 'AUDIT_FAILED' })),
      }),
      'AUDIT_FAILED',
    );
    expect(await readdir(dir)).toEqual(expect.arrayContaining(['journal', 'snapshot']));
  });
});

describe('file hygiene', () => {
  async function healthy(): Promise<{ dir: string; counter: MemoryCounter }> {
    const dir = freshDir();
    const counter = new MemoryCounter();
    const store = await open(dir, counter);
    await put(await kvDb(store), 'a', 1);
    await store.close();
    return { dir, counter };
  }

  it('creates a 0700 directory of 0600 files', async () => {
    const { dir } = await healthy();
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    for (const name of await readdir(dir)) {
      expect((await stat(join(dir, name))).mode & 0o777, name).toBe(0o600);
    }
    expect(await privateDirProblems(dir)).toEqual([]);
  });

  it('refuses a directory open to others, with the chmod that fixes it', async () => {
    const { dir, counter } = await healthy();
    await chmod(dir, 0o777);
    const error = await expectCode(open(dir, counter), StoreCode.UnsafeFiles);
    expect(error.message).toContain(`chmod 700 ${dir}`);
    expect(error.message).not.toContain('\n');
    await chmod(dir, 0o700);
    await (await open(dir, counter)).close();
  });

  it('refuses a file open to others', async () => {
    const { dir, counter } = await healthy();
    await chmod(join(dir, 'journal'), 0o666);
    const error = await expectCode(open(dir, counter), StoreCode.UnsafeFiles);
    expect(error.message).toContain(`chmod 600 ${join(dir, 'journal')}`);
    await chmod(join(dir, 'journal'), 0o600);
    await (await open(dir, counter)).close();
  });

  it('refuses a symlinked directory (a copy elsewhere) and a symlinked journal', async () => {
    const { dir, counter } = await healthy();
    const elsewhere = `${dir}-elsewhere`;
    await rename(dir, elsewhere);
    await symlink(elsewhere, dir);
    const error = await expectCode(open(dir, counter), StoreCode.UnsafeFiles);
    expect(error.message).toContain(`${dir} is a symbolic link`);
    await rm(dir);
    await rename(elsewhere, dir);

    const journal = join(dir, 'journal');
    await rename(journal, `${dir}-journal`);
    await symlink(`${dir}-journal`, journal);
    const linked = await expectCode(open(dir, counter), StoreCode.UnsafeFiles);
    expect(linked.message).toContain(`remove the symlink ${journal}`);
    // And the store's own opens do not follow one either (O_NOFOLLOW).
    await expect(nodeFs.open(journal, 'r')).rejects.toMatchObject({ code: 'ELOOP' });
    await expect(nodeFs.readFile(journal)).rejects.toMatchObject({ code: 'ELOOP' });
  });

  it('refuses a directory or file owned by another user', async () => {
    const { dir, counter } = await healthy();
    const me = process.getuid?.() ?? 0;
    await chown(dir, 65534, 65534);
    const error = await expectCode(open(dir, counter), StoreCode.UnsafeFiles);
    expect(error.message).toContain(`owned by uid 65534`);
    expect(error.message).toContain(`chown ${me} ${dir}`);
    await chown(dir, me, me);
    await chown(join(dir, 'snapshot'), 65534, 65534);
    await expectCode(open(dir, counter), StoreCode.UnsafeFiles);
    await chown(join(dir, 'snapshot'), me, me);
    await (await open(dir, counter)).close();
  });

  it("as root, a vault state directory owned wholly by the compartment's user opens; mixed ownership does not", async () => {
    if (process.getuid?.() !== 0) return; // the rule is root's only
    const stateDir = join(root, `vault-${n++}`);
    const config = { backend: 'dev', stateDir, allowInsecureDevBackend: true } as const;
    const vault = await openVault(config);
    await vault.provision();
    await vault.close();
    const files = await readdir(stateDir);
    await chown(stateDir, 65534, 65534);
    for (const name of files) await chown(join(stateDir, name), 65534, 65534);
    await (await openVault(config)).close(); // an admin tool on a deployed vault
    await chown(join(stateDir, files[0] ?? ''), 0, 0);
    const error = await expectCode(openVault(config), VaultCode.UnsafeFiles);
    expect(error.message).toContain('not by uid 65534');
  });

  it("applies the same rules to the vault's state directory, and provisioning meets them", async () => {
    const stateDir = join(root, `vault-${n++}`);
    const config = { backend: 'dev', stateDir, allowInsecureDevBackend: true } as const;
    const vault = await openVault(config);
    await vault.provision();
    await vault.close();
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    for (const name of await readdir(stateDir)) {
      expect((await stat(join(stateDir, name))).mode & 0o777, name).toBe(0o600);
    }
    await (await openVault(config)).close();
    await chmod(stateDir, 0o755);
    const error = await expectCode(openVault(config), VaultCode.UnsafeFiles);
    expect(error.message).toContain(`chmod 700 ${stateDir}`);
    await chmod(stateDir, 0o700);
    const [file] = await readdir(stateDir);
    await chmod(join(stateDir, file ?? ''), 0o644);
    await expectCode(openVault(config), VaultCode.UnsafeFiles);
    await chmod(join(stateDir, file ?? ''), 0o600);
    await mkdir(join(root, 'not-a-vault'), { recursive: true });
    await (await openVault(config)).close();
  });
});
