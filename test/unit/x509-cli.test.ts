import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openssl } from '../fixtures/x509.ts';

const MAIN = fileURLToPath(new URL('../../deploy/x509/main.ts', import.meta.url));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(cwd: string, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { cwd }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

// Each run starts the command (about 0.4 s) and makes RSA keys.
describe('x509 CLI', { timeout: 60_000 }, () => {
  let dir: string;
  const run = (...args: string[]) => cli(dir, ...args);
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mte-x509-cli-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prints help, and one-line usage errors with exit 2', async () => {
    const help = await run('--help');
    expect(help.code).toBe(0);
    for (const c of ['ca', 'intermediate', 'issue', 'check']) expect(help.stdout).toContain(c);
    expect((await run('issue', '--help')).stdout).toContain('matrix:u/LOCAL:SERVER');
    for (const args of [
      [],
      ['frobnicate'],
      ['ca'],
      ['ca', '--out', 'x', '--key-type', 'dsa'],
      ['check', '--user', '@a:b'],
    ]) {
      const r = await run(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^x509: [^\n]+\n$/);
      expect(r.stdout).toBe('');
    }
  });

  it('makes a CA (key 0600, never replaced), an intermediate and leaves, --json', async () => {
    const ca = await run('ca', '--out', 'root', '--name', 'Example Root', '--json');
    expect(ca.code, ca.stderr).toBe(0);
    const out = JSON.parse(ca.stdout) as { ok: boolean; ski: string; key: string };
    expect(out.ok).toBe(true);
    expect((await stat(join(dir, 'root.key'))).mode & 0o777).toBe(0o600);
    const again = await run('ca', '--out', 'root');
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^x509: root\.key exists; a key file is never replaced/);
    const inter = await run(
      'intermediate',
      '--ca',
      'root.pem',
      '--ca-key',
      'root.key',
      '--out',
      'inter',
      '--key-type',
      'rsa-4096',
    );
    expect(inter.code, inter.stderr).toBe(0);
    const leaf = await run(
      'issue',
      '--user',
      '@alice:example.org',
      '--ca',
      'root.pem',
      '--ca-key',
      'root.key',
      '--out',
      'alice',
    );
    expect(leaf.code, leaf.stderr).toBe(0);
    expect((await stat(join(dir, 'alice.key'))).mode & 0o777).toBe(0o600);
    const viaInter = await run(
      'issue',
      '--user',
      '@carol:example.org',
      '--ca',
      'inter.pem',
      '--ca-key',
      'inter.key',
      '--root',
      'root.pem',
      '--out',
      'carol',
    );
    expect(viaInter.code, viaInter.stderr).toBe(0);
    // The chain file is leaf then intermediate; openssl verifies it up to the root.
    const chain = await readFile(join(dir, 'carol.chain.pem'), 'utf8');
    expect(chain.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
    const v = await openssl(
      ['verify', '-CAfile', 'root.pem', '-untrusted', 'inter.pem', 'carol.pem'],
      { cwd: dir },
    );
    expect(v.code, v.stderr).toBe(0);
    // A given public key (e.g. the vault's SPKI, DER).
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    await writeFile(join(dir, 'vault.spki'), publicKey.export({ type: 'spki', format: 'der' }));
    const given = await run(
      'issue',
      '--user',
      '@svc:example.org',
      '--ca',
      'root.pem',
      '--ca-key',
      'root.key',
      '--out',
      'svc',
      '--public-key',
      'vault.spki',
      '--json',
    );
    expect(given.code, given.stderr).toBe(0);
    expect(JSON.parse(given.stdout)).not.toHaveProperty('key');
    // The vault's x509-identity key (dev backend here; TPM and PKCS#11 in the integration test).
    await writeFile(
      join(dir, 'vault.json'),
      JSON.stringify({
        backend: 'dev',
        owner: { userId: '@dev:example.org' },
        stateDir: 'vault',
        allowInsecureDevBackend: true,
      }),
    );
    const init = await new Promise<number>((resolve) => {
      execFile(
        process.execPath,
        [
          fileURLToPath(new URL('../../keyvault/main.ts', import.meta.url)),
          'init',
          '--config',
          'vault.json',
        ],
        { cwd: dir },
        (e) => {
          resolve(e ? 1 : 0);
        },
      );
    });
    expect(init).toBe(0);
    const fromVault = await run(
      'issue',
      '--user',
      '@dev:example.org',
      '--ca',
      'root.pem',
      '--ca-key',
      'root.key',
      '--out',
      'dev',
      '--vault-config',
      'vault.json',
      '--json',
    );
    expect(fromVault.code, fromVault.stderr).toBe(0);
    const { loadVaultConfig, openVault } = await import('../../keyvault/open.ts');
    const vault = await openVault(await loadVaultConfig(join(dir, 'vault.json')));
    const spki = (await vault.publicKey('x509-identity')).spki;
    await vault.close();
    const { X509Certificate, createPublicKey } = await import('node:crypto');
    const cert = new X509Certificate(await readFile(join(dir, 'dev.pem')));
    expect(
      cert.publicKey.equals(
        createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }),
      ),
    ).toBe(true);
    // A CA key that is not the CA's.
    const mismatch = await run(
      'issue',
      '--user',
      '@x:example.org',
      '--ca',
      'root.pem',
      '--ca-key',
      'inter.key',
      '--out',
      'x',
    );
    expect(mismatch.code).toBe(2);
    expect(mismatch.stderr).toContain('--ca-key does not belong to --ca');
  });

  it('check: exit 0 when accepted, 1 with each problem when not', async () => {
    const ok = await run(
      'check',
      '--user',
      '@alice:example.org',
      '--chain',
      'alice.chain.pem',
      '--ca',
      'root.pem',
    );
    expect(ok.code, ok.stdout).toBe(0);
    expect(ok.stdout).toMatch(/^accepted {2}@alice:example\.org/);
    expect(ok.stdout).toMatch(/key id {4}io\.element\.x509:/);
    const other = await run(
      'check',
      '--user',
      '@bob:example.org',
      '--chain',
      'alice.chain.pem',
      '--ca',
      'root.pem',
      '--json',
    );
    expect(other.code).toBe(1);
    const report = JSON.parse(other.stdout) as { ok: boolean; problems: { code: string }[] };
    expect(report.ok).toBe(false);
    expect(report.problems.map((p) => p.code)).toEqual(['SAN_MISMATCH']);
    const ca2 = await run('ca', '--out', 'other', '--key-type', 'ecdsa-p256');
    expect(ca2.code).toBe(0);
    const wrongCa = await run(
      'check',
      '--user',
      '@alice:example.org',
      '--chain',
      'alice.chain.pem',
      '--ca',
      'other.pem',
    );
    expect(wrongCa.code).toBe(1);
    expect(wrongCa.stdout).toContain('UNTRUSTED');
    const missing = await run('check', '--user', '@alice:example.org', '--chain', 'nope.pem');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('x509: cannot read nope.pem (ENOENT)\n');
  });
});
