import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { innermostPid } from '../../deploy/compartments/launcher.ts';
import { StockPeer, startSwtpm, startSynapse, type SynapseUser } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { type LaunchedStack, startStack, vaultUser } from '../fixtures/stack.ts';
import { waitUntil } from '../fixtures/process.ts';

// The launcher's promise, shown from inside each compartment: the probe runs in the exact
// sandbox of a compartment (its user, namespaces, limits and Node permissions) and tries what
// that compartment must never do. Each denial also runs with Node's permission model left out
// (osOnly), so both layers are shown to hold on their own, and each has a positive control.
const isRoot = process.getuid?.() === 0;
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(async () =>
  startSwtpm({ unix: true, ...(isRoot ? { accessibleTo: await vaultUser() } : {}) }),
);

let s: LaunchedStack;
let alice: SynapseUser;
let bob: StockPeer;
let room: string;
let homeserverAddress: string;

beforeAll(async () => {
  alice = await synapse().registerUser('alice');
  const bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
  homeserverAddress = new URL(synapse().baseUrl).host;
  s = await startStack({ homeserver: synapse().baseUrl, tpm: tpm(), user: alice, maxRestarts: 3 });
  const created = await s.gateway.request('/v1/rooms', {
    method: 'POST',
    token: s.tokens.test ?? '',
    body: { invite: [bob.userId] },
  });
  expect(created.status).toBe(201);
  room = (created.json() as { roomId: string }).roomId;
  await bob.acceptInvite(room);
  await bob.waitForMember(room, alice.userId);
}, 240_000);

afterAll(async () => {
  await s.stop();
  await bob.stop();
}, 60_000);

const send = (body: string) =>
  s.gateway.request(`/v1/rooms/${encodeURIComponent(room)}/messages`, {
    method: 'POST',
    token: s.tokens.test ?? '',
    body: { body },
  });

