import { spawn } from 'node:child_process';
import { constants, createPublicKey, verify } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vaultClient } from '../../keyvault/client.ts';
import { encodeFrame, socketChannel } from '../../keyvault/common/rpc/index.ts';
import { spawnVault } from '../../keyvault/spawn.ts';
import { VaultCode } from '../../keyvault/vault.ts';
import { isAlive, makeTempDir, repoRoot } from '../fixtures/process.ts';
import { TEST_OWNER, ownMasterBytes } from '../fixtures/sign-inputs.ts';

const MAIN = join(repoRoot, 'keyvault', 'main.ts');
const WARNING =
  'insecure dev backend: keys are in software files, not hardware; for development only';

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      resolve({ code, stdout, stderr });
    });
  });
}

/** Alive and not a zombie: an orphan that exited waits for init to reap it, which may be slow. */
async function running(pid: number): Promise<boolean> {
  if (!isAlive(pid)) return false;
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return !/^\d+ \(.*\) Z/.test(stat);
}

const lines = (text: string) => text.split('\n').filter((l) => l !== '');

let dir: string;
let config: string;

beforeAll(async () => {
  dir = await makeTempDir('vault-process');
  config = join(dir, 'vault.json');
  // A relative stateDir: resolved against the config file, not the test's cwd.
  await writeFile(
    config,
    JSON.stringify({
      backend: 'dev',
      owner: { userId: TEST_OWNER },
      stateDir: 'state',
      allowInsecureDevBackend: true,
    }),
  );
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('vault command line', () => {
  it('init creates, then keeps', async () => {
    const first = await cli('init', '--config', config, '--json');
    expect(first.code).toBe(0);
    const report = JSON.parse(first.stdout) as { created: string[]; kept: string[] };
    expect(report.created).toHaveLength(5);
    expect(first.stderr).toContain(WARNING);

    const second = await cli('init', '--config', config, '--json');
    expect(JSON.parse(second.stdout)).toMatchObject({ created: [], kept: report.created });
  });

  it('status --json and the human table', async () => {
    const json = await cli('status', '--config', config, '--json');
    expect(json.code).toBe(0);
    const status = JSON.parse(json.stdout) as { backend: string; warnings: string[] };
    expect(status.backend).toBe('dev');
    expect(status.warnings).toContain(WARNING);

    const human = await cli('status', '--config', config);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^backend\s+dev$/m);
    expect(human.stdout).toContain(WARNING);
  });

  it('doctor --json passes once provisioned', async () => {
    const result = await cli('doctor', '--config', config, '--json');
    expect(result.code).toBe(0);
    const report = JSON.parse(result.stdout) as { ok: boolean; checks: { ok: boolean }[] };
    expect(report.ok).toBe(true);
    expect(report.checks.length).toBeGreaterThan(0);
  });

  it('--help exits 0 and says why there is no --pin', async () => {
    const result = await cli('--help');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('Usage:');
    expect(result.stdout).toContain('no --pin option');
    const serveHelp = await cli('serve', '--help');
    expect(serveHelp.code).toBe(0);
    expect(serveHelp.stdout).toContain('file');
  });

  it.each([
    [['frobnicate'], 2],
    [['status'], 2],
    [['init', '--config', 'x', '--pin', '1234'], 2],
    [['status', '--config', '/nonexistent/vault.json'], 1],
  ])('%j fails with one line and no stack trace', async (args, code) => {
    const result = await cli(...args);
    expect(result.code).toBe(code);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^vault: /);
    expect(result.stderr).not.toContain('at ');
    expect(result.stderr).not.toContain('1234');
    expect(result.stdout).toBe('');
  });
});

