import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDevVault } from '../../keyvault/dev/index.ts';
import { makeTempDir, repoRoot } from '../fixtures/process.ts';

/**
 * The durable store with the real wasm crypto engine, across real processes: every child is
 * a fresh `node` (nothing cached in memory), started with the repository as its working
 * directory so the inline module resolves the project's files and packages. The vault is the
 * dev backend (a real Vault with a file counter), provisioned once by the test.
 */
const CHILD = String.raw`
import { randomBytes, randomInt } from 'node:crypto';
import { openDevVault } from './keyvault/dev/index.ts';
import { openDatabase, openDurableStore, requestResult, transactionDone } from './endpoint/store/index.ts';

const [mode, dir, vaultDir] = process.argv.slice(1);
const say = (line) => process.stdout.write(line + '\n');
const vault = await openDevVault({ backend: 'dev', stateDir: vaultDir, allowInsecureDevBackend: true });
const storeKey = await vault.storeKey();
const store = await openDurableStore({
  dir,
  storeKey,
  counter: { read: () => vault.counterRead(), increment: () => vault.counterIncrement() },
  compactEvery: 15,
  compactOnClose: mode !== 'olm-no-compact',
});
const epoch = String(store.stats().epoch);

if (mode.startsWith('olm')) {
  const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
  store.install();
  await wasm.initAsync();
  const handle = await wasm.StoreHandle.openWithKey('mte', storeKey);
  const machine = await wasm.OlmMachine.initFromStore(
    new wasm.UserId('@a:example'), new wasm.DeviceId('DEVICE'), handle);
  const ids = machine.identityKeys;
  say('keys ' + JSON.stringify({ ed25519: ids.ed25519.toBase64(), curve25519: ids.curve25519.toBase64(), epoch }));
  if (mode === 'olm-kill') {
    setInterval(() => undefined, 1000);
  } else {
    machine.close();
    handle.free();
    await store.close();
    await vault.close();
  }
} else {
  // Transaction n writes n/a, n/b, n/c, deletes (n-5)/c and sets "last" = n: any partial
  // transaction, lost commit or resurrected delete shows in the check below.
  const db = await openDatabase(store.indexedDB, 'crash', 1, (db) => { db.createObjectStore('kv'); });
  const tx = db.transaction('kv', 'readonly');
  const [keys, values] = await Promise.all([
    requestResult(tx.objectStore('kv').getAllKeys()),
    requestResult(tx.objectStore('kv').getAll()),
  ]);
  const map = new Map(keys.map((k, i) => [k, values[i]]));
  const last = map.get('last') ?? 0;
  const problems = [];
  let expected = last > 0 ? 1 : 0;
  for (let m = 1; m <= last; m++) {
    for (const part of ['a', 'b', 'c']) {
      const want = part !== 'c' || m > last - 5;
      const got = map.get(m + '/' + part);
      if (want) expected++;
      if (want !== (got !== undefined)) problems.push(m + '/' + part + (want ? ' missing' : ' present'));
      else if (got && (got.n !== m || got.part !== part)) problems.push(m + '/' + part + ' wrong');
    }
  }
  if (map.size !== expected) problems.push('size ' + map.size + ' != ' + expected);
  say('start ' + last + ' ' + (problems.length ? 'bad:' + problems.slice(0, 5).join(',') : 'ok') + ' epoch=' + epoch);
  if (mode === 'verify') {
    db.close();
    await store.close();
    await vault.close();
  } else {
    for (let n = last + 1; ; n++) {
      const w = db.transaction('kv', 'readwrite');
      const done = transactionDone(w);
      const kv = w.objectStore('kv');
      kv.put({ n, part: 'a', payload: randomBytes(randomInt(0, 4096)) }, n + '/a');
      kv.put({ n, part: 'b' }, n + '/b');
      kv.put({ n, part: 'c' }, n + '/c');
      if (n > 5) kv.delete((n - 5) + '/c');
      kv.put(n, 'last');
      await done;
      say('committed ' + n);
    }
  }
}
`;

interface Child {
  process: ChildProcessWithoutNullStreams;
  /** Resolves with the first stdout line matching `pattern`. */
  line(pattern: RegExp): Promise<string>;
  lastCommitted(): number | null;
  exited: Promise<number | string>;
  stderr(): string;
}

const children = new Set<ChildProcessWithoutNullStreams>();

