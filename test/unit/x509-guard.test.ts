import { constants, generateKeyPairSync, sign } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { createRootCa, issueLeaf } from '../../deploy/x509/index.ts';
import { canonicalJson, signingBytes } from '../../endpoint/crypto/cross-signing.ts';
import {
  type OwnMaster,
  type VaultX509Signer,
  X509RefusedError,
  assertOurMasterKey,
  parseChain,
  ourMasterKeyBytes,
  refreshAtStart,
  refreshMasterSignature,
  vaultX509Signer,
} from '../../endpoint/crypto/x509.ts';

// The x509-identity key signs our own master key (the vault's) and nothing else, whichever
// path asks (the crypto core's raw signer, cross-signing's hook, the refresh), whatever the
// homeserver serves.
const ALICE = '@alice:example.org';
const OWN: OwnMaster = { userId: ALICE, masterPublic: 'M'.repeat(43) };
const FOREIGN = 'H'.repeat(43);

function masterKey(userId: string, key: string, extra: Record<string, unknown> = {}) {
  return { user_id: userId, usage: ['master'], keys: { [`ed25519:${key}`]: key }, ...extra };
}

const bytesOf = (o: object): Uint8Array => new TextEncoder().encode(canonicalJson(o));

describe('assertOurMasterKey', () => {
  it('accepts exactly the canonical JSON of our master key', () => {
    expect(() => {
      assertOurMasterKey(ourMasterKeyBytes(OWN), OWN);
    }).not.toThrow();
    expect(Buffer.from(ourMasterKeyBytes(OWN)).toString()).toBe(
      canonicalJson(masterKey(ALICE, OWN.masterPublic)),
    );
  });

  it.each([
    ['a foreign master key for us', masterKey(ALICE, FOREIGN), /the key is not the vault's/],
    ["another user's key", masterKey('@bob:example.org', OWN.masterPublic), /another user/],
    ['extra fields', masterKey(ALICE, OWN.masterPublic, { x: 1 }), /unexpected fields/],
    [
      'signatures left in',
      masterKey(ALICE, OWN.masterPublic, { signatures: {} }),
      /unexpected fields/,
    ],
    ['another usage', { ...masterKey(ALICE, OWN.masterPublic), usage: ['self_signing'] }, /usage/],
    [
      'two usages',
      { ...masterKey(ALICE, OWN.masterPublic), usage: ['master', 'self_signing'] },
      /usage/,
    ],
    [
      'a second key',
      {
        ...masterKey(ALICE, OWN.masterPublic),
        keys: {
          [`ed25519:${OWN.masterPublic}`]: OWN.masterPublic,
          [`ed25519:${FOREIGN}`]: FOREIGN,
        },
      },
      /the key is not the vault's/,
    ],
    [
      'our key under another id',
      { ...masterKey(ALICE, OWN.masterPublic), keys: { 'ed25519:x': OWN.masterPublic } },
      /the key is not the vault's/,
    ],
    ['an array', [masterKey(ALICE, OWN.masterPublic)], /not a JSON object/],
  ])('refuses %s', (_what, object, message) => {
    expect(() => {
      assertOurMasterKey(bytesOf(object), OWN);
    }).toThrow(message);
    expect(() => {
      assertOurMasterKey(bytesOf(object), OWN);
    }).toThrow(X509RefusedError);
  });

  it('refuses bytes that are not JSON, not canonical, or read differently by other parsers', () => {
    const canonical = Buffer.from(ourMasterKeyBytes(OWN)).toString();
    const refuse = (text: string, message: RegExp) => {
      expect(() => {
        assertOurMasterKey(new TextEncoder().encode(text), OWN);
      }).toThrow(message);
    };
    refuse('not json', /not JSON/);
    refuse(JSON.stringify(masterKey(ALICE, OWN.masterPublic), null, 1), /not canonical/);
    // Duplicate keys: JSON.parse keeps the last, another parser the first.
    refuse(canonical.replace('{', '{"user_id":"@mallory:example.org",'), /not canonical/);
    expect(() => {
      assertOurMasterKey(new Uint8Array([0xff, 0xfe]), OWN);
    }).toThrow(/not JSON/);
  });

  it('says nothing of the bytes or the keys in its error', () => {
    try {
      assertOurMasterKey(bytesOf(masterKey(ALICE, FOREIGN)), OWN);
      expect.unreachable();
    } catch (e) {
      expect(String(e)).not.toContain(FOREIGN);
      expect(String(e)).not.toContain(OWN.masterPublic);
    }
  });
});

function pss(key: ReturnType<typeof generateKeyPairSync>['privateKey'], data: Uint8Array) {
  return new Uint8Array(
    sign('sha512', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 }),
  );
}

