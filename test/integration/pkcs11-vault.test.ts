import { execFile } from 'node:child_process';
import {
  constants as cryptoConstants,
  createPublicKey,
  randomBytes,
  verify,
  type KeyObject,
} from 'node:crypto';
import { cp, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pkcs11js, { type PKCS11 } from 'pkcs11js';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Pkcs11Config } from '../../keyvault/config.ts';
import { diagnosePkcs11, openPkcs11Vault } from '../../keyvault/pkcs11/index.ts';
import { STORE_KEY_FILE } from '../../keyvault/pkcs11/store-key-file.ts';
import { VAULT_ID_FILE } from '../../keyvault/pkcs11/vault-id.ts';
import {
  VaultCode,
  VaultError,
  type ProvisionReport,
  type SigningPurpose,
  type VaultBackend,
} from '../../keyvault/vault.ts';
import { startSoftHsm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { opensslVerifyRsaPss } from '../fixtures/openssl.ts';

/**
 * The PKCS#11 backend against a real SoftHSM2 token, cross-checked with node:crypto, the openssl
 * CLI, pkcs11-tool and raw pkcs11js calls. Tests run in order and share one provisioned token;
 * a second token (label with a space, so the URI needs percent-encoding) lives in the same
 * token dir, because SoftHSM reads SOFTHSM2_CONF once per process.
 */

const run = promisify(execFile);
const hsm = useFixture(() => startSoftHsm());

const other = {
  label: `other token ${randomBytes(3).toString('hex')}`,
  pin: randomBytes(8).toString('hex'),
  pinFile: '',
};

beforeAll(async () => {
  process.env.SOFTHSM2_CONF = hsm().env.SOFTHSM2_CONF;
  other.pinFile = join(hsm().dir, 'other.pin');
  await writeFile(other.pinFile, other.pin, { mode: 0o600 });
  const soPin = randomBytes(8).toString('hex');
  await run(
    'softhsm2-util',
    ['--init-token', '--free', '--label', other.label, '--so-pin', soPin, '--pin', other.pin],
    { env: hsm().env },
  );
});

function config(overrides: Partial<Pkcs11Config> = {}): Pkcs11Config {
  return {
    backend: 'pkcs11',
    stateDir: join(hsm().dir, 'state'),
    module: hsm().modulePath,
    token: `pkcs11:token=${encodeURIComponent(hsm().label)}`,
    pin: { file: hsm().pinFile },
    ...overrides,
  };
}

function otherConfig(stateDir: string): Pkcs11Config {
  return config({
    stateDir,
    token: `pkcs11:token=${encodeURIComponent(other.label)}`,
    pin: { file: other.pinFile },
  });
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

/** The error, as the caller and the RPC see it, carries no secret and no native detail. */
function expectClean(e: VaultError, ...secrets: string[]): void {
  const seen = [e.message, JSON.stringify(e), String(e.stack)];
  for (const secret of [hsm().pin, other.pin, ...secrets]) {
    for (const text of seen) expect(text).not.toContain(secret);
  }
  expect(e.cause).toBeUndefined();
  expect(e.message).not.toMatch(/pkcs11js|node_modules/);
}

function spkiKey(spki: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
}

/** A raw pkcs11js session as the token's user, for checks behind the vault's back. */
function raw<T>(label: string, pin: string, fn: (p11: PKCS11, session: Buffer) => T): T {
  const p11 = new pkcs11js.PKCS11();
  p11.load(hsm().modulePath);
  p11.C_Initialize();
  try {
    const slot = p11
      .C_GetSlotList(true)
      .find((s) => p11.C_GetTokenInfo(s).label.trimEnd() === label);
    if (!slot) throw new Error(`token ${label} not found`);
    const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_Login(session, pkcs11js.CKU_USER, pin);
    try {
      return fn(p11, session);
    } finally {
      p11.C_CloseSession(session);
    }
  } finally {
    p11.C_Finalize();
  }
}

function findByLabel(p11: PKCS11, session: Buffer, cls: number, label: string): Buffer {
  p11.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  const found = p11.C_FindObjects(session, 10);
  p11.C_FindObjectsFinal(session);
  expect(found).toHaveLength(1);
  return found[0] as Buffer;
}

/** The CKR code a raw call failed with (or 'no error'). */
function ckrThrown(fn: () => unknown): number | string {
  try {
    fn();
    return 'no error';
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    const m = /CKR_\w+:(\d+)/.exec(String(e));
    return m ? Number(m[1]) : String(e);
  }
}

describe('opening the vault fails clearly', () => {
  it('refuses a wrong PIN (file or env) with VAULT_WRONG_PIN, never showing the PIN', async () => {
    const wrong = `wrong-${randomBytes(6).toString('hex')}`;
    const wrongFile = join(hsm().dir, 'wrong.pin');
    await writeFile(wrongFile, wrong, { mode: 0o600 });
    const e1 = await rejection(openPkcs11Vault(config({ pin: { file: wrongFile } })));
    expect(e1.code).toBe(VaultCode.WrongPin);
    expect(e1.message).toMatch(/CKR_PIN_INCORRECT/);
    expectClean(e1, wrong);

    process.env.MTE_TEST_WRONG_PIN = wrong;
    const e2 = await rejection(openPkcs11Vault(config({ pin: { env: 'MTE_TEST_WRONG_PIN' } })));
    expect(e2.code).toBe(VaultCode.WrongPin);
    expectClean(e2, wrong);
    delete process.env.MTE_TEST_WRONG_PIN;

    // The right PIN through the environment works (and the failures left no module state).
    process.env.MTE_TEST_PIN = hsm().pin;
    await withVault(config({ pin: { env: 'MTE_TEST_PIN' } }), async (v) => {
      expect((await v.status()).backend).toBe('pkcs11');
    });
    delete process.env.MTE_TEST_PIN;
  });

  it('reports a token that is not there as VAULT_TOKEN_NOT_FOUND', async () => {
    const e = await rejection(openPkcs11Vault(config({ token: 'pkcs11:token=no-such-token' })));
    expect(e.code).toBe(VaultCode.TokenNotFound);
    expect(e.message).toContain('no token matches pkcs11:token=no-such-token');
    expectClean(e);
  });

  it('reports a missing or unloadable module as VAULT_HARDWARE_UNREACHABLE', async () => {
    const missing = await rejection(
      openPkcs11Vault(config({ module: '/nonexistent/libnothing.so' })),
    );
    expect(missing.code).toBe(VaultCode.Unreachable);
    expect(missing.message).toContain('/nonexistent/libnothing.so');
    expectClean(missing);

    const notALibrary = join(hsm().dir, 'softhsm2.conf');
    const bad = await rejection(openPkcs11Vault(config({ module: notALibrary })));
    expect(bad.code).toBe(VaultCode.Unreachable);
    expect(bad.message).toMatch(/could not load/);
    expectClean(bad);
  });

  it('refuses malformed or unsupported token URIs with VAULT_CONFIG', async () => {
    for (const token of [
      'pkcs11:token=%zz',
      'pkcs11:object=mte-store-kek',
      'pkcs11:token=a;token=b',
      'pkcs11:',
    ]) {
      const e = await rejection(openPkcs11Vault(config({ token })));
      expect(e.code, token).toBe(VaultCode.Config);
    }
    const e = await rejection(
      openPkcs11Vault(config({ token: `pkcs11:token=x?pin-value=${hsm().pin}` })),
    );
    expect(e.code).toBe(VaultCode.Config);
    expectClean(e);
  });

  it('doctor says which opening step failed, without the PIN', async () => {
    const wrongFile = join(hsm().dir, 'wrong.pin');
    const checks = await diagnosePkcs11(config({ pin: { file: wrongFile } }));
    expect(checks.map((c) => [c.check, c.ok])).toEqual([
      ['module loads', true],
      ['token found', true],
      ['login works', false],
    ]);
    expect(checks[2]?.detail).toMatch(/rejected the PIN/);
    expect(JSON.stringify(checks)).not.toContain(hsm().pin);

    const noModule = await diagnosePkcs11(config({ module: '/nonexistent/libnothing.so' }));
    expect(noModule.map((c) => c.ok)).toEqual([false, false, false]);
    expect(noModule[0]?.detail).toMatch(/does not exist/);
  });
});

describe('an unprovisioned token', () => {
  it('says so: status, doctor, and every key operation (VAULT_NOT_PROVISIONED)', async () => {
    await withVault(otherConfig(join(hsm().dir, 'unprovisioned-state')), async (v) => {
      const status = await v.status();
      expect(status.provisioned).toEqual({
        storeKey: false,
        counter: false,
        purposes: [],
        attestationKey: false,
      });
      for (const attempt of [
        v.storeKey(),
        v.counterRead(),
        v.counterIncrement(),
        v.publicKey('cross-signing-master'),
        v.sign('x509-identity', new Uint8Array([1])),
      ]) {
        expect((await rejection(attempt)).code).toBe(VaultCode.NotProvisioned);
      }
      const checks = await v.doctor();
      const failing = checks.filter((c) => !c.ok);
      expect(failing.map((c) => c.check)).toEqual([
        'vault identity',
        'object mte-store-kek',
        'store-key file',
        'object mte-cross-signing-master',
        'object mte-x509-identity',
        'object mte-counter',
      ]);
      for (const c of failing) expect(c.detail).toMatch(/run "vault init"/);
    });
  });
});

describe('a provisioned token', () => {
  let first: ProvisionReport;
  const spkiBefore = new Map<SigningPurpose, string>();

  beforeAll(async () => {
    await withVault(config(), async (v) => {
      const before = await v.status();
      expect(before.provisioned).toEqual({
        storeKey: false,
        counter: false,
        purposes: [],
        attestationKey: false,
      });
      first = await v.provision();
      for (const p of ['cross-signing-master', 'x509-identity'] as const) {
        spkiBefore.set(p, Buffer.from((await v.publicKey(p)).spki).toString('hex'));
      }
    });
  });

  it('provision creates everything once, then keeps it (same public keys after reopening)', async () => {
    const all = [
      'vault-id',
      'counter',
      'store-kek',
      'store-key',
      'cross-signing-master',
      'x509-identity',
    ];
    expect(first).toEqual({ created: all, kept: [] });
    await withVault(config(), async (v) => {
      expect(await v.provision()).toEqual({ created: [], kept: all });
      for (const p of ['cross-signing-master', 'x509-identity'] as const) {
        expect(Buffer.from((await v.publicKey(p)).spki).toString('hex')).toBe(spkiBefore.get(p));
      }
      const status = await v.status();
      expect(status.provisioned).toEqual({
        storeKey: true,
        counter: true,
        counterStart: '0',
        purposes: ['cross-signing-master', 'x509-identity'],
        attestationKey: false,
      });
    });
  });

  it('status names the token, the mechanisms and the weak counter; doctor is all green', async () => {
    await withVault(config(), async (v) => {
      const status = await v.status();
      expect(status.backend).toBe('pkcs11');
      expect(status.identity).toContain(`"${hsm().label}"`);
      expect(status.identity).toMatch(/SoftHSM project SoftHSM v2, serial [0-9a-f]{16}/);
      expect(status.capabilities.missing).toEqual([]);
      expect(status.capabilities.found).toEqual(
        expect.arrayContaining(['CKM_EDDSA', 'CKM_AES_GCM', 'CKM_SHA512_RSA_PKCS_PSS']),
      );
      expect(status.counterGuarantee).toMatch(/weaker than a TPM NV counter/);
      expect(status.counterGuarantee).toMatch(/user PIN/);
      expect(status.counterGuarantee).toMatch(/backup/);
      expect(status.warnings.join(' ')).toMatch(/software token/);
      const checks = await v.doctor();
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      expect(checks.map((c) => c.check)).toEqual(
        expect.arrayContaining([
          'module loads',
          'token found',
          'login works',
          'mechanism CKM_EDDSA',
          'object mte-store-kek',
          'object mte-counter',
        ]),
      );
    });
  });

  it('finds the token by serial, or by manufacturer, model and label', async () => {
    const serial = await withVault(
      config(),
      async (v) => /serial ([0-9a-f]+)/.exec((await v.status()).identity)?.[1],
    );
    expect(serial).toBeDefined();
    for (const token of [
      `pkcs11:serial=${serial ?? ''}`,
      `pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;token=${encodeURIComponent(hsm().label)}`,
    ]) {
      await withVault(config({ token }), async (v) => {
        expect((await v.status()).identity).toContain(hsm().label);
      });
    }
    // Two tokens match the model alone: ambiguous, refused.
    const e = await rejection(openPkcs11Vault(config({ token: 'pkcs11:model=SoftHSM%20v2' })));
    expect(e.code).toBe(VaultCode.Config);
  });

  it('keeps the store key as a versioned 0600 JSON file of iv and ciphertext||tag, naming its vault', async () => {
    const path = join(config().stateDir, STORE_KEY_FILE);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const json = JSON.parse(await readFile(path, 'utf8')) as Record<string, string | number>;
    const idPath = join(config().stateDir, VAULT_ID_FILE);
    expect((await stat(idPath)).mode & 0o777).toBe(0o600);
    const identity = JSON.parse(await readFile(idPath, 'utf8')) as Record<string, string | number>;
    expect(identity.vaultId).toMatch(/^[0-9a-f]{32}$/);
    expect(json.version).toBe(2);
    expect(json.vaultId).toBe(identity.vaultId);
    expect(json.tokenSerial).toBe(identity.tokenSerial);
    expect(Buffer.from(String(json.iv), 'base64')).toHaveLength(12);
    expect(Buffer.from(String(json.ciphertext), 'base64')).toHaveLength(48);
  });

  it('releases the same 32-byte store key once per lifetime, across reopening', async () => {
    const key1 = await withVault(config(), async (v) => {
      const key = await v.storeKey();
      const again = await rejection(v.storeKey());
      expect(again.code).toBe(VaultCode.StoreKeyReleased);
      return key;
    });
    expect(key1).toHaveLength(32);
    expect(Buffer.from(key1).equals(Buffer.alloc(32))).toBe(false);
    const key2 = await withVault(config(), (v) => v.storeKey());
    expect(Buffer.from(key2).equals(Buffer.from(key1))).toBe(true);
  });

  it('refuses a tampered store-key file with VAULT_FOREIGN_OR_TAMPERED', async () => {
    const original = JSON.parse(
      await readFile(join(config().stateDir, STORE_KEY_FILE), 'utf8'),
    ) as Record<string, unknown>;
    const flip = (b64: unknown, at: number): string => {
      const bytes = Buffer.from(String(b64), 'base64');
      bytes[at] = (bytes[at] ?? 0) ^ 0x01;
      return bytes.toString('base64');
    };
    const variants: Record<string, string> = {
      ciphertext: JSON.stringify({ ...original, ciphertext: flip(original.ciphertext, 5) }),
      tag: JSON.stringify({ ...original, ciphertext: flip(original.ciphertext, 40) }),
      iv: JSON.stringify({ ...original, iv: flip(original.iv, 0) }),
      serial: JSON.stringify({ ...original, tokenSerial: '0123456789abcdef' }),
      vaultId: JSON.stringify({ ...original, vaultId: 'ab'.repeat(16) }),
      version1: JSON.stringify({ ...original, version: 1, vaultId: undefined }),
      extraField: JSON.stringify({ ...original, note: 'x' }),
      notJson: '{"version": 1,',
    };
    const why: Record<string, RegExp> = {
      ciphertext: /does not decrypt/,
      tag: /does not decrypt/,
      iv: /does not decrypt/,
      serial: /belongs to another token/,
      vaultId: /belongs to another vault/,
      version1: /version 1 store-key file/,
      extraField: /not a valid store-key file/,
      notJson: /not valid JSON/,
    };
    for (const [name, body] of Object.entries(variants)) {
      // Beside this vault's own identity: only the store-key file differs.
      const dir = join(hsm().dir, `tampered-${name}`);
      await mkdir(dir, { recursive: true });
      await cp(join(config().stateDir, VAULT_ID_FILE), join(dir, VAULT_ID_FILE));
      await writeFile(join(dir, STORE_KEY_FILE), body, { mode: 0o600 });
      const e = await withVault(config({ stateDir: dir }), (v) => rejection(v.storeKey()));
      expect(e.code, name).toBe(VaultCode.ForeignOrTampered);
      expect(e.message, name).toMatch(why[name] ?? /never/);
      expectClean(e);
    }
    // Without the identity beside it, a store-key file is nobody's.
    const lone = join(hsm().dir, 'tampered-lone');
    await mkdir(lone, { recursive: true });
    await cp(join(config().stateDir, STORE_KEY_FILE), join(lone, STORE_KEY_FILE));
    await withVault(config({ stateDir: lone }), async (v) => {
      for (const attempt of [v.storeKey(), v.counterRead(), v.provision()]) {
        const e = await rejection(attempt);
        expect(e.code).toBe(VaultCode.ForeignOrTampered);
        expect(e.message).toMatch(/no vault identity/);
      }
    });
  });

  it('a state dir copied next to another token does not open there', async () => {
    const copied = join(hsm().dir, 'copied-state');
    await cp(config().stateDir, copied, { recursive: true });
    const otherSerial = await withVault(otherConfig(copied), async (v) => {
      const e = await rejection(v.storeKey());
      expect(e.code).toBe(VaultCode.ForeignOrTampered);
      expect(e.message).toMatch(/belongs to another token/);
      // Provisioning there refuses too, and leaves the files alone.
      expect((await rejection(v.provision())).code).toBe(VaultCode.ForeignOrTampered);
      return /serial ([0-9a-f]+)/.exec((await v.status()).identity)?.[1] ?? '';
    });

    // Even with the recorded serials forged to match, the other token cannot decrypt it:
    // it has no KEK of this vault's id.
    const keyPath = join(copied, STORE_KEY_FILE);
    const idPath = join(copied, VAULT_ID_FILE);
    const forgedKey = JSON.parse(await readFile(keyPath, 'utf8')) as Record<string, unknown>;
    const forgedId = JSON.parse(await readFile(idPath, 'utf8')) as Record<string, unknown>;
    await writeFile(keyPath, JSON.stringify({ ...forgedKey, tokenSerial: otherSerial }));
    await writeFile(idPath, JSON.stringify({ ...forgedId, tokenSerial: otherSerial }));
    await withVault(otherConfig(copied), async (v) => {
      const e = await rejection(v.storeKey());
      expect(e.code).toBe(VaultCode.ForeignOrTampered);
      expect(e.message).toMatch(/no mte-store-kek/);
    });
    // Nor when it names a vault that does exist on the other token: that vault's KEK, with its
    // serial and id as additional data, fails the tag.
    const otherState = join(hsm().dir, 'other-state');
    await withVault(otherConfig(otherState), async (v) => {
      const report = await v.provision();
      expect(report.created).toContain('store-kek');
    });
    const otherId = JSON.parse(await readFile(join(otherState, VAULT_ID_FILE), 'utf8')) as {
      vaultId: string;
    };
    await cp(join(otherState, VAULT_ID_FILE), idPath);
    await writeFile(
      keyPath,
      JSON.stringify({ ...forgedKey, tokenSerial: otherSerial, vaultId: otherId.vaultId }),
    );
    await withVault(otherConfig(copied), async (v) => {
      const e = await rejection(v.storeKey());
      expect(e.code).toBe(VaultCode.ForeignOrTampered);
      expect(e.message).toMatch(/does not decrypt/);
    });
  });

  it('Ed25519 signatures verify with node:crypto; a changed message does not', async () => {
    await withVault(config(), async (v) => {
      const info = await v.publicKey('cross-signing-master');
      expect(info.algorithm).toBe('ed25519');
      const key = spkiKey(info.spki);
      expect(key.asymmetricKeyType).toBe('ed25519');
      const message = Buffer.from('{"keys":{"ed25519:abc":"def"},"usage":["master"]}');
      const sig = await v.sign('cross-signing-master', message);
      expect(sig).toHaveLength(64);
      expect(verify(null, message, key, sig)).toBe(true);
      const changed = Buffer.from(message);
      changed[3] = (changed[3] ?? 0) ^ 0x01;
      expect(verify(null, changed, key, sig)).toBe(false);
    });
  });

  it('RSA-PSS-SHA512 signatures (salt 64) verify with the openssl CLI and node:crypto', async () => {
    const dir = join(hsm().dir, 'rsa');
    await mkdir(dir, { recursive: true });
    await withVault(config(), async (v) => {
      const info = await v.publicKey('x509-identity');
      expect(info.algorithm).toBe('rsa-pss-sha512');
      const key = spkiKey(info.spki);
      expect(key.asymmetricKeyDetails?.modulusLength).toBe(3072);
      const message = Buffer.from('the canonical JSON of a master key');
      const sig = await v.sign('x509-identity', message);
      expect(sig).toHaveLength(384);

      expect(await opensslVerifyRsaPss(info.spki, message, sig)).toBe(true);
      expect(
        await opensslVerifyRsaPss(info.spki, Buffer.concat([message, Buffer.from('!')]), sig),
      ).toBe(false);

      const pss = (saltLength: number) => ({
        key,
        padding: cryptoConstants.RSA_PKCS1_PSS_PADDING,
        saltLength,
      });
      expect(verify('sha512', message, pss(64), sig)).toBe(true);
      expect(verify('sha512', message, pss(32), sig)).toBe(false);
      expect(verify('sha512', Buffer.from('other'), pss(64), sig)).toBe(false);
    });
  });

  it('refuses an unknown purpose and bad random sizes with VAULT_BAD_REQUEST', async () => {
    await withVault(config(), async (v) => {
      const purpose = 'attestation' as SigningPurpose;
      expect((await rejection(v.sign(purpose, new Uint8Array([1])))).code).toBe(
        VaultCode.BadRequest,
      );
      expect((await rejection(v.publicKey(purpose))).code).toBe(VaultCode.BadRequest);
      for (const n of [0, 1025, 1.5, -1]) {
        expect((await rejection(v.random(n))).code, String(n)).toBe(VaultCode.BadRequest);
      }
      const a = await v.random(32);
      const b = await v.random(32);
      expect(a).toHaveLength(32);
      expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
      expect(await v.random(1024)).toHaveLength(1024);
    });
  });

  it('has no quotes or attestation key (VAULT_NOT_SUPPORTED)', async () => {
    await withVault(config(), async (v) => {
      const q = await rejection(v.quote(new Uint8Array(32), { hash: 'sha256', pcrs: [0] }));
      expect(q.code).toBe(VaultCode.NotSupported);
      expect(q.message).toMatch(/tpm backend/);
      expect((await rejection(v.attestationIdentity())).code).toBe(VaultCode.NotSupported);
    });
  });

  it('counts strictly upwards, across closing and reopening', async () => {
    const seen: bigint[] = [];
    await withVault(config(), async (v) => {
      seen.push(await v.counterRead());
      for (let i = 0; i < 3; i++) seen.push(await v.counterIncrement());
      expect(await v.counterRead()).toBe(seen.at(-1));
    });
    await withVault(config(), async (v) => {
      expect(await v.counterRead()).toBe(seen.at(-1));
      seen.push(await v.counterIncrement());
    });
    for (let i = 1; i < seen.length; i++) {
      expect(seen[i]).toBe((seen[i - 1] ?? 0n) + 1n);
    }
    // One counter object remains on the token, labelled with the vault id, holding a record:
    // magic, vault id, the last value big-endian, a 32-byte MAC.
    const { vaultId } = JSON.parse(
      await readFile(join(config().stateDir, VAULT_ID_FILE), 'utf8'),
    ) as { vaultId: string };
    raw(hsm().label, hsm().pin, (p11, session) => {
      const obj = findByLabel(p11, session, pkcs11js.CKO_DATA, `mte-counter-${vaultId}`);
      const [value] = p11.C_GetAttributeValue(session, obj, [{ type: pkcs11js.CKA_VALUE }]);
      const record = value?.value ?? Buffer.alloc(0);
      expect(record).toHaveLength(64);
      expect(record.subarray(0, 8).toString('ascii')).toBe('mte-ctr1');
      expect(record.subarray(8, 24).toString('hex')).toBe(vaultId);
      expect(record.readBigUInt64BE(24)).toBe(seen.at(-1));
    });
  });

  it('pkcs11-tool sees the keys as sensitive and never extractable', async () => {
    const { stdout } = await run(
      'pkcs11-tool',
      [
        '--module',
        hsm().modulePath,
        '--token-label',
        hsm().label,
        '--login',
        '--pin',
        hsm().pin,
        '--list-objects',
      ],
      { env: hsm().env },
    );
    const blocks = stdout.split(/\n(?=\S)/);
    for (const [kind, label] of [
      ['Secret Key Object', 'mte-store-kek'],
      ['Private Key Object', 'mte-cross-signing-master'],
      ['Private Key Object', 'mte-x509-identity'],
    ] as const) {
      const block = blocks.find((b) => b.startsWith(kind) && b.includes(`label:      ${label}`));
      expect(block, label).toBeDefined();
      const access = /Access:\s+(.*)/.exec(block ?? '')?.[1]?.split(', ') ?? [];
      expect(access, label).toEqual(
        expect.arrayContaining(['sensitive', 'always sensitive', 'never extractable']),
      );
      expect(access, label).not.toContain('extractable');
    }
  });

  it('the token refuses to reveal or wrap the KEK and the private keys', () => {
    raw(hsm().label, hsm().pin, (p11, session) => {
      const kek = findByLabel(p11, session, pkcs11js.CKO_SECRET_KEY, 'mte-store-kek');
      const rsa = findByLabel(p11, session, pkcs11js.CKO_PRIVATE_KEY, 'mte-x509-identity');
      const ed = findByLabel(p11, session, pkcs11js.CKO_PRIVATE_KEY, 'mte-cross-signing-master');
      const read = (key: Buffer, type: number) => () =>
        p11.C_GetAttributeValue(session, key, [{ type }]);
      expect(ckrThrown(read(kek, pkcs11js.CKA_VALUE))).toBe(pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
      expect(ckrThrown(read(rsa, pkcs11js.CKA_PRIVATE_EXPONENT))).toBe(
        pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      );
      expect(ckrThrown(read(ed, pkcs11js.CKA_VALUE))).toBe(pkcs11js.CKR_ATTRIBUTE_SENSITIVE);

      // A wrapping key the attacker controls (session object, wrap allowed).
      const wrapper = p11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_WRAP, value: true },
      ]);
      for (const key of [kek, rsa, ed]) {
        const wrap = () =>
          p11.C_WrapKey(
            session,
            { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD },
            wrapper,
            key,
            Buffer.alloc(4096),
          );
        expect(ckrThrown(wrap)).toBe(pkcs11js.CKR_KEY_UNEXTRACTABLE);
        // Nor can the flags be flipped to make it extractable.
        const unlock = () => {
          p11.C_SetAttributeValue(session, key, [{ type: pkcs11js.CKA_EXTRACTABLE, value: true }]);
        };
        // CKR_ACTION_PROHIBITED (0x1b, PKCS#11 2.40) or CKR_ATTRIBUTE_READ_ONLY.
        expect([0x1b, pkcs11js.CKR_ATTRIBUTE_READ_ONLY]).toContain(ckrThrown(unlock));
      }
    });
  });

  it('reconnects after its sessions are closed and after the module is finalised', async () => {
    await withVault(config(), async (v) => {
      const message = Buffer.from('still signing');
      const { spki } = await v.publicKey('cross-signing-master');
      // Another user of the module in this process pulls the rug twice.
      const intruder = new pkcs11js.PKCS11();
      intruder.load(hsm().modulePath);
      expect(
        ckrThrown(() => {
          intruder.C_Initialize();
        }),
      ).toBe(pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED);
      const slot = intruder
        .C_GetSlotList(true)
        .find((s) => intruder.C_GetTokenInfo(s).label.trimEnd() === hsm().label);
      expect(slot).toBeDefined();
      intruder.C_CloseAllSessions(slot as Buffer);
      const sig = await v.sign('cross-signing-master', message);
      expect(verify(null, message, spkiKey(spki), sig)).toBe(true);

      intruder.C_Finalize();
      expect(await v.random(16)).toHaveLength(16);
      expect((await v.status()).identity).toContain(hsm().label);
    });
  });

  it('a closed vault refuses calls, and closing twice is harmless', async () => {
    const v = await openPkcs11Vault(config());
    await v.close();
    await v.close();
    expect((await rejection(v.random(8))).code).toBe(VaultCode.BadRequest);
    expect((await rejection(v.counterRead())).code).toBe(VaultCode.BadRequest);
  });
});