describe.runIf(isRoot)('launcher: each compartment is confined (probed from inside)', () => {
  const path = (...p: string[]) => join(...p);

  it('every protection the launcher knows is in force, but the homeserver-only network', () => {
    for (const [name, protections] of s.stack.protections) {
      const missing = protections.filter((p) => !p.ok).map((p) => p.name);
      expect(missing, name).toEqual(
        name === 'endpoint' ? ['network limited to the homeserver'] : [],
      );
    }
  });

  it('each compartment runs as its own user, without supplementary groups', async () => {
    const uids = new Set<number>();
    for (const c of s.manifest.compartments) {
      const r = await s.probe(c.name, 'whoami');
      const who = JSON.parse(r.detail ?? '{}') as { uid: number; gid: number; groups: number[] };
      expect(who.uid).not.toBe(0);
      expect(who.groups.filter((g) => g !== who.gid)).toEqual([]);
      uids.add(who.uid);
    }
    expect(uids.size).toBe(s.manifest.compartments.length);
  });

  it("the gateway cannot read the vault's state, or the endpoint's password and store", async () => {
    const targets = [
      path(s.where.state, 'vault'),
      path(s.where.config, 'endpoint', 'password'),
      path(s.where.state, 'endpoint', 'store'),
      path(s.where.config, 'vault', 'vault.json'),
    ];
    for (const target of targets) {
      expect(await s.probe('gateway', 'read', target), target).toMatchObject({
        ok: false,
        code: 'ERR_ACCESS_DENIED',
      });
      // Without Node's layer: not even in its view of the filesystem.
      expect(await s.probe('gateway', 'read', target, { osOnly: true }), target).toMatchObject({
        ok: false,
        code: 'ENOENT',
      });
    }
    // Positive controls: the owners can.
    expect(await s.probe('vault', 'read', path(s.where.state, 'vault'))).toMatchObject({
      ok: true,
    });
    expect(
      await s.probe('endpoint', 'read', path(s.where.config, 'endpoint', 'password')),
    ).toMatchObject({ ok: true });
  });

  it("the endpoint cannot read the vault's state", async () => {
    const target = path(s.where.state, 'vault');
    expect(await s.probe('endpoint', 'read', target)).toMatchObject({
      ok: false,
      code: 'ERR_ACCESS_DENIED',
    });
    expect(await s.probe('endpoint', 'read', target, { osOnly: true })).toMatchObject({
      ok: false,
      code: 'ENOENT',
    });
  });

  it('the gateway and the vault cannot open a TCP connection to the homeserver; the endpoint can', async () => {
    for (const name of ['gateway', 'vault']) {
      for (const osOnly of [false, true]) {
        const r = await s.probe(name, 'connect', homeserverAddress, { osOnly });
        expect(r.ok, `${name} osOnly=${String(osOnly)}`).toBe(false);
        expect(['ECONNREFUSED', 'ENETUNREACH', 'EHOSTUNREACH']).toContain(r.code);
      }
    }
    expect(await s.probe('endpoint', 'connect', homeserverAddress)).toMatchObject({ ok: true });
  });

  it('the gateway can write only its socket directory', async () => {
    expect(await s.probe('gateway', 'write', path(s.where.run, 'gateway'))).toMatchObject({
      ok: true,
    });
    for (const target of [path(s.where.config, 'gateway'), s.where.code, '/tmp']) {
      expect(await s.probe('gateway', 'write', target), target).toMatchObject({
        ok: false,
        code: 'ERR_ACCESS_DENIED',
      });
    }
    // Its config and the code are read-only mounts even without Node's layer.
    for (const target of [path(s.where.config, 'gateway'), s.where.code]) {
      expect(await s.probe('gateway', 'write', target, { osOnly: true }), target).toMatchObject({
        ok: false,
        code: 'EROFS',
      });
    }
    // And the other compartments' directories are not there at all.
    expect(
      await s.probe('gateway', 'write', path(s.where.state, 'endpoint'), { osOnly: true }),
    ).toMatchObject({ ok: false, code: 'ENOENT' });
  });

  it('no compartment may start a process', async () => {
    for (const c of s.manifest.compartments) {
      expect(await s.probe(c.name, 'spawn'), c.name).toMatchObject({
        ok: false,
        code: 'ERR_ACCESS_DENIED',
      });
    }
  });
});

describe('launcher: the stack works and survives a crash', () => {
  it('a message sent through the launched gateway reaches the stock peer', async () => {
    expect((await send('through the compartments')).status).toBe(202);
    await bob.waitForMessage(room, 'through the compartments', 60_000);
  });

  it('an endpoint killed with SIGKILL is restarted, and every accepted message arrives once', async () => {
    const before = s.stack.restarts;
    const bodies = Array.from({ length: 8 }, (_, i) => `queued before the crash ${i}`);
    for (const body of bodies) expect((await send(body)).status).toBe(202);
    const pid = s.stack.pid('endpoint');
    expect(pid).toBeDefined();
    const restarted = s.stack.nextStart();
    process.kill(innermostPid(pid ?? 0), 'SIGKILL');
    await restarted;
    expect(s.stack.restarts).toBe(before + 1);
    expect(s.lines.some((l) => /endpoint exited \(.*\); restarting the stack/.test(l))).toBe(true);
    // The gateway serves again, and the new endpoint sends what the old one had accepted.
    const status = await s.gateway.request('/v1/status', { token: s.tokens.test ?? '' });
    expect(status.status).toBe(200);
    await waitUntil(
      'every accepted message at the peer',
      () =>
        Promise.resolve(
          bodies.every((b) => bob.messages.some((m) => m.roomId === room && m.body === b)),
        ),
      { timeoutMs: 90_000 },
    );
    for (const b of bodies) {
      expect(bob.messages.filter((m) => m.roomId === room && m.body === b)).toHaveLength(1);
    }
    expect((await send('after the restart')).status).toBe(202);
    await bob.waitForMessage(room, 'after the restart', 60_000);
  }, 240_000);
});
