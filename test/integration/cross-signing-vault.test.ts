import { UserId } from '@matrix-org/matrix-sdk-crypto-wasm';
import { createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Pkcs11Config, TpmConfig } from '../../keyvault/config.ts';
import { openVault } from '../../keyvault/open.ts';
import { spawnVault } from '../../keyvault/spawn.ts';
import type { Vault, VaultBackend } from '../../keyvault/vault.ts';
import {
  type CrossSigningKey,
  ed25519PublicFromSeed,
  ed25519RawFromSpki,
  keyOf,
  ownMasterMatches,
  signingBytes,
  unpadded,
  vaultMasterKeySigner,
} from '../../endpoint/crypto/cross-signing.ts';
import { CryptoEngine } from '../../endpoint/crypto/engine.ts';
import { HomeserverClient } from '../../endpoint/matrix/index.ts';
import { EndpointService } from '../../endpoint/service.ts';
import {
  StockPeer,
  type Swtpm,
  type SynapseUser,
  makeTempDir,
  startSoftHsm,
  startSwtpm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';
import { subkeyBytes } from '../fixtures/sign-inputs.ts';

// Cross-signing with the master key in the vault (issue 6): the published master key is the
// vault's, the endpoint holds only the self-signing and user-signing keys, a stock
// matrix-js-sdk peer sees our device cross-signed, restarts change nothing, and an identity
// that is not the vault's is never replaced.
const synapse = useFixture(() => startSynapse());
const tpm = useFixture(() => startSwtpm());
const otherTpm = useFixture(() => startSwtpm());
const hsm = useFixture(() => startSoftHsm());

let dir: string;
let alice: SynapseUser;
let bobUser: SynapseUser;
let bob: StockPeer;
const warnings: string[] = [];
const logger = {
  warn: (m: string) => {
    warnings.push(m);
  },
  info: () => undefined,
};

beforeAll(async () => {
  dir = await makeTempDir('cross-signing-vault');
  alice = await synapse().registerUser('alice');
  bobUser = await synapse().registerUser('bob');
  bob = await StockPeer.start(synapse().baseUrl, bobUser);
  await bob.bootstrapCrossSigning(bobUser.password);
}, 120_000);
afterAll(async () => {
  await bob.stop();
});

/** A TPM vault owned by `userId`: it signs that user's subkeys only (keyvault/purposes). */
function tpmConfig(t: Swtpm, stateDir: string, userId: string): TpmConfig {
  return {
    backend: 'tpm',
    owner: { userId },
    stateDir,
    transport: { swtpm: { host: t.host, port: t.port, ctrlPort: t.ctrlPort } },
    pcrs: [16],
  };
}

/** The vault, with a count of master-key signatures asked of it. */
function counting(vault: VaultBackend): { vault: Vault; masterSigns: () => number } {
  let n = 0;
  const proxy = new Proxy(vault, {
    get(target, key) {
      if (key === 'sign') {
        return (purpose: Parameters<Vault['sign']>[0], message: Uint8Array) => {
          if (purpose === 'cross-signing-master') n++;
          return target.sign(purpose, message);
        };
      }
      const value: unknown = Reflect.get(target, key);
      return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
    },
  });
  return { vault: proxy, masterSigns: () => n };
}

interface Published {
  master?: CrossSigningKey;
  selfSigning?: CrossSigningKey;
  userSigning?: CrossSigningKey;
  devices: Record<string, { keys: Record<string, string>; signatures?: Record<string, object> }>;
}

/** What the homeserver publishes for `userId`, asked with a token of another device. */
async function published(token: string, userId: string): Promise<Published> {
  const res = await fetch(`${synapse().baseUrl}/_matrix/client/v3/keys/query`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ device_keys: { [userId]: [] } }),
  });
  expect(res.ok).toBe(true);
  const body = (await res.json()) as {
    master_keys?: Record<string, CrossSigningKey>;
    self_signing_keys?: Record<string, CrossSigningKey>;
    user_signing_keys?: Record<string, CrossSigningKey>;
    device_keys?: Record<string, Published['devices']>;
  };
  const out: Published = { devices: body.device_keys?.[userId] ?? {} };
  const master = body.master_keys?.[userId];
  const ssk = body.self_signing_keys?.[userId];
  const usk = body.user_signing_keys?.[userId];
  if (master) out.master = master;
  if (ssk) out.selfSigning = ssk;
  if (usk) out.userSigning = usk;
  return out;
}