/** A vault with an RSA x509-identity key, counting the signatures asked of it. */
function fakeVault() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
  const signed: Uint8Array[] = [];
  return {
    spki,
    signed,
    vault: {
      publicKey: () =>
        Promise.resolve({
          purpose: 'x509-identity' as const,
          algorithm: 'rsa-pss-sha512' as const,
          spki,
        }),
      sign: (purpose: string, message: Uint8Array) => {
        if (purpose !== 'x509-identity') throw new Error(`unexpected ${purpose}`);
        signed.push(message);
        return Promise.resolve(pss(privateKey, message));
      },
    },
  };
}

/** A homeserver serving `master` for us, recording signature uploads. */
function fakeApi(master: object | undefined, failures?: object) {
  const uploads: string[] = [];
  return {
    uploads,
    api: {
      keysQuery: () =>
        Promise.resolve(JSON.stringify(master ? { master_keys: { [ALICE]: master } } : {})),
      signaturesUpload: (body: string) => {
        uploads.push(body);
        return Promise.resolve(JSON.stringify(failures ? { failures } : { failures: {} }));
      },
    },
  };
}

describe('the vault X.509 signer and the refresh', { timeout: 60_000 }, () => {
  let vault: ReturnType<typeof fakeVault>;
  let signer: VaultX509Signer;
  let other: VaultX509Signer;
  beforeAll(async () => {
    const root = await createRootCa({ commonName: 'Root' });
    vault = fakeVault();
    const leaf = await issueLeaf(root, { userId: ALICE, publicKey: vault.spki, days: 30 });
    const renewed = await issueLeaf(root, { userId: ALICE, publicKey: vault.spki, days: 60 });
    signer = await vaultX509Signer(vault.vault, parseChain([leaf.certPem]), OWN);
    other = await vaultX509Signer(vault.vault, parseChain([renewed.certPem]), OWN);
  });

  it("the core's raw signer and cross-signing's hook refuse anything but our master key", async () => {
    vault.signed.length = 0;
    for (const bytes of [
      bytesOf(masterKey(ALICE, FOREIGN)),
      bytesOf(masterKey('@bob:example.org', OWN.masterPublic)),
      new Uint8Array([1, 2, 3]),
    ]) {
      await expect(signer.rawSigner(bytes)).rejects.toThrow(X509RefusedError);
      await expect(signer.extraMasterSignatures(bytes)).rejects.toThrow(X509RefusedError);
    }
    expect(vault.signed).toHaveLength(0);
    await signer.rawSigner(ourMasterKeyBytes(OWN));
    await signer.extraMasterSignatures(ourMasterKeyBytes(OWN));
    expect(vault.signed).toHaveLength(2);
  });

  it('never signs a foreign master key the homeserver serves for us', async () => {
    vault.signed.length = 0;
    const hs = fakeApi(masterKey(ALICE, FOREIGN));
    expect(await refreshMasterSignature(hs.api, signer)).toBe('foreign');
    expect(vault.signed).toHaveLength(0);
    expect(hs.uploads).toHaveLength(0);
    // Our key with something added: refused, nothing signed either.
    const odd = fakeApi(masterKey(ALICE, OWN.masterPublic, { extra: true }));
    await expect(refreshMasterSignature(odd.api, signer)).rejects.toThrow(X509RefusedError);
    // Two keys, one ours: not "our key".
    const two = fakeApi({
      ...masterKey(ALICE, OWN.masterPublic),
      keys: { [`ed25519:${OWN.masterPublic}`]: OWN.masterPublic, [`ed25519:${FOREIGN}`]: FOREIGN },
    });
    expect(await refreshMasterSignature(two.api, signer)).toBe('no-identity');
    expect(vault.signed).toHaveLength(0);
    expect([...odd.uploads, ...two.uploads]).toHaveLength(0);
  });

  it('signs our own master key, uploads what it built, and then leaves a current signature alone', async () => {
    vault.signed.length = 0;
    const hs = fakeApi(masterKey(ALICE, OWN.masterPublic, { unsigned: { x: 1 } }));
    expect(await refreshMasterSignature(hs.api, signer)).toBe('signed');
    expect(vault.signed).toEqual([ourMasterKeyBytes(OWN)]);
    const upload = JSON.parse(hs.uploads[0] ?? '{}') as Record<
      string,
      Record<string, { signatures: Record<string, Record<string, string>> }>
    >;
    const uploaded = upload[ALICE]?.[OWN.masterPublic];
    expect(uploaded && signingBytes({ ...uploaded })).toEqual(ourMasterKeyBytes(OWN));
    const cms = uploaded?.signatures[ALICE]?.[signer.chain.keyId] ?? '';
    expect(cms).toContain('BEGIN CMS');
    // Published with that signature: current, nothing signed.
    const published = masterKey(ALICE, OWN.masterPublic, {
      signatures: { [ALICE]: { [signer.chain.keyId]: cms } },
    });
    expect(await refreshMasterSignature(fakeApi(published).api, signer)).toBe('current');
    expect(vault.signed).toHaveLength(1);
    // A renewed chain: signed again.
    expect(await refreshMasterSignature(fakeApi(published).api, other)).toBe('signed');
    expect(vault.signed).toHaveLength(2);
  });

  it('re-signs when the published CMS has our chain but does not verify over our master key', async () => {
    const hs = fakeApi(masterKey(ALICE, OWN.masterPublic));
    await refreshMasterSignature(hs.api, signer);
    const upload = JSON.parse(hs.uploads[0] ?? '{}') as Record<
      string,
      Record<string, { signatures: Record<string, Record<string, string>> }>
    >;
    const cms = upload[ALICE]?.[OWN.masterPublic]?.signatures[ALICE]?.[signer.chain.keyId] ?? '';
    // Our chain and structure, but signature bytes that do not verify over our master key.
    const der = Buffer.from(cms.replace(/-----(BEGIN|END) CMS-----|\s+/g, ''), 'base64');
    der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0xff;
    const tampered = `-----BEGIN CMS-----\n${der.toString('base64')}\n-----END CMS-----\n`;
    vault.signed.length = 0;
    const published = masterKey(ALICE, OWN.masterPublic, {
      signatures: { [ALICE]: { [signer.chain.keyId]: tampered } },
    });
    expect(await refreshMasterSignature(fakeApi(published).api, signer)).toBe('signed');
    expect(vault.signed).toHaveLength(1);
  });

  it('at start, a refusal is one warning line and never an error', async () => {
    const warnings: string[] = [];
    const log = { warn: (m: string) => warnings.push(m), info: () => undefined };
    const refresh = (api: Parameters<typeof refreshMasterSignature>[0]) =>
      refreshMasterSignature(api, signer);
    // The homeserver refuses the upload.
    const refusing = fakeApi(masterKey(ALICE, OWN.masterPublic), {
      [ALICE]: { [OWN.masterPublic]: { errcode: 'M_INVALID_SIGNATURE', error: 'no\nway' } },
    });
    expect(await refreshAtStart(refresh, refusing.api, log)).toBe('failed');
    // It serves JSON that cannot be canonicalised.
    const control = fakeApi(masterKey(ALICE, OWN.masterPublic, { unsigned: 'x' }));
    control.api.keysQuery = () =>
      Promise.resolve(
        `{"master_keys":{"${ALICE}":{"user_id":"${ALICE}","usage":["master"],"keys":{"ed25519:${OWN.masterPublic}":"${OWN.masterPublic}"},"x":"\\u0001"}}}`,
      );
    expect(await refreshAtStart(refresh, control.api, log)).toBe('failed');
    expect(warnings[1]).toMatch(/JSON/);
    // It is down.
    const down = fakeApi(undefined);
    down.api.keysQuery = () => Promise.reject(new Error('connect ECONNREFUSED'));
    expect(await refreshAtStart(refresh, down.api, log)).toBe('failed');
    // It serves a foreign key.
    expect(await refreshAtStart(refresh, fakeApi(masterKey(ALICE, FOREIGN)).api, log)).toBe(
      'foreign',
    );
    expect(warnings).toHaveLength(4);
    for (const w of warnings) expect(w).not.toContain('\n');
    expect(warnings[0]).toContain('refused the X.509 signature');
    expect(warnings[3]).toContain("not the vault's");
  });
});
