import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TpmConfig } from '../../keyvault/config.ts';
import {
  COUNTER_INDEX_RANGE,
  type TpmVaultOptions,
  openTpmVault,
} from '../../keyvault/tpm/backend.ts';
import {
  COUNTER_ATTRIBUTES,
  type NvRef,
  TPMA_NV,
  TPM_RH,
  TpmClient,
  commands,
  passwordSession,
} from '../../keyvault/tpm/index.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';
import { type Swtpm, startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// Several vaults on one TPM, as several endpoints on one machine (or another tenant) have
// them: each keeps its own counter and its own blobs, and nobody else's index or blob is ever
// taken for its own. One swtpm for the whole file.
const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm());
const PCR = 16;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-tpm-shared-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(name: string, extra: Partial<TpmConfig> = {}): TpmConfig {
  const t = tpm();
  return {
    backend: 'tpm',
    stateDir: join(dir, name),
    transport: { swtpm: { host: t.host, port: t.port, ctrlPort: t.ctrlPort } },
    pcrs: [PCR],
    ...extra,
  };
}

/** Opens the vault, runs `use`, and always closes it (swtpm serves one connection at a time). */
async function withVault<T>(
  cfg: TpmConfig,
  use: (v: VaultBackend) => Promise<T>,
  options: TpmVaultOptions = {},
): Promise<T> {
  const v = await openTpmVault(cfg, options);
  try {
    return await use(v);
  } finally {
    await v.close();
  }
}

async function withClient<T>(t: Swtpm, use: (c: TpmClient) => Promise<T>): Promise<T> {
  const c = new TpmClient(await t.connect());
  try {
    return await use(c);
  } finally {
    await c.close();
  }
}