/** Checks an Ed25519 signature on a signed JSON object, as every Matrix client does. */
function signedBy(
  object: { signatures?: Record<string, Record<string, string>> } & object,
  userId: string,
  publicKey: string,
  keyId = `ed25519:${publicKey}`,
): boolean {
  const signature = object.signatures?.[userId]?.[keyId];
  if (!signature) return false;
  const spki = Buffer.concat([
    Buffer.from('302a300506032b6570032100', 'hex'),
    Buffer.from(publicKey, 'base64'),
  ]);
  return verify(
    null,
    signingBytes(object),
    createPublicKey({ key: spki, format: 'der', type: 'spki' }),
    Buffer.from(signature, 'base64'),
  );
}

async function vaultMasterBase64(vault: Vault): Promise<string> {
  return unpadded(ed25519RawFromSpki((await vault.publicKey('cross-signing-master')).spki));
}

async function startService(
  vault: Vault,
  user: SynapseUser,
  dataDir: string,
  options: { newDevice?: boolean } = {},
): Promise<EndpointService> {
  return EndpointService.start({
    vault,
    dataDir,
    // A second store on a used vault is a new device only when asked for (STORE_MISSING).
    ...(options.newDevice ? { allowFreshStore: true } : {}),
    homeserver: synapse().baseUrl,
    user: user.localpart,
    password: user.password,
    logger,
  });
}

/** Every byte of every file under `root`. */
async function allFiles(root: string): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(await readFile(join(entry.parentPath, entry.name)));
  }
  return out;
}

