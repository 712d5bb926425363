import { randomBytes } from 'node:crypto';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pkcs11js, { type PKCS11 } from 'pkcs11js';
import { beforeAll, describe, expect, it } from 'vitest';
import { spawnProcess } from '../../keyvault/common/spawn.ts';
import type { Pkcs11Config } from '../../keyvault/config.ts';
import { openPkcs11Vault } from '../../keyvault/pkcs11/index.ts';
import { STORE_KEY_FILE } from '../../keyvault/pkcs11/store-key-file.ts';
import { VAULT_ID_FILE } from '../../keyvault/pkcs11/vault-id.ts';
import { spawnVault } from '../../keyvault/spawn.ts';
import { VaultCode, VaultError, type VaultBackend } from '../../keyvault/vault.ts';
import { repoRoot } from '../fixtures/process.ts';
import { setSoftHsmTokenFlags, startSoftHsm } from '../fixtures/softhsm.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

/**
 * Several vaults on one PKCS#11 token (real SoftHSM2), and what the endpoint sees when a vault
 * cannot open. One token for the whole file; the tests run in order, and the last one deletes
 * the token's directory.
 */

const hsm = useFixture(() => startSoftHsm());

beforeAll(() => {
  // SoftHSM reads its configuration from the environment, once per process.
  process.env.SOFTHSM2_CONF = hsm().env.SOFTHSM2_CONF;
});

function config(name: string, overrides: Partial<Pkcs11Config> = {}): Pkcs11Config {
  return {
    backend: 'pkcs11',
    stateDir: join(hsm().dir, name),
    module: hsm().modulePath,
    token: `pkcs11:token=${encodeURIComponent(hsm().label)}`,
    pin: { file: hsm().pinFile },
    ...overrides,
  };
}

/** The config as a file, for the vault process (relative paths are not needed here). */
async function configFile(name: string, overrides: Partial<Pkcs11Config> = {}): Promise<string> {
  const path = join(hsm().dir, `${name}.json`);
  await writeFile(path, JSON.stringify(config(name, overrides)));
  return path;
}

async function withVault<T>(cfg: Pkcs11Config, fn: (v: VaultBackend) => Promise<T>): Promise<T> {
  const vault = await openPkcs11Vault(cfg);
  try {
    return await fn(vault);
  } finally {
    await vault.close();
  }
}

async function rejection(promise: Promise<unknown>): Promise<VaultError> {
  try {
    await promise;
  } catch (e) {
    expect(e).toBeInstanceOf(VaultError);
    return e as VaultError;
  }
  throw new Error('expected a rejection');
}

/** A raw pkcs11js session as the token's user: someone else holding the PIN. */
function raw<T>(fn: (p11: PKCS11, session: Buffer) => T): T {
  const p11 = new pkcs11js.PKCS11();
  p11.load(hsm().modulePath);
  p11.C_Initialize();
  try {
    const slot = p11
      .C_GetSlotList(true)
      .find((s) => p11.C_GetTokenInfo(s).label.trimEnd() === hsm().label);
    if (!slot) throw new Error('token not found');
    const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_Login(session, pkcs11js.CKU_USER, hsm().pin);
    try {
      return fn(p11, session);
    } finally {
      p11.C_CloseSession(session);
    }
  } finally {
    p11.C_Finalize();
  }
}

function find(p11: PKCS11, session: Buffer, template: pkcs11js.Template): Buffer[] {
  p11.C_FindObjectsInit(session, template);
  const found = p11.C_FindObjects(session, 100);
  p11.C_FindObjectsFinal(session);
  return found;
}

const dataObject = (label: string, value: Buffer): pkcs11js.Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_PRIVATE, value: true },
  { type: pkcs11js.CKA_LABEL, value: label },
  { type: pkcs11js.CKA_APPLICATION, value: 'matrix-trusted-endpoint' },
  { type: pkcs11js.CKA_VALUE, value },
];

async function vaultIdOf(name: string): Promise<string> {
  const text = await readFile(join(hsm().dir, name, VAULT_ID_FILE), 'utf8');
  return (JSON.parse(text) as { vaultId: string }).vaultId;
}

