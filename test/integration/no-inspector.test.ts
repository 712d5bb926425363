import { mkdir, readFile, readdir, readlink, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { innermostPid } from '../../deploy/compartments/launcher.ts';
import { type SpawnedGateway, spawnGateway } from '../../endpoint/untrusted/gateway/index.ts';
import {
  type SynapseUser,
  isAlive,
  makeTempDir,
  waitUntil,
  prepareCompartments,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { repoRoot } from '../fixtures/process.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// Any process of the compartments' user could open the Node inspector in a compartment with
// SIGUSR1 (and then run code there, next to the keys). Every compartment is started with
// --disable-sigusr1, without NODE_OPTIONS, and with an inspector flag nowhere: shown here for
// both ways the stack starts, by sending SIGUSR1 to each process and looking for a listener.
const isRoot = process.getuid?.() === 0;
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());
const unixTpm = useFixture(async () =>
  startSwtpm({ unix: true, ...(isRoot ? { accessibleTo: await vaultUser() } : {}) }),
);

/** Node's own inspector port, and what an inherited NODE_OPTIONS would ask for. */
const INSPECTOR_PORT = 9229;

async function childrenOf(pid: number): Promise<number[]> {
  try {
    const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8');
    return text.trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function cmdline(pid: number): Promise<string[]> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean);
}

async function environ(pid: number): Promise<string[]> {
  return (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0').filter(Boolean);
}

/**
 * TCP ports this process listens on, in its own network namespace (the sandboxed ones have
 * their own): its socket fds matched against /proc/<pid>/net/tcp{,6} entries in LISTEN.
 */
async function listeningPorts(pid: number): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m?.[1]) inodes.add(m[1]);
  }
  const ports: number[] = [];
  for (const table of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      const [, local, , state, , , , , , inode] = f;
      if (state === '0A' && inode && inodes.has(inode) && local) {
        ports.push(parseInt(local.split(':')[1] ?? '0', 16));
      }
    }
  }
  return ports;
}

/** Resolves true when something accepts a TCP connection on 127.0.0.1:port (our namespace). */
function loopbackOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => {
      resolve(false);
    });
  });
}

/** What each compartment process is started with, and what SIGUSR1 does to it. */
async function checkNoInspector(
  processes: Record<string, number>,
  stderr: readonly string[],
): Promise<void> {
  for (const [name, pid] of Object.entries(processes)) {
    const argv = await cmdline(pid);
    expect(argv[0], name).toMatch(/node$/);
    expect(argv, name).toContain('--disable-sigusr1');
    expect(
      argv.filter((a) => /^--(inspect|debug)/.test(a)),
      name,
    ).toEqual([]);
    expect(
      (await environ(pid)).filter((e) => e.startsWith('NODE_OPTIONS=')),
      name,
    ).toEqual([]);
    expect(await listeningPorts(pid), name).toEqual([]);
  }
  for (const pid of Object.values(processes)) process.kill(pid, 'SIGUSR1');
  // The inspector, when it opens, says so and listens within a few milliseconds.
  await sleep(1500);
  for (const [name, pid] of Object.entries(processes)) {
    expect(isAlive(pid), `${name} survives SIGUSR1`).toBe(true);
    expect(await listeningPorts(pid), `${name} listens on no TCP port`).toEqual([]);
  }
  expect(await loopbackOpen(INSPECTOR_PORT)).toBe(false);
  expect(stderr.filter((l) => /Debugger listening|Starting inspector/.test(l))).toEqual([]);
}

