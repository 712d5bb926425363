import { constants, createPublicKey, randomBytes, verify } from 'node:crypto';
import { chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { DevConfig } from '../../keyvault/config.ts';
import { openDevVault } from '../../keyvault/dev/index.ts';
import { ID_FILE, STATE_FILE } from '../../keyvault/dev/state.ts';
import { loadVaultConfig } from '../../keyvault/open.ts';
import { VaultCode, VaultError, type VaultBackend } from '../../keyvault/vault.ts';
import { makeTempDir } from '../fixtures/process.ts';

let root: string;
beforeAll(async () => {
  root = await makeTempDir('dev-vault');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
function freshConfig(): DevConfig {
  const stateDir = join(root, `state-${n++}`);
  return { backend: 'dev', stateDir, allowInsecureDevBackend: true };
}

async function withVault<T>(config: DevConfig, run: (v: VaultBackend) => Promise<T>): Promise<T> {
  const vault = await openDevVault(config);
  try {
    return await run(vault);
  } finally {
    await vault.close();
  }
}

describe('dev vault', () => {
  it('provisions once; a rerun keeps every key unchanged', async () => {
    const config = freshConfig();
    const first = await withVault(config, async (v) => {
      expect((await v.status()).provisioned).toEqual({
        storeKey: false,
        counter: false,
        purposes: [],
        attestationKey: false,
      });
      const report = await v.provision();
      expect(report.kept).toEqual([]);
      expect(report.created).toHaveLength(5);
      expect(report.created[0]).toBe('vault id');
      return {
        ed: (await v.publicKey('cross-signing-master')).spki,
        rsa: (await v.publicKey('x509-identity')).spki,
        file: await readFile(join(config.stateDir, STATE_FILE)),
      };
    });
    await withVault(config, async (v) => {
      const report = await v.provision();
      expect(report.created).toEqual([]);
      expect(report.kept).toHaveLength(5);
      expect((await v.publicKey('cross-signing-master')).spki).toEqual(first.ed);
      expect((await v.publicKey('x509-identity')).spki).toEqual(first.rsa);
      expect((await v.status()).provisioned).toEqual({
        storeKey: true,
        counter: true,
        counterStart: '0',
        purposes: ['cross-signing-master', 'x509-identity'],
        attestationKey: false,
      });
    });
    expect(await readFile(join(config.stateDir, STATE_FILE))).toEqual(first.file);
    expect((await stat(join(config.stateDir, STATE_FILE))).mode & 0o777).toBe(0o600);
    expect((await stat(config.stateDir)).mode & 0o777).toBe(0o700);
  });

  it('releases the store key once per lifetime, and again after a reopen', async () => {
    const config = freshConfig();
    const key = await withVault(config, async (v) => {
      await expect(v.storeKey()).rejects.toMatchObject({ code: VaultCode.NotProvisioned });
      await v.provision();
      const k = await v.storeKey();
      expect(k).toHaveLength(32);
      await expect(v.storeKey()).rejects.toMatchObject({ code: VaultCode.StoreKeyReleased });
      return k;
    });
    await withVault(config, async (v) => {
      expect(await v.storeKey()).toEqual(key);
    });
  });

  it('the counter only goes up, across reopens', async () => {
    const config = freshConfig();
    await withVault(config, async (v) => {
      await expect(v.counterRead()).rejects.toMatchObject({ code: VaultCode.NotProvisioned });
      await v.provision();
      expect(await v.counterRead()).toBe(0n);
      // Concurrent increments are serialised: no value is handed out twice.
      const values = await Promise.all([1, 2, 3].map(() => v.counterIncrement()));
      expect([...values].sort()).toEqual([1n, 2n, 3n]);
    });
    await withVault(config, async (v) => {
      expect(await v.counterRead()).toBe(3n);
      expect(await v.counterIncrement()).toBe(4n);
    });
  });

  it('signs with Ed25519 and RSA-PSS (SHA-512, salt 64) that node:crypto verifies', async () => {
    const config = freshConfig();
    await withVault(config, async (v) => {
      await v.provision();
      const message = randomBytes(1000);

      const ed = await v.publicKey('cross-signing-master');
      expect(ed.algorithm).toBe('ed25519');
      const edKey = createPublicKey({ key: Buffer.from(ed.spki), format: 'der', type: 'spki' });
      expect(edKey.asymmetricKeyType).toBe('ed25519');
      const edSig = await v.sign('cross-signing-master', message);
      expect(edSig).toHaveLength(64);
      expect(verify(null, message, edKey, edSig)).toBe(true);
      expect(verify(null, randomBytes(10), edKey, edSig)).toBe(false);

      const rsa = await v.publicKey('x509-identity');
      expect(rsa.algorithm).toBe('rsa-pss-sha512');
      const rsaKey = createPublicKey({ key: Buffer.from(rsa.spki), format: 'der', type: 'spki' });
      expect(rsaKey.asymmetricKeyDetails?.modulusLength).toBe(3072);
      const rsaSig = await v.sign('x509-identity', message);
      const pss = { key: rsaKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 };
      expect(verify('sha512', message, pss, rsaSig)).toBe(true);
      // PSS is randomised: the same message signs differently, and both verify.
      const again = await v.sign('x509-identity', message);
      expect(again).not.toEqual(rsaSig);
      expect(verify('sha512', message, pss, again)).toBe(true);
    });
  });

  it('has no TPM: quote and attestation identity are not supported', async () => {
    await withVault(freshConfig(), async (v) => {
      await expect(
        v.quote(new Uint8Array(32), { hash: 'sha256', pcrs: [0] }),
      ).rejects.toMatchObject({ code: VaultCode.NotSupported });
      await expect(v.attestationIdentity()).rejects.toMatchObject({
        code: VaultCode.NotSupported,
      });
      expect(await v.random(17)).toHaveLength(17);
      await expect(v.random(0)).rejects.toMatchObject({ code: VaultCode.BadRequest });
    });
  });

  it('refuses a tampered state file with a typed error that shows no key material', async () => {
    const config = freshConfig();
    await withVault(config, (v) => v.provision());
    const path = join(config.stateDir, STATE_FILE);
    const original = await readFile(path, 'utf8');
    const state = JSON.parse(original) as { storeKey: string; keys: Record<string, string> };

    const cases: [string, string][] = [
      ['truncated JSON', original.slice(0, 100)],
      ['a short store key', JSON.stringify({ ...state, storeKey: 'AAAA' })],
      [
        'keys swapped between purposes',
        JSON.stringify({
          ...state,
          keys: {
            'cross-signing-master': state.keys['x509-identity'],
            'x509-identity': state.keys['cross-signing-master'],
          },
        }),
      ],
      [
        'a key that is not PKCS#8',
        JSON.stringify({ ...state, keys: { ...state.keys, 'x509-identity': 'AAECAw==' } }),
      ],
      ['an extra field', JSON.stringify({ ...state, exportable: true })],
    ];
    for (const [name, text] of cases) {
      await writeFile(path, text, { mode: 0o600 });
      const error = await openDevVault(config).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, name).toBeInstanceOf(VaultError);
      expect(error, name).toMatchObject({ code: VaultCode.ForeignOrTampered });
      expect((error as Error).message, name).not.toContain(state.storeKey.slice(0, 12));
    }

    await writeFile(path, original, { mode: 0o600 });
    await chmod(path, 0o644);
    await expect(openDevVault(config)).rejects.toMatchObject({ code: VaultCode.Config });
    await chmod(path, 0o600);
    await withVault(config, async (v) => {
      expect(await v.counterRead()).toBe(0n);
    });
  });

  it("refuses another vault's state file swapped in (VAULT_FOREIGN_OR_TAMPERED), even with its vault id forged", async () => {
    const a = freshConfig();
    const b = freshConfig();
    const keyA = await withVault(a, async (v) => {
      await v.provision();
      return v.storeKey();
    });
    await withVault(b, (v) => v.provision());
    const idA = JSON.parse(await readFile(join(a.stateDir, ID_FILE), 'utf8')) as {
      vaultId: string;
    };
    const idB = JSON.parse(await readFile(join(b.stateDir, ID_FILE), 'utf8')) as {
      vaultId: string;
    };
    expect(idA.vaultId).toMatch(/^[0-9a-f]{32}$/);
    expect(idA.vaultId).not.toBe(idB.vaultId);
    expect((await withVault(a, (v) => v.status())).identity).toBe(`software, vault ${idA.vaultId}`);

    const pathA = join(a.stateDir, STATE_FILE);
    const originalA = await readFile(pathA);
    const stateB = await readFile(join(b.stateDir, STATE_FILE), 'utf8');
    const refused = async (body: string | Buffer, pattern: RegExp) => {
      await writeFile(pathA, body, { mode: 0o600 });
      const error = await openDevVault(a).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(VaultError);
      expect(error).toMatchObject({ code: VaultCode.ForeignOrTampered });
      expect((error as Error).message).toMatch(pattern);
    };
    // B's file as it is: it names B's vault.
    await refused(stateB, /belongs to another vault/);
    // B's file claiming to be A's: the MAC (under A's key, over A's id) fails.
    const forged = JSON.parse(stateB) as Record<string, unknown>;
    await refused(JSON.stringify({ ...forged, vaultId: idA.vaultId }), /MAC does not verify/);
    // A's own file with its MAC stripped, or one field changed.
    const own = JSON.parse(originalA.toString('utf8')) as Record<string, unknown>;
    await refused(JSON.stringify({ ...own, mac: undefined }), /MAC does not verify/);
    await refused(JSON.stringify({ ...own, counter: '7' }), /MAC does not verify/);
    // Swapped while the vault runs: every call, and provisioning, refuse; the file is left alone.
    await writeFile(pathA, originalA, { mode: 0o600 });
    await withVault(a, async (v) => {
      await writeFile(pathA, stateB, { mode: 0o600 });
      for (const attempt of [v.provision(), v.counterRead(), v.storeKey()]) {
        await expect(attempt).rejects.toMatchObject({ code: VaultCode.ForeignOrTampered });
      }
    });
    expect(await readFile(pathA, 'utf8')).toBe(stateB);

    // A state file without the identity beside it (copied alone): refused.
    const lone = freshConfig();
    await mkdir(lone.stateDir, { recursive: true, mode: 0o700 });
    await writeFile(join(lone.stateDir, STATE_FILE), stateB, { mode: 0o600 });
    await expect(openDevVault(lone)).rejects.toMatchObject({
      code: VaultCode.ForeignOrTampered,
      message: expect.stringMatching(/no vault identity beside it/) as unknown,
    });

    // A's own file back: opens, same store key.
    await writeFile(pathA, originalA, { mode: 0o600 });
    await withVault(a, async (v) => {
      expect(await v.storeKey()).toEqual(keyA);
    });
  });

  it('is refused unless the config allows it', async () => {
    const dir = join(root, 'refused');
    await mkdir(dir, { recursive: true });
    const path = join(dir, 'vault.json');
    await writeFile(path, JSON.stringify({ backend: 'dev', stateDir: 'state' }));
    const error = await loadVaultConfig(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VaultError);
    expect(error).toMatchObject({ code: VaultCode.InsecureRefused });
    expect((error as Error).message).toContain(
      'the dev backend keeps keys in software and requires "allowInsecureDevBackend": true, for development only',
    );
    // Nor can a caller skip the config loader with a hand-made object.
    await expect(
      openDevVault({ backend: 'dev', stateDir: dir } as unknown as DevConfig),
    ).rejects.toMatchObject({ code: VaultCode.InsecureRefused });

    await writeFile(
      path,
      JSON.stringify({ backend: 'dev', stateDir: 'state', allowInsecureDevBackend: true }),
    );
    const config = await loadVaultConfig(path);
    expect(config.stateDir).toBe(join(dir, 'state'));
  });

  it('warns on stderr on every start, and in status', async () => {
    const config = freshConfig();
    const writes = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await withVault(config, () => Promise.resolve());
      await withVault(config, async (v) => {
        expect((await v.status()).warnings).toEqual([
          'insecure dev backend: keys are in software files, not hardware; for development only',
        ]);
      });
      const lines = writes.mock.calls.map(([chunk]) => String(chunk));
      expect(
        lines.filter(
          (l) =>
            l ===
            'WARNING: insecure dev backend: keys are in software files, not hardware; for development only\n',
        ),
      ).toHaveLength(2);
    } finally {
      writes.mockRestore();
    }
  });

  it('doctor reports each check; provisioning makes them pass', async () => {
    await withVault(freshConfig(), async (v) => {
      const before = await v.doctor();
      expect(before.length).toBeGreaterThanOrEqual(3);
      expect(before.some((c) => !c.ok && c.detail.includes('init'))).toBe(true);
      await v.provision();
      const after = await v.doctor();
      expect(after.every((c) => c.ok)).toBe(true);
    });
  });
});

describe('config errors name the field and rule, never the value', () => {
  it.each([
    [
      { backend: 'pkcs11', stateDir: 's', module: 'm', token: 'pkcs11:token=x', pin: '123456' },
      'pin: expected {"file": path} or {"env": NAME}',
    ],
    [{ backend: 'floppy', stateDir: 's' }, 'backend: expected "tpm", "pkcs11" or "dev"'],
    [
      {
        backend: 'tpm',
        stateDir: 's',
        transport: { device: '/dev/tpmrm0' },
        pcrs: [0, 123456],
      },
      'pcrs[1]: ',
    ],
  ])('%j', async (config, expected) => {
    const path = join(root, `bad-${n++}.json`);
    await writeFile(path, JSON.stringify(config));
    const error = await loadVaultConfig(path).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: VaultCode.Config });
    expect((error as Error).message).toContain(expected);
    expect((error as Error).message).not.toContain('123456');
  });

  it('does not quote a file that is not JSON', async () => {
    const path = join(root, `bad-${n++}.json`);
    await writeFile(path, '{"pin": "hunter2" oops');
    const error = await loadVaultConfig(path).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: VaultCode.Config });
    expect((error as Error).message).not.toContain('hunter2');
  });
});
