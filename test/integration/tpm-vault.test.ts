import { execFile } from 'node:child_process';
import { X509Certificate, createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TpmConfig } from '../../keyvault/config.ts';
import { spawnVault } from '../../keyvault/index.ts';
import { openTpmVault } from '../../keyvault/tpm/backend.ts';
import { COMMAND_TIMEOUT_MS, TpmClient, parsePublic } from '../../keyvault/tpm/index.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';
import { type Swtpm, startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { opensslVerifyRsaPss } from '../fixtures/openssl.ts';

const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm());
const other = useFixture(() => startSwtpm());
const PCR = 16;
// Named in the configuration, so tpm2_nvread can be pointed at it: free on a fresh swtpm, so
// the vault defines it and it is its own (the other tests leave nvCounterIndex out).
const COUNTER = 0x01a0cafe;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-tpm-vault-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(t: Swtpm, stateDir = join(dir, 'state')): TpmConfig {
  return {
    backend: 'tpm',
    stateDir,
    transport: { swtpm: { host: t.host, port: t.port, ctrlPort: t.ctrlPort } },
    pcrs: [PCR],
    nvCounterIndex: COUNTER,
  };
}

/** Opens the vault, runs `use`, and always closes it (swtpm serves one connection at a time). */
async function withVault<T>(cfg: TpmConfig, use: (v: VaultBackend) => Promise<T>): Promise<T> {
  const v = await openTpmVault(cfg);
  try {
    return await use(v);
  } finally {
    await v.close();
  }
}

