import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type SasOutcome,
  StockPeer,
  type SynapseUser,
  repoRoot,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';

// The verification CLI, as a headless user runs it: a separate process talking to the real
// gateway's socket, in front of the real endpoint and vault processes, verifying stock
// matrix-js-sdk peers. The user's answer to "do the emoji match?" comes on stdin. The stack
// is started by the launcher, each compartment in its own sandbox, as deployed.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(async () => startSwtpm({ unix: true, accessibleTo: await vaultUser() }));

const CLI = join(repoRoot, 'endpoint', 'untrusted', 'cli', 'verify.ts');
let stack: LaunchedStack;
const gateway = {
  request: (...a: Parameters<LaunchedStack['gateway']['request']>) => stack.gateway.request(...a),
};
let token: string;
let readerToken: string;
let alice: SynapseUser;
let ourDevice: string;
const peers: StockPeer[] = [];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], options: { answer?: string; token?: string } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [CLI, '--socket', stack.gateway.socketPath ?? '', ...args],
      {
        env: { ...process.env, MTE_TOKEN: options.token ?? token },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // Answer the question when it is asked, as a person at the terminal would.
      if (options.answer !== undefined && stderr.includes('[y/N]')) {
        child.stdin.end(`${options.answer}\n`);
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      resolve({ code, stdout, stderr });
    });
  });
}

async function peerInRoom(name: string): Promise<StockPeer> {
  const user = await synapse().registerUser(name);
  const peer = await StockPeer.start(synapse().baseUrl, user);
  peers.push(peer);
  await peer.bootstrapCrossSigning(user.password);
  const created = await gateway.request('/v1/rooms', {
    method: 'POST',
    token,
    body: { invite: [peer.userId], isDirect: true },
  });
  const { roomId } = created.json() as { roomId: string };
  await peer.acceptInvite(roomId);
  await peer.waitForMember(roomId, alice.userId);
  // Our endpoint must see the membership before it lets this client verify the peer.
  for (let i = 0; i < 100; i++) {
    const res = await gateway.request(`/v1/contacts/${encodeURIComponent(peer.userId)}`, { token });
    if (res.status === 200) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return peer;
}

function emojiNames(run: Run): string[] {
  return [...run.stderr.matchAll(/^ {2}\S+ {2}(.+)$/gmu)].map((m) => m[1] ?? '');
}

beforeAll(async () => {
  alice = await synapse().registerUser('alice');
  stack = await startStack({
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
    clients: [
      {
        name: 'cli',
        capabilities: ['verification', 'contacts.read', 'rooms.create'],
        requestsPerMinute: 60_000,
      },
      { name: 'reader', capabilities: ['contacts.read'], requestsPerMinute: 60_000 },
    ],
  });
  token = stack.tokens.cli ?? '';
  readerToken = stack.tokens.reader ?? '';
  const status = await gateway.request('/v1/status', { token });
  ourDevice = (status.json() as { deviceId: string }).deviceId;
}, 240_000);

afterAll(async () => {
  await stack.stop();
  for (const peer of peers) await peer.stop();
});

describe('verify CLI against the real gateway and stock peers', () => {
  it('request: prints the emoji the peer shows, confirms on "y", exits 0 verified', async () => {
    const bob = await peerInRoom('bob');
    const shown: SasOutcome[] = [];
    bob.acceptVerifications(undefined, (o) => shown.push(o));
    const run = await cli(['request', bob.userId, bob.deviceId, '--json'], { answer: 'y' });
    expect(run.code, run.stderr).toBe(0);
    expect(shown).toHaveLength(1);
    const names = (shown[0] as SasOutcome).emoji.map(([, name]) => name);
    expect(emojiNames(run)).toEqual(names);
    expect(run.stderr).toContain(`verified: ${bob.userId}`);
    expect(JSON.parse(run.stdout)).toMatchObject({ phase: 'done', userId: bob.userId });
    const identity = await cli(['identity', bob.userId, '--json']);
    expect(JSON.parse(identity.stdout)).toMatchObject({ state: 'verified', wasVerified: true });
  }, 120_000);

  it('wait: accepts the incoming request; "n" cancels as a mismatch and nobody is verified', async () => {
    const carol = await peerInRoom('carol');
    const carolSide = carol.verifyDevice(alice.userId, ourDevice, 90_000).then(
      () => 'verified',
      (e: unknown) => String(e),
    );
    const run = await cli(['wait', '--timeout', '60'], { answer: 'n' });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('did not match');
    expect(await carolSide).toContain('m.mismatched_sas');
    const identity = await cli(['identity', carol.userId]);
    expect(identity.stdout).toContain('pinned');
    const status = await carol.crypto.getDeviceVerificationStatus(alice.userId, ourDevice);
    expect(status?.isVerified()).toBe(false);
  }, 120_000);

  it('a wrong token, a client without the capability and bad arguments fail in one line', async () => {
    const wrong = await cli(['list'], { token: 'not-a-token' });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
    expect(wrong.stderr).toContain('UNAUTHENTICATED');
    expect(wrong.stderr).not.toContain('not-a-token');
    const reader = await cli(['list'], { token: readerToken });
    expect(reader.code).toBe(1);
    expect(reader.stderr).toContain('FORBIDDEN_CAPABILITY');
    const usage = await cli(['request', 'bob']);
    expect(usage.code).toBe(2);
    const badUser = await cli(['identity', 'bob']);
    expect(badUser.code).toBe(2);
    expect(badUser.stderr).toContain('USER');
    const list = await cli(['list', '--json']);
    expect(list.code).toBe(0);
    const flows = JSON.parse(list.stdout) as { phase: string }[];
    expect(flows.map((f) => f.phase).sort()).toEqual(['cancelled', 'done']);
  }, 60_000);
});