describe('cross-signing with the master key in the TPM vault', () => {
  const vaultDir = (): string => join(dir, 'vault');
  const dataDir = (): string => join(dir, 'data');
  let vault: VaultBackend;
  let counted: ReturnType<typeof counting>;
  let current: EndpointService | undefined;
  const running = (): EndpointService => {
    if (!current) throw new Error('the service is not running');
    return current;
  };
  let masterPublic: string;
  let first: Published;

  beforeAll(async () => {
    vault = await openVault(tpmConfig(tpm(), vaultDir(), alice.userId));
    await vault.provision();
    counted = counting(vault);
    masterPublic = await vaultMasterBase64(vault);
    current = await startService(counted.vault, alice, dataDir());
  });
  afterAll(async () => {
    await current?.stop();
    await vault.close();
  });

  it("publishes the vault's master key, subkeys signed by it, and a stock peer sees our device cross-signed", async () => {
    const deviceId = running().endpoint.deviceId;
    first = await published(alice.accessToken, alice.userId);
    const { master, selfSigning, userSigning } = first;
    if (!master || !selfSigning || !userSigning) throw new Error('no cross-signing keys');
    expect(master.keys).toEqual({ [`ed25519:${masterPublic}`]: masterPublic });
    expect(master.usage).toEqual(['master']);
    expect(signedBy(selfSigning, alice.userId, masterPublic)).toBe(true);
    expect(signedBy(userSigning, alice.userId, masterPublic)).toBe(true);
    // Our device key vouches for the master key, as Element's bootstrap does.
    const device = first.devices[deviceId];
    const deviceKey = device?.keys[`ed25519:${deviceId}`];
    if (!device || !deviceKey) throw new Error('our device keys are not published');
    expect(signedBy(master, alice.userId, deviceKey, `ed25519:${deviceId}`)).toBe(true);
    // ...and the self-signing key signs our device.
    const ssk = keyOf(selfSigning) ?? '';
    expect(signedBy(device as object, alice.userId, ssk)).toBe(true);
    // Two signatures from the vault: the self-signing and the user-signing key.
    expect(counted.masterSigns()).toBe(2);

    // The stock peer sees our identity and our device as signed by its owner.
    expect(await bob.crypto.userHasCrossSigningKeys(alice.userId, true)).toBe(true);
    // A room in common makes the peer track alice, as it would for any contact.
    const dm = await running().endpoint.createRoom({ invite: [bob.userId], isDirect: true });
    await bob.acceptInvite(dm);
    await bob.waitForMember(dm, alice.userId);
    await waitUntil(
      "the stock peer sees alice's device as cross-signed",
      async () => {
        await bob.crypto.getUserDeviceInfo([alice.userId], true);
        const status = await bob.crypto.getDeviceVerificationStatus(alice.userId, deviceId);
        return status?.signedByOwner === true;
      },
      { timeoutMs: 30_000, intervalMs: 250 },
    );

    // The crypto core counts our identity as verified (we hold subkeys matching the published
    // ones) and trusts our device through it.
    const machine = running().endpoint.engine.machine;
    const identity = await machine.getIdentity(new UserId(alice.userId));
    if (!identity || !('userSigningKey' in identity)) throw new Error('no own identity');
    expect(identity.masterKey).toContain(masterPublic);
    expect(identity.isVerified()).toBe(true);
    expect(await identity.trustsOurOwnDevice()).toBe(true);
    identity.free();
    const ours = await running().endpoint.engine.devices(alice.userId);
    expect(ours.find((d) => d.deviceId === deviceId)).toEqual({
      deviceId,
      crossSignedByOwner: true,
      verified: true,
    });
  });

  it("the vault signs nothing else with the master key: not another user's subkey, not a master key, not arbitrary bytes", async () => {
    const refused = { code: 'VAULT_SIGN_REFUSED' };
    const theirs = keyOf(first.master) ?? '';
    for (const message of [
      subkeyBytes(bob.userId),
      subkeyBytes(bob.userId, 'user_signing'),
      // A master key for us that is not the vault's: what a compromised endpoint would want.
      signingBytes({ user_id: alice.userId, usage: ['master'], keys: first.master?.keys ?? {} }),
      // Our real subkey, with its published signatures left in.
      new TextEncoder().encode(JSON.stringify(first.selfSigning)),
      new TextEncoder().encode('{"probe":true}'),
    ]) {
      await expect(vault.sign('cross-signing-master', message)).rejects.toMatchObject(refused);
    }
    // Nor the X.509 key anything but our master key.
    const bobMaster = signingBytes({
      user_id: bob.userId,
      usage: ['master'],
      keys: { [`ed25519:${theirs}`]: theirs },
    });
    await expect(vault.sign('x509-identity', bobMaster)).rejects.toMatchObject(refused);
  });

  it('never gives the endpoint the master key: the core holds subkeys only, and only the vault signs', async () => {
    const machine = running().endpoint.engine.machine;
    const status = await machine.crossSigningStatus();
    expect([status.hasMaster, status.hasSelfSigning, status.hasUserSigning]).toEqual([
      false,
      true,
      true,
    ]);
    const exported = await machine.exportCrossSigningKeys();
    if (!exported) throw new Error('no cross-signing keys in the core');
    expect(exported.masterKey).toBeUndefined();
    // The subkeys the core holds are the published ones.
    const sskSeed = Buffer.from(exported.self_signing_key ?? '', 'base64');
    const uskSeed = Buffer.from(exported.userSigningKey ?? '', 'base64');
    expect(unpadded(ed25519PublicFromSeed(sskSeed))).toBe(keyOf(first.selfSigning));
    expect(unpadded(ed25519PublicFromSeed(uskSeed))).toBe(keyOf(first.userSigning));
    // machine.sign signs with the device key and "the master key if available": only the
    // device key here.
    const signatures = await machine.sign('{"probe":true}');
    const ours = signatures.get(new UserId(alice.userId));
    expect([...(ours?.keys() ?? [])]).toEqual([`ed25519:${running().endpoint.deviceId}`]);
    signatures.free();
    // The sealed store holds no subkey seed in the clear either (and the master seed was
    // never anywhere in this process to be written).
    await running().store.compact();
    const needles = [sskSeed, uskSeed, Buffer.from(exported.self_signing_key ?? '')];
    for (const file of await allFiles(dataDir())) {
      for (const needle of needles) expect(file.includes(needle)).toBe(false);
    }
    sskSeed.fill(0);
    uskSeed.fill(0);
    exported.free();
  });

  it("signs a contact with our user-signing key, and the core then counts the contact's identity and devices as verified", async () => {
    const machine = running().endpoint.engine.machine;
    const api = running().endpoint.api;
    await running().endpoint.engine.track([bob.userId]);
    await waitUntil(
      "bob's identity is known",
      async () => {
        await running().endpoint.engine.processOutgoing();
        const identity = await machine.getIdentity(new UserId(bob.userId));
        const known = identity !== undefined;
        identity?.free();
        return known;
      },
      { timeoutMs: 30_000, intervalMs: 250 },
    );
    const identity = await machine.getIdentity(new UserId(bob.userId));
    if (!identity || 'userSigningKey' in identity) throw new Error('no identity for bob');
    expect(identity.isVerified()).toBe(false);
    const request = await identity.verify();
    identity.free();
    await api.signaturesUpload(request.body);
    // bob's master key now carries our user-signing signature on the homeserver.
    const bobKeys = await published(alice.accessToken, bob.userId);
    const usk = keyOf(first.userSigning) ?? '';
    expect(bobKeys.master && signedBy(bobKeys.master, alice.userId, usk)).toBe(true);
    await waitUntil(
      "bob's identity is verified in the core",
      async () => {
        const query = machine.queryKeysForUsers([new UserId(bob.userId)]);
        await machine.markRequestAsSent(query.id, query.type, await api.keysQuery(query.body));
        const again = await machine.getIdentity(new UserId(bob.userId));
        const ok = again?.isVerified() === true;
        again?.free();
        return ok;
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    const bobDevices = await running().endpoint.engine.devices(bob.userId);
    expect(bobDevices.find((d) => d.deviceId === bob.deviceId)?.verified).toBe(true);
  });

  it('keeps the identity across a restart: no new master, no upload, no vault signature', async () => {
    const deviceId = running().endpoint.deviceId;
    await running().stop();
    current = undefined;
    const before = counted.masterSigns();
    await vault.close();
    vault = await openVault(tpmConfig(tpm(), vaultDir(), alice.userId));
    counted = counting(vault);
    current = await startService(counted.vault, alice, dataDir());
    expect(running().endpoint.deviceId).toBe(deviceId);
    expect(counted.masterSigns()).toBe(0);
    expect(before).toBe(2);
    const after = await published(alice.accessToken, alice.userId);
    expect(after.master).toEqual(first.master);
    expect(after.selfSigning).toEqual(first.selfSigning);
    expect(after.userSigning).toEqual(first.userSigning);
    const identity = await running().endpoint.engine.machine.getIdentity(new UserId(alice.userId));
    expect(identity?.isVerified()).toBe(true);
    identity?.free();
  });

  it('a new device on the same vault (the old store lost) gets new subkeys under the same master', async () => {
    await running().stop();
    current = undefined;
    await vault.close();
    vault = await openVault(tpmConfig(tpm(), vaultDir(), alice.userId));
    counted = counting(vault);
    current = await startService(counted.vault, alice, join(dir, 'data-2'), { newDevice: true });
    const after = await published(alice.accessToken, alice.userId);
    expect(after.master?.keys).toEqual(first.master?.keys);
    expect(keyOf(after.selfSigning)).not.toBe(keyOf(first.selfSigning));
    expect(signedBy(after.selfSigning ?? { signatures: {} }, alice.userId, masterPublic)).toBe(
      true,
    );
    expect(counted.masterSigns()).toBe(2);
    const status = await bob.crypto.getUserVerificationStatus(alice.userId);
    // bob never verified alice: the identity is the same one he pinned, so no warning either.
    expect(status.needsUserApproval).toBe(false);
    await waitUntil(
      "the stock peer sees alice's new device as cross-signed",
      async () => {
        await bob.crypto.getUserDeviceInfo([alice.userId], true);
        const s = await bob.crypto.getDeviceVerificationStatus(
          alice.userId,
          running().endpoint.deviceId,
        );
        return s?.signedByOwner === true;
      },
      { timeoutMs: 30_000, intervalMs: 250 },
    );
  });
  it('refuses our identity when the homeserver serves our subkeys under its own master key', async () => {
    // The homeserver answers the core's /keys/query for us with its own master key M' signing
    // our real subkeys: the core would hold a verified own identity that is not the vault's.
    const api = new HomeserverClient({ baseUrl: synapse().baseUrl });
    await api.login(alice.localpart, alice.password);
    const attacker = generateKeyPairSync('ed25519');
    const theirs = unpadded(
      attacker.publicKey.export({ type: 'spki', format: 'der' }).subarray(12),
    );
    const theirId = `ed25519:${theirs}`;
    const resign = (key: CrossSigningKey): CrossSigningKey => {
      const bare = { user_id: key.user_id, usage: key.usage, keys: key.keys };
      const signature = sign(null, signingBytes({ ...bare }), attacker.privateKey);
      return { ...bare, signatures: { [alice.userId]: { [theirId]: unpadded(signature) } } };
    };
    let armed = false;
    let rewritten = 0;
    const lying = new Proxy(api, {
      get(target, key) {
        if (key === 'keysQuery') {
          return async (body: string) => {
            const text = await target.keysQuery(body);
            // The truth until our subkeys are uploaded; then the core's query is lied to.
            if (!armed) return text;
            const answer = JSON.parse(text) as {
              master_keys?: Record<string, CrossSigningKey>;
              self_signing_keys?: Record<string, CrossSigningKey>;
              user_signing_keys?: Record<string, CrossSigningKey>;
            };
            const ssk = answer.self_signing_keys?.[alice.userId];
            const usk = answer.user_signing_keys?.[alice.userId];
            if (!answer.master_keys?.[alice.userId] || !ssk || !usk) return text;
            rewritten++;
            answer.master_keys[alice.userId] = {
              user_id: alice.userId,
              usage: ['master'],
              keys: { [theirId]: theirs },
            };
            answer.self_signing_keys = { ...answer.self_signing_keys, [alice.userId]: resign(ssk) };
            answer.user_signing_keys = { ...answer.user_signing_keys, [alice.userId]: resign(usk) };
            return JSON.stringify(answer);
          };
        }
        if (key === 'deviceSigningUpload') {
          return async (...args: Parameters<HomeserverClient['deviceSigningUpload']>) => {
            const answer = await target.deviceSigningUpload(...args);
            armed = true;
            return answer;
          };
        }
        const value: unknown = Reflect.get(target, key);
        return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
      },
    });
    const engine = await CryptoEngine.open({
      api: lying,
      userId: alice.userId,
      deviceId: api.deviceId ?? '',
    });
    try {
      await engine.processOutgoing();
      await expect(
        engine.ensureCrossSigning(
          { user: alice.localpart, password: alice.password },
          { signer: vaultMasterKeySigner(counted.vault) },
        ),
      ).rejects.toThrow(/master key that is not the vault's/);
      expect(rewritten).toBeGreaterThan(0);
      // The core did take the lie (so it would have trusted it) and was stopped before the
      // subkeys went in.
      const identity = await engine.machine.getIdentity(new UserId(alice.userId));
      expect(identity?.masterKey).toContain(theirs);
      identity?.free();
      expect(await ownMasterMatches(engine.machine, alice.userId, masterPublic)).toBe(false);
      expect(await ownMasterMatches(engine.machine, alice.userId, theirs)).toBe(true);
      const status = await engine.machine.crossSigningStatus();
      expect([status.hasSelfSigning, status.hasUserSigning]).toEqual([false, false]);
      status.free();
      // The running endpoint's core, told the truth, matches the vault.
      expect(
        await ownMasterMatches(running().endpoint.engine.machine, alice.userId, masterPublic),
      ).toBe(true);
    } finally {
      engine.close();
    }
  });
});

describe('an account whose identity is not the vault’s', () => {
  it('is not replaced: the published master key stays the one the stock client made', async () => {
    const carolUser = await synapse().registerUser('carol');
    const carol = await StockPeer.start(synapse().baseUrl, carolUser);
    const vault = await openVault(
      tpmConfig(otherTpm(), join(dir, 'carol-vault'), carolUser.userId),
    );
    try {
      await carol.bootstrapCrossSigning(carolUser.password);
      const before = await published(carolUser.accessToken, carolUser.userId);
      expect(before.master).toBeDefined();
      await vault.provision();
      const counted = counting(vault);
      warnings.length = 0;
      const service = await startService(counted.vault, carolUser, join(dir, 'carol-data'));
      try {
        const after = await published(carolUser.accessToken, carolUser.userId);
        expect(after.master).toEqual(before.master);
        expect(after.selfSigning).toEqual(before.selfSigning);
        expect(keyOf(after.master)).not.toBe(await vaultMasterBase64(vault));
        expect(counted.masterSigns()).toBe(0);
        expect(warnings.join('\n')).toContain('not replacing it');
        const status = await service.endpoint.engine.machine.crossSigningStatus();
        expect([status.hasMaster, status.hasSelfSigning, status.hasUserSigning]).toEqual([
          false,
          false,
          false,
        ]);
      } finally {
        await service.stop();
      }
    } finally {
      await vault.close();
      await carol.stop();
    }
  });
});

describe('cross-signing with the master key in a PKCS#11 token (SoftHSM2)', () => {
  it("publishes the token's master key and signs our device with the subkey", async () => {
    // SoftHSM reads its configuration from the environment, once per process.
    process.env.SOFTHSM2_CONF = hsm().env.SOFTHSM2_CONF;
    const daveUser = await synapse().registerUser('dave');
    const config: Pkcs11Config = {
      backend: 'pkcs11',
      owner: { userId: daveUser.userId },
      stateDir: join(dir, 'dave-vault'),
      module: hsm().modulePath,
      token: `pkcs11:token=${encodeURIComponent(hsm().label)}`,
      pin: { file: hsm().pinFile },
    };
    const vault = await openVault(config);
    try {
      await vault.provision();
      const counted = counting(vault);
      const service = await startService(counted.vault, daveUser, join(dir, 'dave-data'));
      try {
        const masterPublic = await vaultMasterBase64(vault);
        const keys = await published(daveUser.accessToken, daveUser.userId);
        expect(keyOf(keys.master)).toBe(masterPublic);
        expect(signedBy(keys.selfSigning ?? {}, daveUser.userId, masterPublic)).toBe(true);
        expect(signedBy(keys.userSigning ?? {}, daveUser.userId, masterPublic)).toBe(true);
        const device = keys.devices[service.endpoint.deviceId] ?? {};
        expect(signedBy(device, daveUser.userId, keyOf(keys.selfSigning) ?? '')).toBe(true);
        expect(counted.masterSigns()).toBe(2);
        const status = await service.endpoint.engine.machine.crossSigningStatus();
        expect(status.hasMaster).toBe(false);
      } finally {
        await service.stop();
      }
    } finally {
      await vault.close();
    }
  });
});

describe('with the vault in its own process (the compartments as deployed)', () => {
  it('bootstraps over the vault RPC: the endpoint process only ever sees signatures', async () => {
    const erinUser = await synapse().registerUser('erin');
    const configPath = join(dir, 'erin-vault.json');
    // On the other swtpm, which carol's vault (a different state dir) has finished with.
    const erinConfig = tpmConfig(otherTpm(), join(dir, 'erin-vault'), erinUser.userId);
    await writeFile(configPath, JSON.stringify(erinConfig));
    // Provisioning is the operator's `vault init`; swtpm serves one connection at a time.
    const local = await openVault(erinConfig);
    await local.provision();
    await local.close();
    const spawned = await spawnVault(configPath);
    try {
      const counted = counting(spawned.vault as unknown as VaultBackend);
      const service = await startService(counted.vault, erinUser, join(dir, 'erin-data'));
      try {
        const masterPublic = await vaultMasterBase64(spawned.vault);
        const keys = await published(erinUser.accessToken, erinUser.userId);
        expect(keyOf(keys.master)).toBe(masterPublic);
        expect(signedBy(keys.selfSigning ?? {}, erinUser.userId, masterPublic)).toBe(true);
        expect(signedBy(keys.userSigning ?? {}, erinUser.userId, masterPublic)).toBe(true);
        expect(counted.masterSigns()).toBe(2);
        const status = await service.endpoint.engine.machine.crossSigningStatus();
        expect(status.hasMaster).toBe(false);
        expect(status.hasSelfSigning).toBe(true);
      } finally {
        await service.stop();
      }
    } finally {
      await spawned.stop();
    }
  });
});