describe('unlaunched: the gateway starts the endpoint, which starts the vault', () => {
  let gateway: SpawnedGateway;
  let token: string;
  const stderr: string[] = [];
  const processes: Record<string, number> = {};

  beforeAll(async () => {
    const dir = await makeTempDir('no-inspector');
    const alice: SynapseUser = await synapse().registerUser('alice');
    const prepared = await prepareCompartments(dir, {
      homeserver: synapse().baseUrl,
      tpm: tpm(),
      user: alice,
    });
    token = prepared.tokens.test ?? '';
    const config = join(dir, 'gateway.json');
    await mkdir(join(dir, 'run'), { mode: 0o700 });
    await writeFile(
      config,
      JSON.stringify({ socket: join(dir, 'run', 'api.sock'), endpointConfig: 'endpoint.json' }),
    );
    // What a careless (or hostile) environment would pass down: it must not reach them.
    gateway = await spawnGateway(config, {
      env: { ...process.env, NODE_OPTIONS: `--inspect=127.0.0.1:${INSPECTOR_PORT}` },
      onStderr: (l) => stderr.push(l),
    });
    const gatewayPid = gateway.process.pid ?? 0;
    const [endpointPid] = await childrenOf(gatewayPid);
    const [vaultPid] = await childrenOf(endpointPid ?? 0);
    processes.gateway = gatewayPid;
    processes.endpoint = endpointPid ?? 0;
    processes.vault = vaultPid ?? 0;
  }, 180_000);

  afterAll(async () => {
    await gateway.stop();
  });

  it('each runs with --disable-sigusr1, no NODE_OPTIONS, and opens no inspector on SIGUSR1', async () => {
    expect(Object.values(processes).every((p) => p > 0)).toBe(true);
    expect((await cmdline(processes.endpoint ?? 0)).join(' ')).toMatch(
      /(endpoint\/main\.ts|dist\/compartments\/endpoint-main\.mjs) serve/,
    );
    expect((await cmdline(processes.vault ?? 0)).join(' ')).toMatch(
      /(keyvault\/main\.ts|dist\/compartments\/keyvault-main\.mjs) serve/,
    );
    await checkNoInspector(processes, stderr);
  });

  it('and they all keep working afterwards', async () => {
    const status = await gateway.request('/v1/status', { token });
    expect(status.status).toBe(200);
    // The status call reached the vault-backed store: the vault answered as well.
    expect((status.json() as { health: { vault: string } }).health.vault).toBe('available');
  });
});

describe('launched: each compartment in its sandbox', () => {
  let s: LaunchedStack;

  beforeAll(async () => {
    const alice = await synapse().registerUser('carol');
    s = await startStack({ homeserver: synapse().baseUrl, tpm: unixTpm(), user: alice });
  }, 180_000);

  afterAll(async () => {
    await s.stop();
  });

  it('each runs with --disable-sigusr1 and opens no inspector on SIGUSR1', async () => {
    const processes: Record<string, number> = {};
    for (const c of s.manifest.compartments) {
      processes[c.name] = innermostPid(s.stack.pid(c.name) ?? 0);
    }
    await checkNoInspector(processes, s.lines);
  });

  it('and the stack keeps working afterwards, without a restart', async () => {
    const status = await s.gateway.request('/v1/status', { token: s.tokens.test ?? '' });
    expect(status.status).toBe(200);
    expect(s.stack.restarts).toBe(0);
  });
});

describe('a compartment started by hand, without the launcher or spawnProcess', () => {
  const vaultMain = join(repoRoot, 'keyvault', 'main.ts');

  it('refuses to serve with an inspector flag, in argv or in NODE_OPTIONS', async () => {
    for (const how of [
      { args: ['--inspect=127.0.0.1:0'], env: {} },
      { args: [], env: { NODE_OPTIONS: '--inspect-port=0' } },
    ]) {
      const child = spawn(
        process.execPath,
        [...how.args, vaultMain, 'serve', '--config', '/nonexistent/vault.json'],
        { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env: { ...process.env, ...how.env } },
      );
      let err = '';
      child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((r) => child.once('exit', r));
      expect(code).toBe(1);
      expect(err).toMatch(/vault: refusing to run with the inspector enabled \(--inspect[a-z-]*\)/);
      expect(err).not.toMatch(/^\s+at /m);
    }
  });

  it('ignores SIGUSR1 even without --disable-sigusr1 (a listener of its own)', async () => {
    // A vault with a config it cannot read still serves its channel (answering every call
    // with VAULT_CONFIG), so it runs long enough to be signalled.
    const child = spawn(
      process.execPath,
      [vaultMain, 'serve', '--config', '/nonexistent/vault.json'],
      {
        stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
        env: { ...process.env, NODE_OPTIONS: '' },
      },
    );
    const lines: string[] = [];
    child.stderr?.on('data', (d: Buffer) => lines.push(...d.toString().split('\n')));
    const pid = child.pid ?? 0;
    await waitUntil(
      'the vault to be serving',
      () => lines.some((l) => l.includes('answering every call')),
      {
        timeoutMs: 20_000,
        intervalMs: 50,
      },
    );
    expect(await cmdline(pid)).not.toContain('--disable-sigusr1');
    process.kill(pid, 'SIGUSR1');
    await sleep(1500);
    expect(isAlive(pid)).toBe(true);
    expect(await listeningPorts(pid)).toEqual([]);
    expect(lines.filter((l) => /Debugger listening|Starting inspector/.test(l))).toEqual([]);
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  });
});
