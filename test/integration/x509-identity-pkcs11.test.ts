import { execFile } from 'node:child_process';
import { X509Certificate, createPublicKey } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Pkcs11Config } from '../../keyvault/config.ts';
import { openVault } from '../../keyvault/open.ts';
import type { Vault, VaultBackend } from '../../keyvault/vault.ts';
import { type Issued, type SigningKey, createRootCa, issueLeaf } from '../../deploy/x509/index.ts';
import { loadX509Material } from '../../endpoint/crypto/x509.ts';
import { EndpointService } from '../../endpoint/service.ts';
import {
  StockPeer,
  type SynapseUser,
  makeTempDir,
  startSoftHsm,
  startSynapse,
} from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { waitUntil } from '../fixtures/process.ts';
import {
  type MasterKey,
  opensslVerifyMasterCms,
  queryMasterKey,
  x509SignatureOf,
} from '../fixtures/x509.ts';

// X.509 identities (issue 6) with the vault's x509-identity RSA key in a PKCS#11 token
// (SoftHSM2) rather than the TPM (x509-identity.test.ts): our master key carries a CMS
// signature by the token's key that openssl accepts under our CA, a stock matrix-js-sdk peer
// configured with our CA sees us verified, and one configured with another CA does not.
const run = promisify(execFile);
const synapse = useFixture(() => startSynapse());
const hsm = useFixture(() => startSoftHsm());

type Ca = Issued & { key: SigningKey };
let dir: string;
let root: Ca;
let otherRoot: Ca;
let vault: VaultBackend;
let service: EndpointService | undefined;
let alice: SynapseUser;
const peers: StockPeer[] = [];
let x509Signs = 0;

/** A vault whose x509-identity signatures are counted. */
function counting(v: VaultBackend): Vault {
  return new Proxy(v, {
    get(target, key) {
      if (key === 'sign') {
        return (purpose: Parameters<Vault['sign']>[0], message: Uint8Array) => {
          if (purpose === 'x509-identity') x509Signs++;
          return target.sign(purpose, message);
        };
      }
      const value: unknown = Reflect.get(target, key);
      return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
    },
  });
}

beforeAll(async () => {
  dir = await makeTempDir('x509-identity-pkcs11');
  [root, otherRoot, alice] = await Promise.all([
    createRootCa({ commonName: 'Institution Root' }),
    createRootCa({ commonName: 'Someone Else' }),
    synapse().registerUser('alice'),
  ]);
  await writeFile(join(dir, 'root.pem'), root.certPem);
  await writeFile(join(dir, 'other.pem'), otherRoot.certPem);
  // SoftHSM reads its configuration from the environment, once per process.
  process.env.SOFTHSM2_CONF = hsm().env.SOFTHSM2_CONF;
  // Opened as the vault command opens it: owned by alice, signing only what its purposes allow.
  const config: Pkcs11Config = {
    backend: 'pkcs11',
    owner: { userId: alice.userId },
    stateDir: join(dir, 'vault'),
    module: hsm().modulePath,
    token: `pkcs11:token=${encodeURIComponent(hsm().label)}`,
    pin: { file: hsm().pinFile },
  };
  vault = await openVault(config);
  await vault.provision();
  const spki = (await vault.publicKey('x509-identity')).spki;
  const leaf = await issueLeaf(root, { userId: alice.userId, publicKey: spki });
  await writeFile(join(dir, 'alice.chain.pem'), leaf.certPem);
  const material = await loadX509Material({
    caCerts: [join(dir, 'root.pem')],
    chain: join(dir, 'alice.chain.pem'),
  });
  service = await EndpointService.start({
    vault: counting(vault),
    dataDir: join(dir, 'data'),
    homeserver: synapse().baseUrl,
    user: alice.localpart,
    password: alice.password,
    x509: material,
  });
}, 180_000);

afterAll(async () => {
  for (const p of peers) await p.stop();
  await service?.stop();
  await vault.close();
});

