import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnEndpoint } from '../../endpoint/spawn.ts';
import {
  type CompartmentConfigs,
  type SynapseUser,
  makeTempDir,
  prepareCompartments,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';

// Two endpoints, two vaults, one TPM: before the second endpoint's provisioning
// "kept" the first one's NV counter, and after one run of B, A was refused for ever as a
// restored backup. Each is started and stopped alternately 5 times, and each compacts on
// every stop (moving its own counter): neither ever sees the other's counter move.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());

let dir: string;
let alice: SynapseUser;
let carol: SynapseUser;
let a: CompartmentConfigs;
let c: CompartmentConfigs;
beforeAll(async () => {
  dir = await makeTempDir('shared-tpm');
  await mkdir(join(dir, 'a'));
  await mkdir(join(dir, 'c'));
  alice = await synapse().registerUser('alice');
  carol = await synapse().registerUser('carol');
  a = await prepareCompartments(join(dir, 'a'), {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: alice,
  });
  c = await prepareCompartments(join(dir, 'c'), {
    homeserver: synapse().baseUrl,
    tpm: tpm(),
    user: carol,
  });
}, 180_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('two endpoints on one TPM', () => {
  it('started and stopped alternately 5 times each, neither refuses the other nor itself', async () => {
    const stderr: string[] = [];
    const devices = { a: new Set<string>(), c: new Set<string>() };
    for (let round = 0; round < 5; round++) {
      for (const [name, configs, user] of [
        ['a', a, alice],
        ['c', c, carol],
      ] as const) {
        // swtpm serves one client at a time: one endpoint (and its vault) runs at a time.
        const endpoint = await spawnEndpoint(configs.endpointConfig, {
          onStderr: (l) => stderr.push(`[${name}] ${l}`),
        });
        const auth = { token: configs.tokens.test ?? '' };
        const status = await endpoint.client.call('status', { auth });
        expect(status.userId).toBe(user.userId);
        devices[name].add(status.deviceId);
        // Something to journal, so the stop's compaction moves this vault's counter.
        await endpoint.client.call('createRoom', { auth, invite: [], name: `${name} ${round}` });
        await endpoint.stop();
      }
    }
    // Each kept one device (its store opened every time) and nothing was refused.
    expect(devices.a.size).toBe(1);
    expect(devices.c.size).toBe(1);
    expect(stderr.filter((l) => /STORE_|VAULT_|ROLLED|COUNTER/.test(l))).toEqual([]);
  }, 300_000);
});
