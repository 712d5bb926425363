import { constants, createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import type { Server, Socket } from 'node:net';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type RemoteVault, vaultClient } from '../../keyvault/client.ts';
import { connectUnix, listenUnix, socketChannel } from '../../keyvault/common/rpc/index.ts';
import type { DevConfig } from '../../keyvault/config.ts';
import { MAX_SIGN_MESSAGE_BYTES } from '../../keyvault/contract.ts';
import { loadVaultConfig, openVault } from '../../keyvault/open.ts';
import { OWNER_MISSING, purposeBound } from '../../keyvault/purposes/index.ts';
import { serveVault } from '../../keyvault/server.ts';
import {
  type SigningPurpose,
  type Vault,
  type VaultBackend,
  VaultCode,
  VaultError,
} from '../../keyvault/vault.ts';
import { ed25519RawFromSpki, signingBytes, unpadded } from '../../endpoint/crypto/cross-signing.ts';
import { ourMasterKeyBytes } from '../../endpoint/crypto/x509.ts';
import { makeTempDir } from '../fixtures/process.ts';

// Purpose-bound signing: the vault signs with its cross-signing master key only the
// owner's self-signing and user-signing key objects, and with its X.509 key only the owner's
// master key, in exact canonical JSON. Every refusal is checked twice: on the vault as the
// vault command opens it (openVault, dev backend), and through the real RPC (keyvault/server.ts
// and the client over a Unix socket), where a compromised endpoint would send it.
const OWNER = '@alice:example.org';
const OTHER = '@mallory:example.org';

let root: string;
let local: VaultBackend;
let remote: RemoteVault;
let server: Server;
const serverSockets: Socket[] = [];
let master: string;
let otherKey: string;

function ed25519Public(): string {
  const { publicKey } = generateKeyPairSync('ed25519');
  return unpadded(publicKey.export({ format: 'der', type: 'spki' }).subarray(12));
}

function devConfig(stateDir: string, owner: string | null = OWNER): DevConfig {
  return {
    backend: 'dev',
    ...(owner ? { owner: { userId: owner } } : {}),
    stateDir,
    allowInsecureDevBackend: true,
  };
}

async function quietly<T>(run: () => Promise<T>): Promise<T> {
  const quiet = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    return await run();
  } finally {
    quiet.mockRestore();
  }
}

beforeAll(async () => {
  root = await makeTempDir('vault-purposes');
  local = await quietly(() => openVault(devConfig(join(root, 'state'))));
  await local.provision();
  master = unpadded(ed25519RawFromSpki((await local.publicKey('cross-signing-master')).spki));
  otherKey = ed25519Public();
  server = await listenUnix(join(root, 'sock', 'vault.sock'), (socket) => {
    serverSockets.push(socket);
    serveVault(socketChannel(socket), local);
  });
  remote = await vaultClient(socketChannel(await connectUnix(join(root, 'sock', 'vault.sock'))));
});

afterAll(async () => {
  await remote.close();
  for (const s of serverSockets) s.destroy();
  await new Promise((r) => server.close(r));
  await local.close();
  await rm(root, { recursive: true, force: true });
});

const enc = (text: string): Uint8Array => new TextEncoder().encode(text);

/** A key object as the endpoint builds it, in its canonical JSON (endpoint/crypto). */
function keyObject(
  usage: string[],
  key: string,
  userId = OWNER,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { user_id: userId, usage, keys: { [`ed25519:${key}`]: key }, ...extra };
}

/** The canonical JSON with `extra` fields kept: signingBytes would strip signatures/unsigned. */
function rawJson(object: Record<string, unknown>): Uint8Array {
  const sorted = Object.fromEntries(Object.entries(object).sort(([a], [b]) => (a < b ? -1 : 1)));
  return enc(JSON.stringify(sorted));
}

/** Both ways in, resolved when a test runs (the vaults open in beforeAll). */
const vaults: [string, () => Vault][] = [
  ['the vault as opened (dev backend)', () => local],
  ['the vault over the RPC', () => remote],
];