async function extendPolicyPcr(t: Swtpm): Promise<void> {
  const c = new TpmClient(await t.connect());
  try {
    await c.pcrExtend(PCR, createHash('sha256').update(randomBytes(8)).digest());
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

describe('the TPM vault backend on swtpm', () => {
  let firstKey: Uint8Array;
  let spkis: Uint8Array[];

  it('provisions everything once, and a re-run keeps every key', async () => {
    const first = await withVault(config(tpm()), (v) => v.provision());
    expect(first.created).toHaveLength(5);
    const again = await withVault(config(tpm()), (v) => v.provision());
    expect(again.created).toEqual([]);
    expect(again.kept).toHaveLength(5);
    const status = await withVault(config(tpm()), (v) => v.status());
    expect(status).toMatchObject({
      backend: 'tpm',
      provisioned: {
        storeKey: true,
        counter: true,
        purposes: ['cross-signing-master', 'x509-identity'],
        attestationKey: true,
        // A new TPM counter starts at the highest value any counter had, here at least 1.
        counterStart: expect.stringMatching(/^[1-9][0-9]*$/) as string,
      },
      capabilities: { missing: [] },
    });
    expect(status.identity).toMatch(/^IBM/);
  });

  it('releases the same 32-byte store key once per vault lifetime', async () => {
    await withVault(config(tpm()), async (v) => {
      firstKey = await v.storeKey();
      expect(firstKey).toHaveLength(32);
      await expect(v.storeKey()).rejects.toMatchObject({
        code: 'VAULT_STORE_KEY_ALREADY_RELEASED',
      });
    });
    const again = await withVault(config(tpm()), (v) => v.storeKey());
    expect(Buffer.from(again).equals(Buffer.from(firstKey))).toBe(true);
  });

  it('signs Ed25519 (node:crypto verifies) and RSA-PSS SHA-512 salt 64 (openssl verifies); keys survive re-provisioning', async () => {
    const message = Buffer.from(
      '{"keys":{"ed25519:abc":"xyz"},"usage":["master"],"user_id":"@a:b"}',
    );
    await withVault(config(tpm()), async (v) => {
      const ed = await v.publicKey('cross-signing-master');
      const rsa = await v.publicKey('x509-identity');
      spkis = [ed.spki, rsa.spki];
      const edKey = createPublicKey({ key: Buffer.from(ed.spki), format: 'der', type: 'spki' });
      const edSig = await v.sign('cross-signing-master', message);
      expect(verify(null, message, edKey, edSig)).toBe(true);
      expect(verify(null, Buffer.concat([message, Buffer.from('!')]), edKey, edSig)).toBe(false);

      const rsaSig = await v.sign('x509-identity', message);
      expect(await opensslVerifyRsaPss(rsa.spki, message, rsaSig)).toBe(true);
      expect(
        await opensslVerifyRsaPss(rsa.spki, Buffer.concat([message, Buffer.from('!')]), rsaSig),
      ).toBe(false);
      await expect(v.sign('nope' as 'x509-identity', message)).rejects.toMatchObject({
        code: 'VAULT_BAD_REQUEST',
      });
    });
    await withVault(config(tpm()), (v) => v.provision());
    await withVault(config(tpm()), async (v) => {
      expect(Buffer.from((await v.publicKey('cross-signing-master')).spki)).toEqual(
        Buffer.from(spkis[0] ?? []),
      );
      expect(Buffer.from((await v.publicKey('x509-identity')).spki)).toEqual(
        Buffer.from(spkis[1] ?? []),
      );
    });
  });

  it('quotes with the attestation key; tpm2_checkquote verifies the quote and rejects a wrong nonce', async () => {
    const nonce = randomBytes(32);
    const { quote, id } = await withVault(config(tpm()), async (v) => ({
      quote: await v.quote(nonce, { hash: 'sha256', pcrs: [PCR, 0] }),
      id: await v.attestationIdentity(),
    }));
    const size = Buffer.alloc(2);
    size.writeUInt16BE(id.akPublic.length);
    await writeFile(join(dir, 'ak.pub'), Buffer.concat([size, id.akPublic]));
    await writeFile(join(dir, 'q.msg'), quote.attest);
    await writeFile(join(dir, 'q.sig'), quote.signature);
    const args = [
      '-u',
      join(dir, 'ak.pub'),
      '-m',
      join(dir, 'q.msg'),
      '-s',
      join(dir, 'q.sig'),
      '-g',
      'sha256',
      '-q',
    ];
    await expect(run('tpm2_checkquote', [...args, nonce.toString('hex')])).resolves.toBeDefined();
    await expect(
      run('tpm2_checkquote', [...args, randomBytes(32).toString('hex')]),
    ).rejects.toThrow();
    expect(quote.pcrValues.map((p) => p.pcr)).toEqual([0, PCR]);
    expect(parsePublic(id.akPublic).ecc?.curve).toBe(3);
  });

  it('counts strictly upwards across vault and TPM restarts, as tpm2_nvread sees it', async () => {
    const seen: bigint[] = [];
    for (let i = 0; i < 3; i++) {
      seen.push(await withVault(config(tpm()), (v) => v.counterIncrement()));
      if (i === 1) await tpm().restart();
    }
    expect(seen[1]).toBeGreaterThan(seen[0] ?? 0n);
    expect(seen[2]).toBeGreaterThan(seen[1] ?? 0n);
    const { stdout } = await run(
      'tpm2_nvread',
      ['-C', 'o', '-s', '8', `0x${COUNTER.toString(16)}`],
      {
        env: { ...process.env, TPM2TOOLS_TCTI: tpm().tcti },
        encoding: 'buffer',
      },
    );
    expect(stdout.readBigUInt64BE(0)).toBe(seen[2]);
    expect(await withVault(config(tpm()), (v) => v.counterRead())).toBe(seen[2]);
  });

  it('refuses to unseal after a policy PCR changes; doctor says why; a reboot restores it', async () => {
    await extendPolicyPcr(tpm());
    const error = await errorOf(withVault(config(tpm()), (v) => v.storeKey()));
    expect(error).toMatchObject({ code: 'VAULT_POLICY_MISMATCH' });
    expect((error as Error).message).toMatch(/PCR values differ/);
    const checks = await withVault(config(tpm()), (v) => v.doctor());
    expect(checks.find((c) => c.check.startsWith('sealing policy'))).toMatchObject({ ok: false });
    await tpm().restart(); // PCRs back to their boot values
    const key = await withVault(config(tpm()), (v) => v.storeKey());
    expect(Buffer.from(key).equals(Buffer.from(firstKey))).toBe(true);
  });

  it('a copied state directory is useless next to another TPM', async () => {
    const copy = join(dir, 'copied');
    await cp(join(dir, 'state'), copy, { recursive: true });
    const cfg = config(other(), copy);
    const attempts: ((v: VaultBackend) => Promise<unknown>)[] = [
      (v: VaultBackend) => v.storeKey(),
      (v: VaultBackend) => v.sign('cross-signing-master', Buffer.from('x')),
      (v: VaultBackend) => v.sign('x509-identity', Buffer.from('x')),
      (v: VaultBackend) => v.quote(randomBytes(8), { hash: 'sha256', pcrs: [0] }),
      (v: VaultBackend) => v.counterRead(),
      (v: VaultBackend) => v.provision(),
    ];
    for (const attempt of attempts) {
      expect(await errorOf(withVault(cfg, attempt))).toMatchObject({
        code: 'VAULT_FOREIGN_OR_TAMPERED',
      });
    }
  });

  it('a tampered sealed blob is refused with a typed error', async () => {
    const tampered = join(dir, 'tampered');
    await cp(join(dir, 'state'), tampered, { recursive: true });
    const file = join(tampered, 'tpm-vault.json');
    const state = JSON.parse(await readFile(file, 'utf8')) as { storeKey: { private: string } };
    const priv = Buffer.from(state.storeKey.private, 'base64');
    priv[priv.length - 1] = (priv[priv.length - 1] ?? 0) ^ 1;
    state.storeKey.private = priv.toString('base64');
    await writeFile(file, JSON.stringify(state));
    expect(await errorOf(withVault(config(tpm(), tampered), (v) => v.storeKey()))).toMatchObject({
      code: 'VAULT_FOREIGN_OR_TAMPERED',
    });
    await writeFile(file, '{"version": 3}');
    expect(await errorOf(withVault(config(tpm(), tampered), (v) => v.storeKey()))).toMatchObject({
      code: 'VAULT_FOREIGN_OR_TAMPERED',
    });
  });

  it('refuses a version 1 state (storage key and counter shared with every vault), saying what to do', async () => {
    const old = join(dir, 'version-1');
    await cp(join(dir, 'state'), old, { recursive: true });
    const file = join(old, 'tpm-vault.json');
    const state = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    await writeFile(
      file,
      JSON.stringify({
        ...state,
        version: 1,
        parentUnique: undefined,
        counter: undefined,
        counterIndex: COUNTER,
      }),
    );
    const ops: ((v: VaultBackend) => Promise<unknown>)[] = [
      (v) => v.storeKey(),
      (v) => v.provision(),
    ];
    for (const op of ops) {
      const error = await errorOf(withVault(config(tpm(), old), op));
      expect(error).toMatchObject({ code: 'VAULT_CONFIG' });
      expect((error as Error).message).toMatch(/version 1 .*move it away and run "vault init"/);
    }
  });

  it('a TPM that is not there is a typed error, not a crash', async () => {
    const cfg: TpmConfig = {
      ...config(tpm()),
      transport: { swtpm: { host: '127.0.0.1', port: 1, ctrlPort: 2 } },
    };
    expect(await errorOf(openTpmVault(cfg))).toMatchObject({ code: 'VAULT_HARDWARE_UNREACHABLE' });
  });

  it('runs 1,000 consecutive operations without leaking a handle', async () => {
    await withVault(config(tpm()), async (v) => {
      for (let i = 0; i < 1000; i++) {
        switch (i % 5) {
          case 0:
            await v.random(16);
            break;
          case 1:
            await v.counterRead();
            break;
          case 2:
            await v.quote(randomBytes(16), { hash: 'sha256', pcrs: [PCR] });
            break;
          case 3:
            await v.sign('x509-identity', Buffer.from(`m${i}`));
            break;
          default:
            await v.publicKey('x509-identity');
        }
      }
    });
    const c = new TpmClient(await tpm().connect());
    try {
      expect(await c.transientHandles()).toEqual([]);
      expect(await c.loadedSessions()).toEqual([]);
    } finally {
      await c.close();
    }
  }, 600_000);
});

describe('the EK certificate, where the TPM has one', () => {
  const manufactured = useFixture(() => startSwtpm({ ekCertificate: true }));

  it('comes with the attestation identity, issued by the manufacturer CA', async () => {
    const cfg = config(manufactured(), join(dir, 'ek-state'));
    await withVault(cfg, (v) => v.provision());
    const id = await withVault(cfg, (v) => v.attestationIdentity());
    expect(id.ekCertificate).toBeDefined();
    const cert = new X509Certificate(Buffer.from(id.ekCertificate ?? []));
    const issuer = new X509Certificate(manufactured().ekIssuer ?? '');
    expect(cert.verify(issuer.publicKey)).toBe(true);
    expect(cert.checkIssued(issuer)).toBe(true);
  });

  it('is absent, not invented, on a TPM without one', async () => {
    const id = await withVault(config(tpm()), (v) => v.attestationIdentity());
    expect(id.ekCertificate).toBeUndefined();
  });
});

describe('the TPM vault under concurrent requests', () => {
  it('releases the store key to exactly one of many racing calls, and serves concurrent signs', async () => {
    const v = await openTpmVault(config(tpm()));
    try {
      const results = await Promise.allSettled(Array.from({ length: 5 }, () => v.storeKey()));
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      for (const r of results.filter((x) => x.status === 'rejected')) {
        expect(r.reason).toMatchObject({ code: 'VAULT_STORE_KEY_ALREADY_RELEASED' });
      }
      const sigs = await Promise.all(
        Array.from({ length: 6 }, (_, i) => v.sign('x509-identity', Buffer.from(`m${i}`))),
      );
      expect(sigs).toHaveLength(6);
    } finally {
      await v.close();
    }
  });
});

describe('a TPM that does not answer (swtpm SIGSTOPped)', () => {
  it('is VAULT_NOT_RESPONDING within the command timeout; the same vault answers again once the TPM does', async () => {
    // A shorter deadline than the default, to keep the test short; the RPC test below uses
    // the default.
    const timeoutMs = 1500;
    const v = await openTpmVault(config(tpm()), { commandTimeoutMs: timeoutMs });
    try {
      const before = await v.counterRead();
      tpm().freeze();
      try {
        const calls = [
          () => v.sign('x509-identity', Buffer.from('while frozen')),
          () => v.counterIncrement(),
          () => v.random(8),
        ];
        for (const call of calls) {
          const started = Date.now();
          const error = await errorOf(call());
          const took = Date.now() - started;
          expect(error).toMatchObject({ code: 'VAULT_NOT_RESPONDING' });
          expect((error as Error).message).toMatch(
            /did not answer within 1.5 s \(frozen or busy\)/,
          );
          expect(took).toBeGreaterThanOrEqual(timeoutMs - 50);
          expect(took).toBeLessThan(timeoutMs + 2000);
        }
      } finally {
        tpm().thaw();
      }
      // The increment was never sent: it was still waiting when its time ran out.
      expect(await v.counterRead()).toBe(before);
      const rsa = await v.publicKey('x509-identity');
      const message = Buffer.from('after the thaw');
      expect(
        await opensslVerifyRsaPss(rsa.spki, message, await v.sign('x509-identity', message)),
      ).toBe(true);
      expect(await v.counterIncrement()).toBe(before + 1n);
    } finally {
      tpm().thaw();
      await v.close();
    }
    // What the TPM did late for the commands given up on was flushed when it came back.
    const c = new TpmClient(await tpm().connect());
    try {
      expect(await c.transientHandles()).toEqual([]);
      expect(await c.loadedSessions()).toEqual([]);
    } finally {
      await c.close();
    }
  }, 60_000);

  it('crosses the vault RPC as VAULT_NOT_RESPONDING, well before the RPC client gives up', async () => {
    const configPath = join(dir, 'frozen.json');
    await writeFile(configPath, JSON.stringify(config(tpm())), { mode: 0o600 });
    const spawned = await spawnVault(configPath);
    try {
      const { vault } = spawned;
      const before = await vault.counterRead();
      tpm().freeze();
      try {
        const started = Date.now();
        const error = await errorOf(vault.counterRead());
        expect(error).toMatchObject({ code: 'VAULT_NOT_RESPONDING' });
        expect((error as Error).message).toMatch(/did not answer within 5 s \(frozen or busy\)/);
        // The RPC client's own deadline is 10 s (keyvault/common/rpc/client.ts).
        expect(Date.now() - started).toBeLessThan(COMMAND_TIMEOUT_MS + 3000);
      } finally {
        tpm().thaw();
      }
      expect(await vault.counterRead()).toBe(before);
    } finally {
      tpm().thaw();
      await spawned.stop();
    }
  }, 60_000);
});