describe('vault process', () => {
  it('serves sign, the store key once, and the counter over fd 3', async () => {
    const spawned = await spawnVault(config);
    try {
      const { vault } = spawned;
      expect(vault.backend).toBe('dev');
      // The x509-identity key signs our master key and nothing else (keyvault/purposes).
      const message = await ownMasterBytes(vault, TEST_OWNER);
      const info = await vault.publicKey('x509-identity');
      const key = createPublicKey({ key: Buffer.from(info.spki), format: 'der', type: 'spki' });
      const signature = await vault.sign('x509-identity', message);
      const pss = { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 };
      expect(verify('sha512', message, pss, signature)).toBe(true);
      await expect(
        vault.sign('x509-identity', new TextEncoder().encode('hello')),
      ).rejects.toMatchObject({ code: VaultCode.SignRefused });

      expect(await vault.storeKey()).toHaveLength(32);
      await expect(vault.storeKey()).rejects.toMatchObject({
        code: VaultCode.StoreKeyReleased,
      });

      const before = await vault.counterRead();
      expect(await vault.counterIncrement()).toBe(before + 1n);
    } finally {
      await spawned.stop();
    }
    expect(await spawned.exited).toBe(0);
  });

  it('the counter survives a restart, and the store key is released again', async () => {
    const first = await spawnVault(config);
    const value = await first.vault.counterIncrement();
    await first.stop();
    const second = await spawnVault(config);
    expect(await second.vault.counterRead()).toBe(value);
    expect(await second.vault.storeKey()).toHaveLength(32);
    await second.stop();
  });

  it('exits when the process holding its channel is killed', async () => {
    // A launcher that holds the vault's channel, then dies without any cleanup.
    const launcher = join(dir, 'launcher.ts');
    await writeFile(
      launcher,
      `import { spawnVault } from ${JSON.stringify(join(repoRoot, 'keyvault', 'spawn.ts'))};
const s = await spawnVault(${JSON.stringify(config)});
process.stdout.write(String(s.process.pid) + '\\n');
setInterval(() => undefined, 1000);
`,
    );
    const parent = spawn(process.execPath, [launcher], { stdio: ['ignore', 'pipe', 'ignore'] });
    const vaultPid = await new Promise<number>((resolve, reject) => {
      parent.stdout.once('data', (c: Buffer) => {
        resolve(Number(c.toString().trim()));
      });
      parent.once('exit', () => {
        reject(new Error('launcher exited before starting the vault'));
      });
    });
    expect(await running(vaultPid)).toBe(true);
    parent.kill('SIGKILL');
    const deadline = Date.now() + 5000;
    while ((await running(vaultPid)) && Date.now() < deadline) await sleep(20);
    expect(await running(vaultPid)).toBe(false);
  });

  it('survives garbage on fd 3, hangs up on an oversize frame, and a fresh spawn works', async () => {
    const protocolErrors: string[] = [];
    const spawned = await spawnVault(config, {
      client: { onProtocolError: (e) => protocolErrors.push(e.code) },
    });
    const fd3 = spawned.process.stdio[3];
    if (!(fd3 instanceof Socket)) throw new Error('no fd 3');
    // Not JSON, not an envelope: each answered with BAD_FRAME, and the vault keeps serving.
    fd3.write(encodeFrame(Buffer.from('\u0000\u00ff garbage')));
    fd3.write(encodeFrame(Buffer.from('{"v":1,"kind":"request","id":"x"}')));
    expect(await spawned.vault.random(8)).toHaveLength(8);
    expect(protocolErrors).toEqual(['BAD_FRAME', 'BAD_FRAME']);
    // A 4 GiB length header: refused before buffering, then the connection closes.
    fd3.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
    expect(await spawned.exited).toBe(0);
    expect(protocolErrors).toContain('FRAME_TOO_LARGE');
    await expect(spawned.vault.random(8)).rejects.toMatchObject({ code: 'DISCONNECTED' });

    const fresh = await spawnVault(config);
    expect(await fresh.vault.random(4)).toHaveLength(4);
    await fresh.stop();
  });

  it('reports why the vault did not start, with its code, not as DISCONNECTED', async () => {
    const refused = join(dir, 'refused.json');
    await writeFile(refused, JSON.stringify({ backend: 'dev', stateDir: 'state' }));
    await expect(spawnVault(refused)).rejects.toThrow(/allowInsecureDevBackend/);
    await expect(spawnVault(refused)).rejects.toMatchObject({
      name: 'VaultError',
      code: VaultCode.InsecureRefused,
    });
    await expect(spawnVault(join(dir, 'missing.json'))).rejects.toMatchObject({
      code: VaultCode.Config,
    });
  });

  it('a vault that cannot open answers every call with the reason, then exits 1', async () => {
    // Another vault's state file in ours: the dev vault refuses to open.
    const other = join(dir, 'other.json');
    await writeFile(
      other,
      JSON.stringify({ backend: 'dev', stateDir: 'other-state', allowInsecureDevBackend: true }),
    );
    expect((await cli('init', '--config', other)).code).toBe(0);
    const foreign = join(dir, 'foreign.json');
    await writeFile(
      foreign,
      JSON.stringify({ backend: 'dev', stateDir: 'foreign-state', allowInsecureDevBackend: true }),
    );
    expect((await cli('init', '--config', foreign)).code).toBe(0);
    await writeFile(
      join(dir, 'foreign-state', 'dev-vault.json'),
      await readFile(join(dir, 'other-state', 'dev-vault.json')),
      { mode: 0o600 },
    );
    // Raw: the process keeps its channel open and answers, rather than dying.
    const child = spawn(process.execPath, [MAIN, 'serve', '--config', foreign], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const fd3 = child.stdio[3];
    if (!(fd3 instanceof Socket)) throw new Error('no fd 3');
    const e = await vaultClient(socketChannel(fd3)).catch((err: unknown) => err);
    expect(e).toMatchObject({ code: VaultCode.ForeignOrTampered });
    expect((e as Error).message).toMatch(/belongs to another vault/);
    expect(await exited).toBe(1);
    expect(stderr).toMatch(
      /vault: cannot open the vault: .*belongs to another vault.*\[VAULT_FOREIGN_OR_TAMPERED\]/,
    );
  });
});