function errorOf(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

interface StateFile {
  srkName: string;
  storeKey: unknown;
  crossSigningSeed: unknown;
  x509Identity: unknown;
  counter: { index: number; name: string; public: string; auth: unknown };
}
const stateFile = (name: string) => join(dir, name, 'tpm-vault.json');
async function readState(name: string): Promise<StateFile> {
  return JSON.parse(await readFile(stateFile(name), 'utf8')) as StateFile;
}

/** Someone else's index: an ordinary owner-defined NV counter, its public area and value. */
async function defineForeignCounter(index: number): Promise<void> {
  await withClient(tpm(), async (c) => {
    await c.run(
      commands.nvDefineSpace(
        TPM_RH.OWNER,
        index,
        TPMA_NV.TPM_NT_COUNTER | TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD,
        8,
      ),
      [{ session: passwordSession() }],
    );
    const pub = await c.nvPublic(index);
    if (!pub) throw new Error('the foreign index was not defined');
    await c.run(commands.nvIncrement({ handle: TPM_RH.OWNER }, { handle: index, name: pub.name }), [
      { session: passwordSession() },
    ]);
  });
}

/** The public area and value of an owner-readable index, as tpm2-tools sees them. */
async function inspect(index: number): Promise<{ pub: string; value: bigint }> {
  const env = { ...process.env, TPM2TOOLS_TCTI: tpm().tcti };
  const hex = `0x${index.toString(16)}`;
  const { stdout: pub } = await run('tpm2_nvreadpublic', [hex], { env });
  const { stdout } = await run('tpm2_nvread', ['-C', 'o', '-s', '8', hex], {
    env,
    encoding: 'buffer',
  });
  return { pub, value: stdout.readBigUInt64BE(0) };
}

describe('two vaults on one TPM', () => {
  it('each provisions its own counter and storage key, and sees only its own counter move', async () => {
    for (const name of ['a', 'b']) {
      const report = await withVault(config(name), (v) => v.provision());
      expect(report.kept).toEqual([]);
      expect(report.created).toHaveLength(5);
    }
    const [a, b] = [await readState('a'), await readState('b')];
    expect(a.counter.index).not.toBe(b.counter.index);
    for (const s of [a, b]) {
      expect(s.counter.index).toBeGreaterThanOrEqual(COUNTER_INDEX_RANGE.first);
      expect(s.counter.index).toBeLessThanOrEqual(COUNTER_INDEX_RANGE.last);
    }
    expect(a.srkName).not.toBe(b.srkName);

    const read = (name: string) => withVault(config(name), (v) => v.counterRead());
    let [va, vb] = [await read('a'), await read('b')];
    for (let i = 0; i < 5; i++) {
      // Each vault is started afresh for each turn, as endpoints are.
      const na = await withVault(config('a'), (v) => v.counterIncrement());
      expect(na).toBe(va + 1n);
      expect(await read('b')).toBe(vb);
      const nb = await withVault(config('b'), (v) => v.counterIncrement());
      expect(nb).toBe(vb + 1n);
      expect(await read('a')).toBe(na);
      [va, vb] = [na, nb];
    }
    // Re-provisioning keeps each its own, and neither is refused because of the other.
    for (const name of ['a', 'b']) {
      const again = await withVault(config(name), (v) => v.provision());
      expect(again.created).toEqual([]);
    }
    expect((await inspect(a.counter.index)).value).toBe(va);
    expect((await inspect(b.counter.index)).value).toBe(vb);
  });

  it("refuses another vault's store key, X.509 key, seed and counter authValue copied into its state; works again with its own", async () => {
    const own = await readFile(stateFile('a'), 'utf8');
    const b = await readState('b');
    const attempts: [keyof StateFile, (v: VaultBackend) => Promise<unknown>][] = [
      ['storeKey', (v) => v.storeKey()],
      ['x509Identity', (v) => v.sign('x509-identity', Buffer.from('x'))],
      ['x509Identity', (v) => v.publicKey('x509-identity')],
      ['crossSigningSeed', (v) => v.sign('cross-signing-master', Buffer.from('x'))],
      ['crossSigningSeed', (v) => v.publicKey('cross-signing-master')],
    ];
    for (const [field, attempt] of attempts) {
      const state = JSON.parse(own) as Record<string, unknown>;
      state[field] = b[field];
      await writeFile(stateFile('a'), JSON.stringify(state));
      const error = await errorOf(withVault(config('a'), attempt));
      expect(error, field).toMatchObject({ code: 'VAULT_FOREIGN_OR_TAMPERED' });
      expect((error as Error).message).toMatch(/belongs to another vault/);
    }
    // The counter's authValue blob alone: the index and its Name are A's, the blob B's.
    const state = JSON.parse(own) as StateFile;
    state.counter.auth = b.counter.auth;
    await writeFile(stateFile('a'), JSON.stringify(state));
    expect(await errorOf(withVault(config('a'), (v) => v.counterRead()))).toMatchObject({
      code: 'VAULT_FOREIGN_OR_TAMPERED',
    });

    await writeFile(stateFile('a'), own);
    const before = await withVault(config('a'), (v) => v.counterRead());
    await withVault(config('a'), async (v) => {
      expect(await v.storeKey()).toHaveLength(32);
      await v.sign('x509-identity', Buffer.from('x'));
      await v.sign('cross-signing-master', Buffer.from('x'));
      expect(await v.counterIncrement()).toBe(before + 1n);
    });
  });

  it("B's counter recorded in A's state (index, Name and blob) is refused too", async () => {
    const own = await readFile(stateFile('a'), 'utf8');
    const state = JSON.parse(own) as StateFile;
    state.counter = (await readState('b')).counter;
    await writeFile(stateFile('a'), JSON.stringify(state));
    try {
      expect(await errorOf(withVault(config('a'), (v) => v.counterIncrement()))).toMatchObject({
        code: 'VAULT_FOREIGN_OR_TAMPERED',
      });
    } finally {
      await writeFile(stateFile('a'), own);
    }
  });
});

describe('an NV index someone else defined', () => {
  it('is refused when the configuration names it, and left as it was', async () => {
    const index = 0x01a0cafe;
    await defineForeignCounter(index);
    const before = await inspect(index);
    const error = await errorOf(
      withVault(config('configured', { nvCounterIndex: index }), (v) => v.provision()),
    );
    expect(error).toMatchObject({ code: 'VAULT_COUNTER_FOREIGN' });
    expect((error as Error).message).toMatch(/0x1a0cafe .*already exists.*never adopted/);
    expect(await inspect(index)).toEqual(before);
    // Nothing was counted on: no counter is recorded as provisioned.
    await withVault(config('configured', { nvCounterIndex: index }), async (v) => {
      expect((await v.status()).provisioned.counter).toBe(false);
      await expect(v.counterRead()).rejects.toMatchObject({ code: 'VAULT_NOT_PROVISIONED' });
    });

    // Without nvCounterIndex the same vault resumes and picks a free index of its own.
    const report = await withVault(config('configured'), (v) => v.provision());
    expect(report.created.join(' ')).toMatch(/anti-rollback counter/);
    const { counter } = await readState('configured');
    expect(counter.index).not.toBe(index);
    expect(await withVault(config('configured'), (v) => v.counterIncrement())).toBeGreaterThan(0n);
    expect(await inspect(index)).toEqual(before);
  });

  it('is skipped when the vault picks one itself, and never touched', async () => {
    const foreign = COUNTER_INDEX_RANGE.first + 0x1234;
    await defineForeignCounter(foreign);
    const before = await inspect(foreign);
    const free = COUNTER_INDEX_RANGE.first + 0x1235;
    const picks = [foreign, (await readState('a')).counter.index, free];
    const report = await withVault(config('picks'), (v) => v.provision(), {
      counterIndexCandidate: () => picks.shift() ?? 0,
    });
    expect(report.created).toHaveLength(5);
    expect(picks).toEqual([]);
    expect((await readState('picks')).counter.index).toBe(free);
    expect(await inspect(foreign)).toEqual(before);
    expect(await withVault(config('picks'), (v) => v.counterRead())).toBeGreaterThan(0n);
  });

  it('a configured index that differs from the recorded one is a configuration error', async () => {
    const { counter } = await readState('a');
    const error = await errorOf(
      withVault(config('a', { nvCounterIndex: counter.index + 1 }), (v) => v.counterRead()),
    );
    expect(error).toMatchObject({ code: 'VAULT_CONFIG' });
    expect(
      await withVault(config('a', { nvCounterIndex: counter.index }), (v) => v.counterRead()),
    ).toBeGreaterThan(0n);
  });
});

describe('a counter replaced behind the vault', () => {
  let index: number;
  let recorded: NvRef;

  beforeAll(async () => {
    await withVault(config('victim'), (v) => v.provision());
    const { counter } = await readState('victim');
    index = counter.index;
    recorded = { handle: index, name: Buffer.from(counter.name, 'hex') };
  });

  const undefine = () =>
    withClient(tpm(), async (c) => {
      const pub = await c.nvPublic(index);
      if (!pub) return;
      await c.run(commands.nvUndefineSpace(TPM_RH.OWNER, { handle: index, name: pub.name }), [
        { session: passwordSession() },
      ]);
    });

  it('gone (undefined by the owner) is refused', async () => {
    expect(await withVault(config('victim'), (v) => v.counterIncrement())).toBeGreaterThan(0n);
    await undefine();
    for (const op of [
      (v: VaultBackend) => v.counterRead(),
      (v: VaultBackend) => v.counterIncrement(),
    ]) {
      const error = await errorOf(withVault(config('victim'), op));
      expect(error).toMatchObject({ code: 'VAULT_COUNTER_FOREIGN' });
      expect((error as Error).message).toMatch(/is gone/);
    }
    await expect(withVault(config('victim'), (v) => v.provision())).rejects.toMatchObject({
      code: 'VAULT_COUNTER_FOREIGN',
    });
  });

  it('replaced by a look-alike (same attributes, same Name, another authValue) is refused', async () => {
    // Defined and incremented through the same client code, so it is ours in every visible
    // respect: attributes, size, policy, TPMA_NV_WRITTEN, hence the Name.
    await withClient(tpm(), (c) =>
      c.withSrk(async (srk) => {
        const pub = await c.defineCounter(index, randomBytes(32), srk);
        expect(pub.attributes & ~TPMA_NV.WRITTEN).toBe(COUNTER_ATTRIBUTES);
        expect(pub.name.equals(Buffer.from(recorded.name))).toBe(true);
      }),
    );
    for (const op of [
      (v: VaultBackend) => v.counterRead(),
      (v: VaultBackend) => v.counterIncrement(),
    ]) {
      const error = await errorOf(withVault(config('victim'), op));
      expect(error).toMatchObject({ code: 'VAULT_COUNTER_FOREIGN' });
      expect((error as Error).message).toMatch(/does not answer to this vault's authorization/);
    }
    const checks = await withVault(config('victim'), (v) => v.doctor());
    expect(checks.find((c) => c.check.includes('counter'))).toMatchObject({ ok: false });
  });

  it('replaced by a counter with other attributes is refused', async () => {
    await undefine();
    await defineForeignCounter(index);
    const error = await errorOf(withVault(config('victim'), (v) => v.counterRead()));
    expect(error).toMatchObject({ code: 'VAULT_COUNTER_FOREIGN' });
    expect((error as Error).message).toMatch(/not the one this vault defined/);
  });

  it('leaves no transient object or session behind on the TPM', async () => {
    await withClient(tpm(), async (c) => {
      expect(await c.transientHandles()).toEqual([]);
      expect(await c.loadedSessions()).toEqual([]);
    });
    // The other vaults were not disturbed by any of it.
    expect(await withVault(config('a'), (v) => v.counterRead())).toBeGreaterThan(0n);
    expect(await withVault(config('b'), (v) => v.counterRead())).toBeGreaterThan(0n);
  });
});