function counterRecord(id: string): Buffer {
  return raw((p11, session) => {
    const [handle] = find(p11, session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_LABEL, value: `mte-counter-${id}` },
    ]);
    if (!handle) throw new Error('no counter object');
    const [value] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE }]);
    return Buffer.from(value?.value ?? Buffer.alloc(0));
  });
}

describe('objects someone else made first are never adopted', () => {
  it('a counter, a KEK and a labelled key made before init stay theirs; init makes its own', async () => {
    // Someone with the PIN prepares the token: the old, shared counter label at a high value,
    // and a store KEK under our label (the old layout: CKA_ID = the label).
    const planted = Buffer.alloc(8);
    planted.writeBigUInt64BE(1000n);
    raw((p11, session) => {
      p11.C_CreateObject(session, dataObject('mte-counter', planted));
      p11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        { type: pkcs11js.CKA_ENCRYPT, value: true },
        { type: pkcs11js.CKA_DECRYPT, value: true },
        { type: pkcs11js.CKA_LABEL, value: 'mte-store-kek' },
        { type: pkcs11js.CKA_ID, value: Buffer.from('mte-store-kek') },
      ]);
    });
    const report = await withVault(config('a'), (v) => v.provision());
    expect(report.kept).toEqual([]);
    expect(report.created).toEqual([
      'vault-id',
      'counter',
      'store-kek',
      'store-key',
      'cross-signing-master',
      'x509-identity',
    ]);
    await withVault(config('a'), async (v) => {
      expect(await v.counterRead()).toBe(0n);
    });
    // Theirs is untouched, and ours is a second KEK beside it.
    raw((p11, session) => {
      const [counter] = find(p11, session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_LABEL, value: 'mte-counter' },
      ]);
      expect(counter).toBeDefined();
      const [value] = p11.C_GetAttributeValue(session, counter as Buffer, [
        { type: pkcs11js.CKA_VALUE },
      ]);
      expect(value?.value.readBigUInt64BE()).toBe(1000n);
      const keks = find(p11, session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_LABEL, value: 'mte-store-kek' },
      ]);
      expect(keks).toHaveLength(2);
    });
  });
});