/** The token's x509-identity public key, read by pkcs11-tool (not through the vault). */
async function tokenPublicKeyDer(): Promise<Buffer> {
  const out = join(dir, 'token-pub.der');
  // The PIN on argv: a test-only shortcut, as in the softhsm fixture.
  // prettier-ignore
  await run('pkcs11-tool', ['--module', hsm().modulePath, '--token-label', hsm().label, '--login',
    '--pin', hsm().pin, '--read-object', '--type', 'pubkey', '--label', 'mte-x509-identity',
    '-o', out], { env: hsm().env });
  return createPublicKey({ key: await readFile(out), format: 'der', type: 'spki' }).export({
    type: 'spki',
    format: 'der',
  });
}

/** A stock peer configured with `caCertsPem`, tracking alice through a room it invites her to. */
async function observer(name: string, caCertsPem: string): Promise<StockPeer> {
  const user = await synapse().registerUser(name);
  const peer = await StockPeer.start(synapse().baseUrl, user, { crypto: { caCertsPem } });
  peers.push(peer);
  await peer.createEncryptedRoom({ invite: [alice.userId] });
  return peer;
}

const poll = { timeoutMs: 30_000, intervalMs: 300 };

describe('our X.509 identity, the key in a PKCS#11 token (SoftHSM2)', () => {
  it("publishes our master key with a CMS signature by the token's key, valid under our CA", async () => {
    const master = await queryMasterKey(synapse().baseUrl, alice.accessToken, alice.userId);
    const sig = x509SignatureOf(master);
    expect(sig?.[0]).toBe(`io.element.x509:${root.skiBase64}`);
    expect(x509Signs).toBe(1); // at bootstrap, through cross-signing's hook; nothing else
    const v = await opensslVerifyMasterCms(dir, master as MasterKey, sig?.[1] ?? '', 'root.pem', [
      '-signer',
      'signer.pem',
    ]);
    expect(v.stderr).toContain('Verification successful');
    // The signer openssl checked the signature against holds the key the token holds.
    const signer = new X509Certificate(await readFile(join(dir, 'signer.pem')));
    expect(signer.publicKey.export({ type: 'spki', format: 'der' })).toEqual(
      await tokenPublicKeyDer(),
    );
    // Under another CA, openssl refuses the same signature.
    const other = await opensslVerifyMasterCms(
      dir,
      master as MasterKey,
      sig?.[1] ?? '',
      'other.pem',
    );
    expect(other.code).not.toBe(0);
    expect(other.stderr).not.toContain('Verification successful');
  });

  it("the token's key signs nothing but our master key (keyvault/purposes)", async () => {
    const master = await queryMasterKey(synapse().baseUrl, alice.accessToken, alice.userId);
    const bare = { user_id: alice.userId, usage: ['master'], keys: master?.keys ?? {} };
    const refused = { code: 'VAULT_SIGN_REFUSED' };
    // The published object with its signatures, another user's, arbitrary bytes: refused.
    const encode = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    for (const message of [
      encode(master),
      encode({ ...bare, user_id: '@mallory:example.org' }),
      encode('hello'),
    ]) {
      await expect(vault.sign('x509-identity', message)).rejects.toMatchObject(refused);
    }
  });

  it('a stock peer configured with our CA sees us verified', async () => {
    const bob = await observer('bob', root.certPem);
    await waitUntil(
      'bob to see alice verified',
      async () => {
        await bob.crypto.getUserDeviceInfo([alice.userId], true);
        return (await bob.crypto.getUserVerificationStatus(alice.userId)).isVerified();
      },
      poll,
    );
  });

  it('a stock peer configured with another CA knows our identity but does not see it verified', async () => {
    const dave = await observer('dave', otherRoot.certPem);
    let status: Awaited<ReturnType<typeof dave.crypto.getUserVerificationStatus>> | undefined;
    await waitUntil(
      'dave to know alice',
      async () => {
        await dave.crypto.getUserDeviceInfo([alice.userId], true);
        status = await dave.crypto.getUserVerificationStatus(alice.userId);
        return status.known;
      },
      poll,
    );
    expect(status?.isVerified()).toBe(false);
    expect(status?.isCrossSigningVerified()).toBe(false);
  });
});
