import { execFile } from 'node:child_process';
import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnVault } from '../../keyvault/index.ts';
import { startSoftHsm, startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { TEST_OWNER, ownMasterBytes, subkeyBytes } from '../fixtures/sign-inputs.ts';

// The vault as its own process behind the RPC, on real hardware stand-ins: what the endpoint
// will see. Provisioned with the vault command, then used through the typed client.
const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm());
const hsm = useFixture(() => startSoftHsm());
const VAULT = join(import.meta.dirname, '..', '..', 'keyvault', 'main.ts');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-compartment-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function writeConfig(name: string, config: object): Promise<string> {
  const path = join(dir, `${name}.json`);
  await writeFile(path, JSON.stringify(config), { mode: 0o600 });
  return path;
}

describe.each(['tpm', 'pkcs11'] as const)('the %s vault compartment', (backend) => {
  let configPath: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    env = { ...process.env, ...hsm().env };
    configPath =
      backend === 'tpm'
        ? await writeConfig('tpm', {
            backend: 'tpm',
            owner: { userId: TEST_OWNER },
            stateDir: 'tpm-state',
            transport: { swtpm: { host: tpm().host, port: tpm().port, ctrlPort: tpm().ctrlPort } },
            pcrs: [16],
          })
        : await writeConfig('pkcs11', {
            backend: 'pkcs11',
            owner: { userId: TEST_OWNER },
            stateDir: 'pkcs11-state',
            module: hsm().modulePath,
            token: `pkcs11:token=${hsm().label}`,
            pin: { file: hsm().pinFile },
          });
    const { stdout } = await run(
      process.execPath,
      [VAULT, 'init', '--config', configPath, '--json'],
      { env },
    );
    const report = JSON.parse(stdout) as { created: string[] };
    expect(report.created.length).toBeGreaterThanOrEqual(4);
  });

  it('init is idempotent and status/doctor report a healthy, provisioned vault', async () => {
    const again = JSON.parse(
      (await run(process.execPath, [VAULT, 'init', '--config', configPath, '--json'], { env }))
        .stdout,
    ) as {
      created: string[];
    };
    expect(again.created).toEqual([]);
    const status = JSON.parse(
      (await run(process.execPath, [VAULT, 'status', '--config', configPath, '--json'], { env }))
        .stdout,
    ) as {
      backend: string;
      provisioned: { storeKey: boolean };
    };
    expect(status).toMatchObject({ backend, provisioned: { storeKey: true } });
    await expect(
      run(process.execPath, [VAULT, 'doctor', '--config', configPath, '--json'], { env }),
    ).resolves.toBeDefined();
  });

  it('serves the endpoint over fd 3: store key once, signatures, counter, quote or a typed refusal', async () => {
    const spawned = await spawnVault(configPath, { env });
    try {
      const { vault } = spawned;
      const key = await vault.storeKey();
      expect(key).toHaveLength(32);
      await expect(vault.storeKey()).rejects.toMatchObject({
        code: 'VAULT_STORE_KEY_ALREADY_RELEASED',
      });

      // What the purposes allow (keyvault/purposes): our subkey, our master key.
      const message = subkeyBytes(TEST_OWNER);
      const ed = await vault.publicKey('cross-signing-master');
      const sig = await vault.sign('cross-signing-master', message);
      expect(
        verify(
          null,
          message,
          createPublicKey({ key: Buffer.from(ed.spki), format: 'der', type: 'spki' }),
          sig,
        ),
      ).toBe(true);
      const ours = await ownMasterBytes(vault, TEST_OWNER);
      const rsa = await vault.publicKey('x509-identity');
      const rsaSig = await vault.sign('x509-identity', ours);
      const rsaKey = createPublicKey({ key: Buffer.from(rsa.spki), format: 'der', type: 'spki' });
      expect(verify('sha512', ours, { key: rsaKey, padding: 6, saltLength: 64 }, rsaSig)).toBe(
        true,
      );
      // Anything else is refused by the vault, whatever the backend.
      for (const purpose of ['cross-signing-master', 'x509-identity'] as const) {
        await expect(vault.sign(purpose, randomBytes(100))).rejects.toMatchObject({
          code: 'VAULT_SIGN_REFUSED',
        });
      }
      await expect(vault.sign('x509-identity', message)).rejects.toMatchObject({
        code: 'VAULT_SIGN_REFUSED',
      });

      const c1 = await vault.counterIncrement();
      expect(await vault.counterRead()).toBe(c1);
      expect(await vault.counterIncrement()).toBe(c1 + 1n);

      const nonce = randomBytes(32);
      if (backend === 'tpm') {
        const quote = await vault.quote(nonce, { hash: 'sha256', pcrs: [16] });
        expect(Buffer.from(quote.attest).includes(nonce)).toBe(true);
        const id = await vault.attestationIdentity();
        expect(id.akName).toHaveLength(34);
      } else {
        await expect(vault.quote(nonce, { hash: 'sha256', pcrs: [16] })).rejects.toMatchObject({
          code: 'VAULT_NOT_SUPPORTED',
        });
      }
    } finally {
      await spawned.stop();
    }
  });

  it('a restarted vault releases the same store key again (once)', async () => {
    const keys: string[] = [];
    for (let i = 0; i < 2; i++) {
      const spawned = await spawnVault(configPath, { env });
      try {
        keys.push(Buffer.from(await spawned.vault.storeKey()).toString('hex'));
      } finally {
        await spawned.stop();
      }
    }
    expect(keys[0]).toBe(keys[1]);
  });

  it('doctor reports what is wrong when the vault cannot even open', async () => {
    const broken =
      backend === 'tpm'
        ? await writeConfig('tpm-broken', {
            backend: 'tpm',
            stateDir: 'tpm-state',
            transport: { swtpm: { host: '127.0.0.1', port: 1, ctrlPort: 2 } },
            pcrs: [16],
          })
        : await writeConfig('pkcs11-broken', {
            backend: 'pkcs11',
            stateDir: 'pkcs11-state',
            module: hsm().modulePath,
            token: `pkcs11:token=${hsm().label}`,
            pin: { env: 'MTE_TEST_WRONG_PIN' },
          });
    const wrongPin = 'wrong-pin-1234';
    const failure = await run(process.execPath, [VAULT, 'doctor', '--config', broken, '--json'], {
      env: { ...env, MTE_TEST_WRONG_PIN: wrongPin },
    }).then(
      () => undefined,
      (e: unknown) => e as { code: number; stdout: string; stderr: string },
    );
    expect(failure?.code).toBe(1);
    const out = JSON.parse(failure?.stdout ?? '{}') as {
      ok: boolean;
      checks: { check: string; ok: boolean }[];
    };
    expect(out.ok).toBe(false);
    expect(out.checks.some((c) => !c.ok)).toBe(true);
    if (backend === 'pkcs11') expect(out.checks.some((c) => c.ok)).toBe(true); // module and token were fine
    expect(`${failure?.stdout ?? ''}${failure?.stderr ?? ''}`).not.toContain(wrongPin);
    expect(failure?.stderr ?? '').not.toMatch(/\n\s+at /);
  });
});