describe('another vault on the same token', () => {
  it("B's wrapped store key swapped into A's state dir is refused: it belongs to another vault", async () => {
    await withVault(config('b'), (v) => v.provision());
    const [idA, idB] = [await vaultIdOf('a'), await vaultIdOf('b')];
    expect(idA).not.toBe(idB);
    const swapped = join(hsm().dir, 'a-swapped');
    await cp(join(hsm().dir, 'a'), swapped, { recursive: true });
    const fileB = await readFile(join(hsm().dir, 'b', STORE_KEY_FILE), 'utf8');

    // As it is: it names vault B.
    await writeFile(join(swapped, STORE_KEY_FILE), fileB, { mode: 0o600 });
    await withVault(config('a-swapped'), async (v) => {
      const e = await rejection(v.storeKey());
      expect(e.code).toBe(VaultCode.ForeignOrTampered);
      expect(e.message).toMatch(/belongs to another vault/);
      expect(e.message).toContain(idB);
      expect((await rejection(v.provision())).code).toBe(VaultCode.ForeignOrTampered);
      expect((await v.status()).warnings.join(' ')).toMatch(/belongs to another vault/);
    });
    // With the vault id it records forged to A's: A's KEK and A's id as additional data fail.
    const forged = { ...(JSON.parse(fileB) as Record<string, unknown>), vaultId: idA };
    await writeFile(join(swapped, STORE_KEY_FILE), JSON.stringify(forged), { mode: 0o600 });
    await withVault(config('a-swapped'), async (v) => {
      const e = await rejection(v.storeKey());
      expect(e.code).toBe(VaultCode.ForeignOrTampered);
      expect(e.message).toMatch(/does not decrypt/);
    });
    // A's own file still opens, and differs from B's store key.
    const keyA = await withVault(config('a'), (v) => v.storeKey());
    const keyB = await withVault(config('b'), (v) => v.storeKey());
    expect(Buffer.from(keyA).equals(Buffer.from(keyB))).toBe(false);
  });

  it("B's genuine counter object relabelled as A's is refused (VAULT_COUNTER_FOREIGN)", async () => {
    const [idA, idB] = [await vaultIdOf('a'), await vaultIdOf('b')];
    const recordB = counterRecord(idB);
    raw((p11, session) => {
      p11.C_CreateObject(session, dataObject(`mte-counter-${idA}`, recordB));
    });
    try {
      await withVault(config('a'), async (v) => {
        for (const attempt of [v.counterRead(), v.counterIncrement()]) {
          const e = await rejection(attempt);
          expect(e.code).toBe(VaultCode.CounterForeign);
          expect(e.message).toMatch(/does not hold a counter record of this vault/);
        }
      });
    } finally {
      raw((p11, session) => {
        for (const handle of find(p11, session, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
          { type: pkcs11js.CKA_LABEL, value: `mte-counter-${idA}` },
          { type: pkcs11js.CKA_VALUE, value: recordB },
        ])) {
          p11.C_DestroyObject(session, handle);
        }
      });
    }
    // B is unharmed.
    expect(await withVault(config('b'), (v) => v.counterRead())).toBe(0n);
  });

  it('two vaults count independently, incremented alternately five times each', async () => {
    const a = await openPkcs11Vault(config('a'));
    const b = await openPkcs11Vault(config('b'));
    try {
      const startA = await a.counterRead();
      const startB = await b.counterRead();
      for (let i = 1n; i <= 5n; i++) {
        expect(await a.counterIncrement()).toBe(startA + i);
        expect(await b.counterRead()).toBe(startB + i - 1n);
        expect(await b.counterIncrement()).toBe(startB + i);
        expect(await a.counterRead()).toBe(startA + i);
      }
      // And their keys are their own.
      const spki = async (v: VaultBackend) =>
        Buffer.from((await v.publicKey('cross-signing-master')).spki).toString('hex');
      expect(await spki(a)).not.toBe(await spki(b));
      const [sa, sb] = [await a.status(), await b.status()];
      expect(sa.identity).toContain(`vault ${await vaultIdOf('a')}`);
      expect(sb.identity).toContain(`vault ${await vaultIdOf('b')}`);
      expect(sa.provisioned.counter && sb.provisioned.counter).toBe(true);
    } finally {
      await a.close();
      await b.close();
    }
    // One counter object each on the token, under its own vault's label.
    for (const name of ['a', 'b']) {
      const id = await vaultIdOf(name);
      const count = raw(
        (p11, session) =>
          find(p11, session, [
            { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
            { type: pkcs11js.CKA_LABEL, value: `mte-counter-${id}` },
          ]).length,
      );
      expect(count, name).toBe(1);
    }
  });
});