async function refusal(vault: Vault, purpose: SigningPurpose, message: Uint8Array) {
  const e = await vault.sign(purpose, message).then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!(e instanceof VaultError)) throw new Error(`expected a VaultError, got ${String(e)}`);
  return e;
}

interface Case {
  name: string;
  purpose: SigningPurpose;
  message: () => Uint8Array;
  /** The rule the refusal names. */
  rule: RegExp;
}

const ourSubkey = (usage: string) => keyObject([usage], otherKey);

const cases: Case[] = [
  // Both purposes: not a key object at all.
  ...(['cross-signing-master', 'x509-identity'] as const).flatMap((purpose): Case[] => [
    { name: 'arbitrary bytes', purpose, message: () => enc('hello'), rule: /not JSON/ },
    { name: 'nothing', purpose, message: () => new Uint8Array(0), rule: /not JSON/ },
    {
      name: 'random binary',
      purpose,
      message: () => new Uint8Array([0xff, 0xfe, 0x00, 0x80]),
      rule: /not UTF-8/,
    },
    { name: 'a JSON array', purpose, message: () => enc('[]'), rule: /not a JSON object/ },
    { name: 'a JSON string', purpose, message: () => enc('"x"'), rule: /not a JSON object/ },
    {
      name: 'a huge input (the most the RPC carries)',
      purpose,
      message: () => new Uint8Array(MAX_SIGN_MESSAGE_BYTES).fill(0x20),
      rule: /longer than a cross-signing key object/,
    },
    {
      name: 'a huge key object (a long field)',
      purpose,
      message: () => rawJson(keyObject(['master'], master, `@${'a'.repeat(2000)}:example.org`)),
      rule: /longer than a cross-signing key object/,
    },
    {
      name: 'a DER certificate structure',
      purpose,
      message: () => new Uint8Array([0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00]),
      rule: /not UTF-8|not JSON/,
    },
  ]),

  // cross-signing-master: only the owner's self-signing and user-signing keys.
  {
    name: "another user's self-signing key",
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['self_signing'], otherKey, OTHER)),
    rule: /not the vault owner's/,
  },
  {
    name: "another user's user-signing key",
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['user_signing'], otherKey, OTHER)),
    rule: /not the vault owner's/,
  },
  {
    name: 'a user id differing only in case',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['self_signing'], otherKey, '@Alice:example.org')),
    rule: /not the vault owner's/,
  },
  {
    name: 'our master key (the master signing a master)',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['master'], master)),
    rule: /usage must be exactly/,
  },
  {
    name: "another user's master key (the user-signing key's job, not the master's)",
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['master'], otherKey, OTHER)),
    rule: /not the vault owner's/,
  },
  {
    name: 'a new master key for us',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['master'], otherKey)),
    rule: /usage must be exactly/,
  },
  {
    name: 'both usages at once',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['self_signing', 'user_signing'], otherKey)),
    rule: /usage is not a list of exactly one string/,
  },
  {
    name: 'no usage',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject([], otherKey)),
    rule: /usage is not a list of exactly one string/,
  },
  {
    name: 'an unknown usage',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['device'], otherKey)),
    rule: /usage must be exactly/,
  },
  {
    name: 'usage as a string',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), usage: 'self_signing' }),
    rule: /usage is not a list/,
  },
  {
    name: 'a subkey that is the master key itself',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['self_signing'], master)),
    rule: /cannot be the master key itself/,
  },
  {
    name: 'a key object with signatures (not stripped)',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), signatures: { [OWNER]: { x: 'y' } } }),
    rule: /exactly the fields keys, usage and user_id/,
  },
  {
    name: 'a key object with unsigned',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), unsigned: {} }),
    rule: /exactly the fields/,
  },
  {
    name: 'a key object with an extra field',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('user_signing'), device_id: 'ABC' }),
    rule: /exactly the fields/,
  },
  {
    name: 'a key object without user_id',
    purpose: 'cross-signing-master',
    message: () => enc(`{"keys":{"ed25519:${otherKey}":"${otherKey}"},"usage":["self_signing"]}`),
    rule: /exactly the fields/,
  },
  {
    name: 'a __proto__ field',
    purpose: 'cross-signing-master',
    message: () =>
      enc(
        `{"__proto__":{},"keys":{"ed25519:${otherKey}":"${otherKey}"},"usage":["self_signing"],"user_id":"${OWNER}"}`,
      ),
    rule: /exactly the fields/,
  },
  {
    name: 'user_id as a number',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), user_id: 1 }),
    rule: /user_id is not a string/,
  },
  {
    name: 'two keys',
    purpose: 'cross-signing-master',
    message: () =>
      rawJson({
        ...ourSubkey('self_signing'),
        keys: { [`ed25519:${otherKey}`]: otherKey, [`ed25519:${master}`]: master },
      }),
    rule: /exactly one key/,
  },
  {
    name: 'no key',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), keys: {} }),
    rule: /exactly one key/,
  },
  {
    name: 'keys as a list',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), keys: [otherKey] }),
    rule: /keys is not an object/,
  },
  {
    name: 'a key id that is not the key',
    purpose: 'cross-signing-master',
    message: () =>
      rawJson({ ...ourSubkey('self_signing'), keys: { [`ed25519:${master}`]: otherKey } }),
    rule: /key id is not/,
  },
  {
    name: 'a key id of another algorithm',
    purpose: 'cross-signing-master',
    message: () =>
      rawJson({ ...ourSubkey('self_signing'), keys: { [`curve25519:${otherKey}`]: otherKey } }),
    rule: /key id is not/,
  },
  {
    name: 'a key that is not 32 bytes',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['self_signing'], otherKey.slice(0, 42))),
    rule: /not an unpadded base64 Ed25519 public key/,
  },
  {
    name: 'a padded base64 key',
    purpose: 'cross-signing-master',
    message: () => signingBytes(keyObject(['self_signing'], `${otherKey}=`)),
    rule: /not an unpadded base64 Ed25519 public key/,
  },
  {
    name: 'a key in a non-canonical base64 spelling (trailing bits set)',
    purpose: 'cross-signing-master',
    message: () => {
      const last = otherKey.at(-1) ?? 'A';
      const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
      const tweaked = alphabet[alphabet.indexOf(last) ^ 1] ?? 'A';
      return signingBytes(keyObject(['self_signing'], otherKey.slice(0, 42) + tweaked));
    },
    rule: /not an unpadded base64 Ed25519 public key/,
  },
  {
    name: 'a key as a number',
    purpose: 'cross-signing-master',
    message: () => rawJson({ ...ourSubkey('self_signing'), keys: { [`ed25519:${otherKey}`]: 7 } }),
    rule: /not an unpadded base64 Ed25519 public key/,
  },
  // The right object in a spelling other than canonical JSON.
  {
    name: 'spaces (pretty-printed)',
    purpose: 'cross-signing-master',
    message: () => enc(JSON.stringify(ourSubkey('self_signing'), null, 1)),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'one space after a colon',
    purpose: 'cross-signing-master',
    message: () =>
      enc(new TextDecoder().decode(signingBytes(ourSubkey('self_signing'))).replace('":', '": ')),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'a trailing newline',
    purpose: 'cross-signing-master',
    message: () => enc(new TextDecoder().decode(signingBytes(ourSubkey('self_signing'))) + '\n'),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'a byte-order mark',
    purpose: 'cross-signing-master',
    message: () =>
      enc('\ufeff' + new TextDecoder().decode(signingBytes(ourSubkey('self_signing')))),
    rule: /not JSON|not in Matrix canonical JSON/,
  },
  {
    name: 'reordered keys',
    purpose: 'cross-signing-master',
    message: () => enc(JSON.stringify(ourSubkey('self_signing'))), // user_id first
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'a duplicate usage (a parser taking the first sees a master key)',
    purpose: 'cross-signing-master',
    message: () =>
      enc(
        `{"keys":{"ed25519:${otherKey}":"${otherKey}"},"usage":["master"],"usage":["self_signing"],"user_id":"${OWNER}"}`,
      ),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'a duplicate user_id (a parser taking the first sees another user)',
    purpose: 'cross-signing-master',
    message: () =>
      enc(
        `{"keys":{"ed25519:${otherKey}":"${otherKey}"},"usage":["self_signing"],"user_id":"${OTHER}","user_id":"${OWNER}"}`,
      ),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'a \\u escape in the user id',
    purpose: 'cross-signing-master',
    message: () =>
      enc(
        `{"keys":{"ed25519:${otherKey}":"${otherKey}"},"usage":["self_signing"],"user_id":"\\u0040alice:example.org"}`,
      ),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'a \\u escape in the usage',
    purpose: 'cross-signing-master',
    message: () =>
      enc(
        `{"keys":{"ed25519:${otherKey}":"${otherKey}"},"usage":["self\\u005fsigning"],"user_id":"${OWNER}"}`,
      ),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'an escaped slash in the key',
    purpose: 'cross-signing-master',
    message: () => {
      let key = ed25519Public();
      while (!key.includes('/')) key = ed25519Public();
      const text = new TextDecoder().decode(signingBytes(keyObject(['self_signing'], key)));
      return enc(text.replaceAll('/', '\\/'));
    },
    rule: /not in Matrix canonical JSON/,
  },

  // x509-identity: only our own master key, the vault's.
  {
    name: 'a self-signing key of ours',
    purpose: 'x509-identity',
    message: () => signingBytes(ourSubkey('self_signing')),
    rule: /usage must be \["master"\]/,
  },
  {
    name: "another user's master key",
    purpose: 'x509-identity',
    message: () => signingBytes(keyObject(['master'], otherKey, OTHER)),
    rule: /not the vault owner's/,
  },
  {
    name: "another user's master key with the vault's public key",
    purpose: 'x509-identity',
    message: () => signingBytes(keyObject(['master'], master, OTHER)),
    rule: /not the vault owner's/,
  },
  {
    name: 'a different master public key (one the homeserver made up)',
    purpose: 'x509-identity',
    message: () => signingBytes(keyObject(['master'], otherKey)),
    rule: /not this vault's cross-signing-master key/,
  },
  {
    name: 'our master key with signatures',
    purpose: 'x509-identity',
    message: () => rawJson(keyObject(['master'], master, OWNER, { signatures: {} })),
    rule: /exactly the fields/,
  },
  {
    name: 'our master key with an extra field',
    purpose: 'x509-identity',
    message: () => rawJson(keyObject(['master'], master, OWNER, { note: 'x' })),
    rule: /exactly the fields/,
  },
  {
    name: 'our master key with two keys',
    purpose: 'x509-identity',
    message: () =>
      rawJson({
        ...keyObject(['master'], master),
        keys: { [`ed25519:${master}`]: master, [`ed25519:${otherKey}`]: otherKey },
      }),
    rule: /exactly one key/,
  },
  {
    name: 'our master key, pretty-printed',
    purpose: 'x509-identity',
    message: () => enc(JSON.stringify(keyObject(['master'], master), null, 2)),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'our master key with a duplicate user_id',
    purpose: 'x509-identity',
    message: () =>
      enc(
        `{"keys":{"ed25519:${master}":"${master}"},"usage":["master"],"user_id":"${OTHER}","user_id":"${OWNER}"}`,
      ),
    rule: /not in Matrix canonical JSON/,
  },
  {
    name: 'our master key with a \\u escape',
    purpose: 'x509-identity',
    message: () =>
      enc(
        `{"keys":{"ed25519:${master}":"${master}"},"usage":["m\\u0061ster"],"user_id":"${OWNER}"}`,
      ),
    rule: /not in Matrix canonical JSON/,
  },
];