describe("the counter is this vault's own", () => {
  const vaultId = async (): Promise<string> =>
    (
      JSON.parse(await readFile(join(config().stateDir, VAULT_ID_FILE), 'utf8')) as {
        vaultId: string;
      }
    ).vaultId;

  /** Our counter objects' handles, found behind the vault's back. */
  function counterObjects(p11: PKCS11, session: Buffer, id: string): Buffer[] {
    p11.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_LABEL, value: `mte-counter-${id}` },
    ]);
    const found = p11.C_FindObjects(session, 10);
    p11.C_FindObjectsFinal(session);
    return found;
  }

  function createData(p11: PKCS11, session: Buffer, label: string, value: Buffer, priv = true) {
    return p11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: priv },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_APPLICATION, value: 'matrix-trusted-endpoint' },
      { type: pkcs11js.CKA_VALUE, value },
    ]);
  }

  /** Destroys our label's objects holding `value` (handles do not survive a new session). */
  function destroyHolding(id: string, value: Buffer, atMost = Infinity): void {
    let left = atMost;
    raw(hsm().label, hsm().pin, (p11, session) => {
      for (const handle of counterObjects(p11, session, id)) {
        const [held] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE }]);
        if (left > 0 && held?.value.equals(value)) {
          p11.C_DestroyObject(session, handle);
          left--;
        }
      }
    });
  }

  /** Our one counter object's record. */
  function ourRecord(id: string): Buffer {
    return raw(hsm().label, hsm().pin, (p11, session) => {
      const found = counterObjects(p11, session, id);
      expect(found).toHaveLength(1);
      const [value] = p11.C_GetAttributeValue(session, found[0] as Buffer, [
        { type: pkcs11js.CKA_VALUE },
      ]);
      return Buffer.from(value?.value ?? Buffer.alloc(0));
    });
  }

  async function expectForeign(pattern: RegExp): Promise<void> {
    await withVault(config(), async (v) => {
      for (const attempt of [v.counterRead(), v.counterIncrement(), v.provision()]) {
        const e = await rejection(attempt);
        expect(e.code).toBe(VaultCode.CounterForeign);
        expect(e.message).toMatch(pattern);
        expect(e.message.split('\n')).toHaveLength(1);
      }
      const status = await v.status();
      expect(status.provisioned.counter).toBe(false);
      expect(status.warnings.join(' ')).toMatch(pattern);
      const check = (await v.doctor()).find((c) => c.check === 'object mte-counter');
      expect(check?.ok).toBe(false);
    });
  }

  it('refuses objects a PIN holder forges under its label (VAULT_COUNTER_FOREIGN), and takes none of them', async () => {
    const id = await vaultId();
    const before = await withVault(config(), (v) => v.counterRead());
    const u64 = (n: bigint) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(n);
      return b;
    };
    const badMac = Buffer.concat([
      Buffer.from('mte-ctr1'),
      Buffer.from(id, 'hex'),
      u64(before + 1000n),
      randomBytes(32),
    ]);
    const forgeries: [string, Buffer, boolean, RegExp][] = [
      ['an old-style u64 value', u64(before + 1000n), true, /does not hold a counter record/],
      ['a record with a made-up MAC', badMac, true, /does not carry this vault's MAC/],
      ['a public object', badMac, false, /public/],
    ];
    for (const [name, value, priv, pattern] of forgeries) {
      raw(hsm().label, hsm().pin, (p11, session) =>
        createData(p11, session, `mte-counter-${id}`, value, priv),
      );
      try {
        await expectForeign(pattern);
      } finally {
        destroyHolding(id, value);
      }
      // Gone again: the vault's own counter is intact and untouched.
      expect(await withVault(config(), (v) => v.counterRead()), name).toBe(before);
    }
  });

  it('refuses a copied or replayed record of its own: not one chain of values', async () => {
    const id = await vaultId();
    // A copy of the current object (C_CopyObject, or a restored backup of it): two equal values.
    const current = ourRecord(id);
    raw(hsm().label, hsm().pin, (p11, session) => {
      const [ours] = counterObjects(p11, session, id);
      p11.C_CopyObject(session, ours as Buffer, []);
    });
    try {
      await expectForeign(/not one value or one unfinished increment/);
    } finally {
      destroyHolding(id, current, 1);
    }

    // An old record replayed after two increments: valid MAC, but n and n+2.
    const old = ourRecord(id);
    const next = await withVault(config(), async (v) => {
      await v.counterIncrement();
      return v.counterIncrement();
    });
    raw(hsm().label, hsm().pin, (p11, session) =>
      createData(p11, session, `mte-counter-${id}`, old),
    );
    try {
      await expectForeign(/values \d+, \d+/);
    } finally {
      destroyHolding(id, old);
    }
    expect(await withVault(config(), (v) => v.counterRead())).toBe(next);
  });

  it('a deleted counter is refused, and init will not start a new one at 0 (a rollback)', async () => {
    const id = await vaultId();
    const saved = raw(hsm().label, hsm().pin, (p11, session) => {
      const [ours] = counterObjects(p11, session, id);
      const [value] = p11.C_GetAttributeValue(session, ours as Buffer, [
        { type: pkcs11js.CKA_VALUE },
      ]);
      p11.C_DestroyObject(session, ours as Buffer);
      return Buffer.from(value?.value ?? Buffer.alloc(0));
    });
    await expectForeign(/no longer on the token/);
    raw(hsm().label, hsm().pin, (p11, session) => {
      expect(counterObjects(p11, session, id)).toHaveLength(0);
      // Putting the genuine last record back is accepted: it is this vault's, and current.
      createData(p11, session, `mte-counter-${id}`, saved);
    });
    await withVault(config(), async (v) => {
      expect(await v.counterRead()).toBe(saved.readBigUInt64BE(24));
      expect((await v.provision()).kept).toContain('counter');
    });
  });
});