describe('what the endpoint sees when the vault cannot open', () => {
  it('a wrong PIN reaches the spawner as VAULT_WRONG_PIN, not DISCONNECTED', async () => {
    const wrong = `wrong-${randomBytes(6).toString('hex')}`;
    const wrongFile = join(hsm().dir, 'wrong.pin');
    await writeFile(wrongFile, wrong, { mode: 0o600 });
    const path = await configFile('a', { pin: { file: wrongFile } });
    const e = await spawnVault(path, { env: hsm().env }).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(VaultError);
    expect(e).toMatchObject({ code: VaultCode.WrongPin });
    expect((e as Error).message).toMatch(/rejected the PIN \(CKR_PIN_INCORRECT\)/);
    expect((e as Error).message).not.toContain(wrong);
    expect((e as Error).message).not.toContain(hsm().pin);
  });

  it("node endpoint/main.ts reports the vault's code, [VAULT_WRONG_PIN], and exits 1", async () => {
    const dir = join(hsm().dir, 'endpoint');
    await mkdir(join(dir, 'data'), { recursive: true, mode: 0o700 });
    const wrongFile = join(hsm().dir, 'wrong.pin');
    await writeFile(
      join(dir, 'vault.json'),
      JSON.stringify(config('a', { pin: { file: wrongFile } })),
    );
    await writeFile(join(dir, 'policy.json'), JSON.stringify({ version: 1 }), { mode: 0o600 });
    await writeFile(join(dir, 'password'), 'unused', { mode: 0o600 });
    await writeFile(
      join(dir, 'endpoint.json'),
      JSON.stringify({
        // Never contacted: the endpoint starts its vault before it talks to the homeserver.
        homeserver: 'http://127.0.0.1:9',
        user: 'alice',
        password: { file: 'password' },
        dataDir: 'data',
        vaultConfig: 'vault.json',
        policy: 'policy.json',
      }),
    );
    const lines: string[] = [];
    const child = spawnProcess({
      argv: [
        join(repoRoot, 'endpoint', 'main.ts'),
        'serve',
        '--config',
        join(dir, 'endpoint.json'),
      ],
      fds: ['pipe'],
      env: hsm().env,
      onStderr: (line) => {
        lines.push(line);
      },
    });
    const code = await Promise.race([
      child.exited,
      new Promise<string>((resolve) => {
        setTimeout(() => {
          resolve('timeout');
        }, 60_000).unref();
      }),
    ]);
    await child.stop({ graceMs: 1000, first: 'close' });
    const last = lines.at(-1) ?? '';
    expect(code, lines.join('\n')).toBe(1);
    expect(last).toMatch(/^endpoint: .*rejected the PIN.*\[VAULT_WRONG_PIN\]$/);
    expect(lines.join('\n')).not.toContain('DISCONNECTED');
    expect(lines.join('\n')).not.toContain(hsm().pin);
  }, 90_000);

  it('a locked PIN, or one attempt left, is VAULT_PIN_LOCKED, and the PIN is not tried', async () => {
    const path = await configFile('a');
    for (const [flag, pattern] of [
      [pkcs11js.CKF_USER_PIN_LOCKED, /the user PIN is locked/],
      [pkcs11js.CKF_USER_PIN_FINAL_TRY, /one more PIN attempt/],
    ] as const) {
      await setSoftHsmTokenFlags(hsm(), hsm().label, { set: flag });
      try {
        const inProcess = await rejection(openPkcs11Vault(config('a')));
        expect(inProcess.code).toBe(VaultCode.PinLocked);
        expect(inProcess.message).toMatch(pattern);
        const e = await spawnVault(path, { env: hsm().env }).catch((err: unknown) => err);
        expect(e).toMatchObject({ code: VaultCode.PinLocked });
        expect((e as Error).message).toMatch(pattern);
      } finally {
        await setSoftHsmTokenFlags(hsm(), hsm().label, { clear: flag });
      }
    }
    // Unlocked again: the vault opens.
    expect(await withVault(config('a'), (v) => v.counterRead())).toBeGreaterThan(0n);
  });

  it('a deleted token directory is VAULT_TOKEN_NOT_FOUND with a sentence, not CKR_GENERAL_ERROR', async () => {
    const running = await openPkcs11Vault(config('a'));
    const path = await configFile('a');
    try {
      await running.counterRead();
      await rm(join(hsm().dir, 'tokens'), { recursive: true, force: true });
      // While it runs: each call says the token is gone, not "not provisioned" or "tampered".
      for (const attempt of [
        running.counterRead(),
        running.counterIncrement(),
        running.publicKey('cross-signing-master'),
        running.sign('cross-signing-master', new Uint8Array([1])),
        running.status(),
      ]) {
        const e = await rejection(attempt);
        expect(e.code).toBe(VaultCode.TokenNotFound);
        expect(e.message).toMatch(/the token no longer answers/);
      }
    } finally {
      await running.close();
    }
    // At start, in process and through the vault process.
    const e = await rejection(openPkcs11Vault(config('a')));
    expect(e.code).toBe(VaultCode.TokenNotFound);
    expect(e.message).toMatch(/token directory .*tokens .*does not exist/);
    expect(e.message).not.toMatch(/CKR_GENERAL_ERROR/);
    const spawned = await spawnVault(path, { env: hsm().env }).catch((err: unknown) => err);
    expect(spawned).toMatchObject({ code: VaultCode.TokenNotFound });
    expect((spawned as Error).message).toMatch(/does not exist/);
  });
});