describe.each(vaults)('purpose-bound signing: refusals, on %s', (_, vault) => {
  it.each(cases)('$purpose refuses $name', async ({ purpose, message, rule }) => {
    const bytes = message();
    const e = await refusal(vault(), purpose, bytes);
    expect(e.code).toBe(VaultCode.SignRefused);
    expect(e.message).toMatch(rule);
    expect(e.message.startsWith(`${purpose}: refused to sign: `)).toBe(true);
    // The rule, never the bytes: no key, no user id, nothing of the message.
    for (const secret of [master, otherKey, OWNER, OTHER, 'hello']) {
      expect(e.message).not.toContain(secret);
    }
    expect(e.message.length).toBeLessThan(300);
  });
});

describe('purpose-bound signing: the Matrix flows keep working', () => {
  it.each(vaults)(
    'signs our self-signing and user-signing keys with the master key, on %s',
    async (_, get) => {
      const vault = get();
      const key = createPublicKey({
        key: Buffer.from((await vault.publicKey('cross-signing-master')).spki),
        format: 'der',
        type: 'spki',
      });
      for (const usage of ['self_signing', 'user_signing']) {
        // Exactly what endpoint/crypto/cross-signing.ts's bootstrap asks for.
        const bytes = signingBytes({ ...keyObject([usage], ed25519Public()) });
        const signature = await vault.sign('cross-signing-master', bytes);
        expect(verify(null, bytes, key, signature)).toBe(true);
      }
    },
  );

  it.each(vaults)('signs our master key with the X.509 key, on %s', async (_, get) => {
    const vault = get();
    const key = createPublicKey({
      key: Buffer.from((await vault.publicKey('x509-identity')).spki),
      format: 'der',
      type: 'spki',
    });
    // Exactly what endpoint/crypto/x509.ts (and the crypto core's raw_x509_signer) asks for.
    const bytes = ourMasterKeyBytes({ userId: OWNER, masterPublic: master });
    expect(
      Buffer.from(bytes).equals(Buffer.from(signingBytes(keyObject(['master'], master)))),
    ).toBe(true);
    const signature = await vault.sign('x509-identity', bytes);
    const pss = { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 };
    expect(verify('sha512', bytes, pss, signature)).toBe(true);
  });

  it('signs the bytes it checked, even if the caller changes its buffer meanwhile', async () => {
    const bytes = signingBytes(ourSubkey('self_signing'));
    const kept = Uint8Array.from(bytes);
    const signing = local.sign('cross-signing-master', bytes);
    bytes.fill(0x20);
    const signature = await signing;
    const key = createPublicKey({
      key: Buffer.from((await local.publicKey('cross-signing-master')).spki),
      format: 'der',
      type: 'spki',
    });
    expect(verify(null, kept, key, signature)).toBe(true);
  });

  it('accepts owners with any user id Matrix allows, and only theirs', async () => {
    const dir = join(root, 'owners');
    for (const owner of [
      '@a:b',
      '@alice.b=c/d+e-f_g:sub.example.org:8448',
      '@x:[::1]:80',
      '@X"\\:h',
    ]) {
      const vault = await quietly(() => openVault(devConfig(dir, owner)));
      try {
        await vault.provision();
        const pub = unpadded(
          ed25519RawFromSpki((await vault.publicKey('cross-signing-master')).spki),
        );
        const sub = signingBytes(keyObject(['user_signing'], otherKey, owner));
        await expect(vault.sign('cross-signing-master', sub)).resolves.toHaveLength(64);
        await expect(
          vault.sign('x509-identity', ourMasterKeyBytes({ userId: owner, masterPublic: pub })),
        ).resolves.toBeInstanceOf(Uint8Array);
        const e = await refusal(
          vault,
          'cross-signing-master',
          signingBytes(ourSubkey('user_signing')),
        );
        expect(e.message).toMatch(/not the vault owner's/);
      } finally {
        await vault.close();
      }
    }
  });
});

describe('purpose-bound signing: the owner', () => {
  it('without owner.userId the vault signs nothing, says so in status, and doctor fails', async () => {
    const vault = await quietly(() => openVault(devConfig(join(root, 'state'), null)));
    try {
      for (const [purpose, bytes] of [
        ['cross-signing-master', signingBytes(ourSubkey('self_signing'))],
        ['x509-identity', ourMasterKeyBytes({ userId: OWNER, masterPublic: master })],
      ] as const) {
        const e = await refusal(vault, purpose, bytes);
        expect(e.code).toBe(VaultCode.Config);
        expect(e.message).toContain('set owner.userId in the vault config');
      }
      expect((await vault.status()).warnings).toContain(OWNER_MISSING);
      const checks = await vault.doctor();
      expect(checks.find((c) => c.check.includes('owner.userId'))).toEqual({
        check: 'the vault config names its owner (owner.userId)',
        ok: false,
        detail: OWNER_MISSING,
      });
      // Everything else works as before.
      await expect(vault.publicKey('x509-identity')).resolves.toBeDefined();
    } finally {
      await vault.close();
    }
  });

  it('with an owner, status has no such warning and doctor passes the check', async () => {
    expect((await local.status()).warnings).not.toContain(OWNER_MISSING);
    expect((await local.doctor()).find((c) => c.check.includes('owner.userId'))?.ok).toBe(true);
  });

  it('is validated in the config file as a Matrix user id', async () => {
    const path = join(root, 'vault.json');
    const write = (owner: unknown) =>
      writeFile(
        path,
        JSON.stringify({ backend: 'dev', owner, stateDir: 's', allowInsecureDevBackend: true }),
      );
    for (const bad of [
      { userId: 'alice:example.org' },
      { userId: '@alice' },
      { userId: '@:example.org' },
      { userId: '@ali ce:example.org' },
      { userId: '@alice:exa_mple.org' },
      { userId: '@alice:example.org:99999x' },
      { userId: `@${'a'.repeat(250)}:example.org` },
      { userId: '@alicé:example.org' },
      { userId: OWNER, extra: true },
      { user: OWNER },
      OWNER,
    ]) {
      await write(bad);
      await expect(loadVaultConfig(path)).rejects.toMatchObject({
        code: VaultCode.Config,
        message: expect.stringMatching(/owner/) as unknown,
      });
    }
    await write({ userId: OWNER });
    expect((await loadVaultConfig(path)).owner).toEqual({ userId: OWNER });
    for (const backend of [
      { backend: 'tpm', transport: { device: '/dev/tpmrm0' }, pcrs: [7] },
      { backend: 'pkcs11', module: 'm.so', token: 'pkcs11:token=t', pin: { env: 'PIN' } },
    ]) {
      await writeFile(
        path,
        JSON.stringify({ ...backend, stateDir: 's', owner: { userId: OWNER } }),
      );
      expect((await loadVaultConfig(path)).owner).toEqual({ userId: OWNER });
    }
  });
});

describe('purpose-bound signing: the layer itself', () => {
  it('refuses a purpose it has no rule for, before the backend is asked', async () => {
    const sign = vi.fn();
    const inner = { sign, publicKey: vi.fn() } as unknown as VaultBackend;
    const bound = purposeBound(inner, { userId: OWNER });
    const e = await refusal(bound, 'attestation' as SigningPurpose, enc('{}'));
    expect(e.code).toBe(VaultCode.SignRefused);
    expect(sign).not.toHaveBeenCalled();
  });

  it('never asks the backend to sign what it refuses', async () => {
    const sign = vi.fn(() => Promise.resolve(new Uint8Array(64)));
    const inner = {
      sign,
      publicKey: (purpose: SigningPurpose) => local.publicKey(purpose),
    } as unknown as VaultBackend;
    const bound = purposeBound(inner, { userId: OWNER });
    for (const c of cases) await refusal(bound, c.purpose, c.message());
    expect(sign).not.toHaveBeenCalled();
    await bound.sign('cross-signing-master', signingBytes(ourSubkey('user_signing')));
    expect(sign).toHaveBeenCalledTimes(1);
  });
});
