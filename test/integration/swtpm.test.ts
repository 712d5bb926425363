import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadVaultConfig, openVault } from '../../keyvault/open.ts';
import { connectSwtpm } from '../../keyvault/tpm/transport/index.ts';
import { startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { TEST_OWNER, subkeyBytes } from '../fixtures/sign-inputs.ts';

const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm());
const unixTpm = useFixture(() => startSwtpm({ unix: true }));
const VAULT = join(import.meta.dirname, '..', '..', 'keyvault', 'main.ts');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mte-swtpm-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function writeConfig(name: string, config: object): Promise<string> {
  const path = join(dir, `${name}.json`);
  await writeFile(path, JSON.stringify(config), { mode: 0o600 });
  return path;
}

// Hand-marshalled commands: this file checks the fixture and the transport, not a TPM client.
const TPM_ST_NO_SESSIONS = 0x8001;
function command(code: number, body: Buffer): Buffer {
  const header = Buffer.alloc(10);
  header.writeUInt16BE(TPM_ST_NO_SESSIONS, 0);
  header.writeUInt32BE(10 + body.length, 2);
  header.writeUInt32BE(code, 6);
  return Buffer.concat([header, body]);
}
function getRandom(n: number): Buffer {
  const body = Buffer.alloc(2);
  body.writeUInt16BE(n);
  return command(0x17b, body);
}
/** TPM2_PCR_Read of one SHA-256 PCR. */
function pcrRead(pcr: number): Buffer {
  const select = Buffer.alloc(3);
  select[pcr >> 3] = 1 << (pcr & 7);
  return command(0x17e, Buffer.concat([Buffer.from([0, 0, 0, 1, 0x00, 0x0b, 3]), select]));
}
function responseCode(rsp: Uint8Array): number {
  return Buffer.from(rsp).readUInt32BE(6);
}

describe('the swtpm fixture', () => {
  it('answers TPM2_GetRandom with raw bytes over its socket', async () => {
    const t = await tpm().connect();
    try {
      const rsp = Buffer.from(await t.send(getRandom(16)));
      expect(rsp.readUInt16BE(0)).toBe(TPM_ST_NO_SESSIONS);
      expect(rsp.readUInt32BE(2)).toBe(rsp.length);
      expect(responseCode(rsp)).toBe(0);
      expect(rsp.readUInt16BE(10)).toBe(16);
      const again = Buffer.from(await t.send(getRandom(16)));
      expect(again.subarray(12)).not.toEqual(rsp.subarray(12));
    } finally {
      await t.close();
    }
  });

  it('is the same TPM that tpm2-tools reaches: a PCR extended by tpm2-tools reads back raw', async () => {
    const env = { ...process.env, TPM2TOOLS_TCTI: tpm().tcti };
    const { stdout } = await run('tpm2_getrandom', ['--hex', '8'], { env });
    expect(stdout.trim()).toMatch(/^[0-9a-f]{16}$/);

    await run('tpm2_pcrextend', [`16:sha256=${'ab'.repeat(32)}`], { env });
    const { stdout: listed } = await run('tpm2_pcrread', ['sha256:16'], { env });
    const fromTools = /16\s*:\s*0x([0-9A-Fa-f]{64})/.exec(listed)?.[1]?.toLowerCase();

    const t = await tpm().connect();
    try {
      const rsp = Buffer.from(await t.send(pcrRead(16)));
      expect(responseCode(rsp)).toBe(0);
      // header(10) updateCounter(4) pcrSelectionOut(4+2+1+3) count(4) size(2) digest(32)
      const digest = rsp.subarray(10 + 4 + 10 + 4 + 2, 10 + 4 + 10 + 4 + 2 + 32).toString('hex');
      expect(digest).not.toBe('00'.repeat(32));
      expect(digest).toBe(fromTools);
    } finally {
      await t.close();
    }
  });

  it('reports a malformed command as a TPM error, not a dead connection', async () => {
    const t = await tpm().connect();
    try {
      const rsp = await t.send(command(0x17b, Buffer.alloc(0))); // GetRandom without its parameter
      expect(responseCode(rsp)).not.toBe(0);
      expect(responseCode(await t.send(getRandom(4)))).toBe(0);
    } finally {
      await t.close();
    }
  });

  it('resets PCRs on restart, like a reboot', async () => {
    const env = { ...process.env, TPM2TOOLS_TCTI: tpm().tcti };
    await run('tpm2_pcrextend', [`23:sha256=${'cd'.repeat(32)}`], { env });
    const read = async (): Promise<string> => {
      const t = await tpm().connect();
      try {
        return Buffer.from(await t.send(pcrRead(23)))
          .subarray(30, 62)
          .toString('hex');
      } finally {
        await t.close();
      }
    };
    expect(await read()).not.toBe('00'.repeat(32));
    await tpm().restart();
    expect(await read()).toBe('00'.repeat(32));
  });

  it('gives a typed error when nothing listens', async () => {
    const err = await connectSwtpm({ host: '127.0.0.1', port: 1, ctrlPort: 2 }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'TPM_UNREACHABLE' });
  });
});