function startChild(mode: string, dir: string, vaultDir: string): Child {
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, mode, dir, vaultDir], {
    cwd: repoRoot,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.add(child);
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  let committed: number | null = null;
  let err = '';
  let buffered = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      const m = /^committed (\d+)$/.exec(line);
      if (m) committed = Number(m[1]);
      for (const w of waiters.filter((x) => x.pattern.test(line))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  child.stderr.on('data', (chunk: Buffer) => {
    err += chunk.toString();
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve(code ?? signal ?? 'unknown');
    });
  });
  return {
    process: child,
    exited,
    stderr: () => err,
    lastCommitted: () => committed,
    line(pattern) {
      const seen = lines.find((l) => pattern.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      return Promise.race([
        new Promise<string>((resolve) => waiters.push({ pattern, resolve })),
        exited.then((code) => {
          throw new Error(`child exited (${code}) before ${pattern}; stderr:\n${err.slice(-2000)}`);
        }),
      ]);
    },
  };
}

async function killHard(child: Child): Promise<void> {
  child.process.kill('SIGKILL');
  // Wait for the exit so the process is reaped: its LOCK pid is then truly gone.
  expect(await child.exited).toBe('SIGKILL');
}

let root: string;
let vaultDir: string;
/** Each store its own vault: a second store on a counter that moved is STORE_MISSING. */
let crashVaultDir: string;
beforeAll(async () => {
  root = await makeTempDir('durable-store-olm');
  vaultDir = join(root, 'vault');
  crashVaultDir = join(root, 'vault-crash');
  for (const stateDir of [vaultDir, crashVaultDir]) {
    const vault = await openDevVault({ backend: 'dev', stateDir, allowInsecureDevBackend: true });
    await vault.provision();
    await vault.close();
  }
});
afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await rm(root, { recursive: true, force: true });
});

describe('durable store with the wasm OlmMachine, across processes', () => {
  it('keeps the device identity across new processes, journal replay, snapshots and kill -9', async () => {
    const dir = join(root, 'olm');
    const keysOf = async (mode: string): Promise<{ ed25519: string; curve25519: string }> => {
      const child = startChild(mode, dir, vaultDir);
      const line = await child.line(/^keys /);
      if (mode === 'olm-kill') await killHard(child);
      else expect(await child.exited, child.stderr()).toBe(0);
      const { ed25519, curve25519 } = JSON.parse(line.slice(5)) as Record<string, string>;
      return { ed25519: ed25519 ?? '', curve25519: curve25519 ?? '' };
    };
    // Created, then reopened from the journal alone, then from a snapshot (the second run
    // compacts on close), then killed while open, then reopened once more.
    const first = await keysOf('olm-no-compact');
    expect(first.ed25519).toMatch(/^[A-Za-z0-9+/]{43}$/);
    expect(await keysOf('olm')).toEqual(first);
    expect(await keysOf('olm-kill')).toEqual(first);
    expect(await keysOf('olm')).toEqual(first);
  });

  it('survives kill -9 at random points: every committed transaction, nothing half-applied', async () => {
    const dir = join(root, 'crash');
    let committed = 0;
    const epochs = new Set<string>();
    let midCompaction = 0;
    const kills = 24;
    for (let i = 0; i < kills; i++) {
      const child = startChild('loop', dir, crashVaultDir);
      const start = await child.line(/^start /);
      const [, present, status, epoch] = /^start (\d+) (\S+) epoch=(\d+)$/.exec(start) ?? [];
      expect(status, `after kill ${i}: ${start}`).toBe('ok');
      // Everything reported committed is there; at most the one transaction whose commit was
      // durable when the kill came, before its line was printed, is there too.
      expect(Number(present)).toBeGreaterThanOrEqual(committed);
      expect(Number(present)).toBeLessThanOrEqual(committed + 1);
      epochs.add(epoch ?? '');
      // Let it commit a little, then kill at a random moment (often mid-write or mid-compaction).
      await child.line(/^committed /);
      await sleep(randomInt(0, 60));
      await killHard(child);
      committed = child.lastCommitted() ?? Number(present);
      if (existsSync(join(dir, 'snapshot.next'))) midCompaction++;
    }
    const verify = startChild('verify', dir, crashVaultDir);
    const final = await verify.line(/^start /);
    expect(await verify.exited, verify.stderr()).toBe(0);
    expect(final).toMatch(/^start \d+ ok /);
    expect(Number(/^start (\d+)/.exec(final)?.[1])).toBeGreaterThanOrEqual(committed);
    // Compactions happened between (and during) the kills, so epochs moved on.
    expect(epochs.size).toBeGreaterThan(3);
    console.info(
      `durable store: ${kills} kills, ${committed} transactions committed, ` +
        `${midCompaction} kills left an unfinished compaction behind`,
    );
  });
});