describe('swtpm over Unix sockets', () => {
  it('serves the fixture on 0600 sockets in a 0700 directory, named by its transport and tcti', async () => {
    const t = unixTpm();
    expect(t.kind).toBe('unix');
    expect(t.transport).toEqual({ swtpm: { path: t.socketPath, ctrlPath: t.ctrlSocketPath } });
    expect(t.ctrlSocketPath).toBe(`${t.socketPath}.ctrl`);
    for (const path of [t.socketPath, t.ctrlSocketPath]) {
      const info = await stat(path);
      expect(info.isSocket()).toBe(true);
      expect(info.mode & 0o777).toBe(0o600);
    }
    expect((await stat(t.socketDir)).mode & 0o777).toBe(0o700);
    expect(tpm().kind).toBe('tcp');
    expect(tpm().socketPath).toBeUndefined();

    const c = await t.connect();
    try {
      expect(c.description).toBe(`swtpm ${t.socketPath}`);
      expect(responseCode(await c.send(getRandom(8)))).toBe(0);
      expect(await c.control(0x01)).toBe(0); // CMD_GET_CAPABILITY, over the control socket
    } finally {
      await c.close();
    }
    const env = { ...process.env, TPM2TOOLS_TCTI: t.tcti };
    const { stdout } = await run('tpm2_getrandom', ['--hex', '8'], { env });
    expect(stdout.trim()).toMatch(/^[0-9a-f]{16}$/);
  });

  it('a vault on it provisions with the vault command, then opens, unseals and signs in-process', async () => {
    const t = unixTpm();
    // Relative socket paths are taken relative to the config file, like stateDir.
    const configPath = await writeConfig('unix', {
      backend: 'tpm',
      owner: { userId: TEST_OWNER },
      stateDir: 'unix-state',
      transport: { swtpm: { path: relative(dir, t.socketPath), ctrlPath: t.ctrlSocketPath } },
      pcrs: [16],
    });
    const { stdout } = await run(process.execPath, [
      VAULT,
      'init',
      '--config',
      configPath,
      '--json',
    ]);
    const report = JSON.parse(stdout) as { backend: string; created: string[] };
    expect(report.backend).toBe('tpm');
    expect(report.created.length).toBeGreaterThanOrEqual(4);

    const config = await loadVaultConfig(configPath);
    expect(config).toMatchObject({
      stateDir: join(dir, 'unix-state'),
      transport: { swtpm: { path: t.socketPath, ctrlPath: t.ctrlSocketPath } },
    });
    const vault = await openVault(config);
    let key: Uint8Array;
    try {
      key = await vault.storeKey();
      expect(key).toHaveLength(32);
      const signature = await vault.sign('cross-signing-master', subkeyBytes(TEST_OWNER));
      expect(signature.length).toBe(64);
    } finally {
      await vault.close();
    }
    await t.restart(); // new sockets, same TPM: the sealed key still opens
    const reopened = await openVault(await loadVaultConfig(configPath));
    try {
      expect(Buffer.from(await reopened.storeKey())).toEqual(Buffer.from(key));
    } finally {
      await reopened.close();
    }
  });

  it.each([
    [
      'both shapes mixed',
      { host: '127.0.0.1', port: 1, ctrlPort: 2, path: '/run/s' },
      /transport\.swtpm: Unrecognized key: "path"/,
    ],
    ['an empty path', { path: '', ctrlPath: '/run/c' }, /transport\.swtpm\.path: Too small/],
    [
      'an empty control path',
      { path: '/run/s', ctrlPath: '' },
      /transport\.swtpm\.ctrlPath: Too small/,
    ],
    [
      'half of each shape',
      { host: '127.0.0.1', path: '/run/s' },
      /transport: expected .*"ctrlPath"/,
    ],
  ])('refuses a config with %s, in one line naming the field', async (name, swtpm, message) => {
    const configPath = await writeConfig(name.replaceAll(' ', '-'), {
      backend: 'tpm',
      stateDir: 'refused',
      transport: { swtpm },
      pcrs: [16],
    });
    const failed = await run(process.execPath, [
      VAULT,
      'init',
      '--config',
      configPath,
      '--json',
    ]).then(
      () => undefined,
      (e: unknown) => e as { code: number; stderr: string },
    );
    expect(failed?.code).toBe(1);
    const stderr = failed?.stderr ?? '';
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^vault: /);
    expect(stderr).toMatch(message);
  });

  it('gives a typed error naming the socket when nothing listens there', async () => {
    const missing = join(dir, 'no-such.sock');
    const err = await connectSwtpm({ path: missing, ctrlPath: `${missing}.ctrl` }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'TPM_UNREACHABLE' });
    expect((err as Error).message).toContain(missing);
  });
});
