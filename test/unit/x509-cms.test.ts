import { constants, generateKeyPairSync, sign } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createIntermediateCa, createRootCa, issueLeaf } from '../../deploy/x509/index.ts';
import {
  X509ConfigError,
  cmsSignature,
  loadX509Material,
  ourMasterKeyBytes,
  parseChain,
  vaultX509Signer,
} from '../../endpoint/crypto/x509.ts';
import { openssl } from '../fixtures/x509.ts';

const ALICE = '@alice:example.org';
const OWN = { userId: ALICE, masterPublic: 'A'.repeat(43) };

function pssSign(key: ReturnType<typeof generateKeyPairSync>['privateKey'], data: Uint8Array) {
  return new Uint8Array(
    sign('sha512', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 }),
  );
}

describe('the CMS X.509 signature and the vault-backed signer', { timeout: 60_000 }, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mte-x509-cms-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('builds a detached SignedData that openssl verifies against the root', async () => {
    const root = await createRootCa({ commonName: 'Root' });
    const inter = await createIntermediateCa(root, { commonName: 'Inter', keyType: 'rsa-4096' });
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const leaf = await issueLeaf(inter, {
      userId: ALICE,
      publicKey: new Uint8Array(publicKey.export({ type: 'spki', format: 'der' })),
      intermediatesPem: [inter.certPem],
      rootsPem: [root.certPem],
    });
    const chain = parseChain([leaf.certPem, inter.certPem]);
    expect(chain.keyId).toBe(`io.element.x509:${root.skiBase64}`);
    expect(chain.notAfterMs).toBe(leaf.notAfter.getTime());
    const content = new TextEncoder().encode(
      '{"keys":{"ed25519:abc":"abc"},"usage":["master"],"user_id":"@alice:example.org"}',
    );
    const pem = cmsSignature(chain, pssSign(privateKey, content));
    expect(pem).toMatch(/^-----BEGIN CMS-----\n[\s\S]+\n-----END CMS-----\n$/);
    await writeFile(join(dir, 'sig.pem'), pem);
    await writeFile(join(dir, 'content'), content);
    await writeFile(join(dir, 'root.pem'), root.certPem);
    const verify = (file: string) =>
      openssl(
        [
          'cms',
          '-verify',
          '-binary',
          '-inform',
          'PEM',
          '-in',
          'sig.pem',
          '-content',
          file,
          '-CAfile',
          'root.pem',
          '-purpose',
          'any',
          '-out',
          '/dev/null',
        ],
        { cwd: dir },
      );
    const ok = await verify('content');
    expect(ok.stderr).toContain('Verification successful');
    await writeFile(
      join(dir, 'other'),
      content.map((b, i) => (i === 10 ? b ^ 1 : b)),
    );
    expect((await verify('other')).code).not.toBe(0);
    // The structure the crypto core expects: v3, detached, no signed attributes, SKI signer.
    const printed = (
      await openssl(['cms', '-cmsout', '-print', '-inform', 'PEM', '-in', 'sig.pem'], { cwd: dir })
    ).stdout;
    expect(printed).toContain('contentType: pkcs7-signedData (1.2.840.113549.1.7.2)');
    expect(printed).toMatch(/eContentType: pkcs7-data[\s\S]*eContent: <ABSENT>/);
    expect(printed).toMatch(/signedAttrs:\s+<ABSENT>|signedAttrs:\s+<EMPTY>/);
    expect(printed).toContain('subjectKeyIdentifier:');
    expect(printed).toContain('rsassaPss');
    expect(printed).toMatch(/mgf1[\s\S]*sha512[\s\S]*INTEGER\s+:40/);
    expect(printed.match(/cert_info:/g)).toHaveLength(2);
  });

  it('loads the config files and refuses a chain the signature cannot use', async () => {
    const root = await createRootCa({ commonName: 'Root', keyType: 'ecdsa-p256' });
    const leaf = await issueLeaf(root, { userId: ALICE });
    await writeFile(join(dir, 'ca.pem'), root.certPem);
    await writeFile(join(dir, 'chain.pem'), leaf.certPem);
    const m = await loadX509Material({
      caCerts: [join(dir, 'ca.pem')],
      chain: join(dir, 'chain.pem'),
    });
    expect(m.caCertsPem).toContain('BEGIN CERTIFICATE');
    expect(m.chain?.keyId).toBe(`io.element.x509:${root.skiBase64}`);
    await expect(loadX509Material({ caCerts: [join(dir, 'nope.pem')] })).rejects.toThrow(
      /cannot read the CA certificate file .*nope\.pem \(ENOENT\)/,
    );
    const noSki = await issueLeaf(root, {
      userId: ALICE,
      omitSubjectKeyId: true,
      allowRejected: true,
    });
    expect(() => parseChain([noSki.certPem])).toThrow(X509ConfigError);
    expect(() => parseChain([noSki.certPem])).toThrow(/no Subject Key Identifier/);
    expect(() => parseChain([root.certPem])).toThrow(/must have an RSA key/);
  });

  it('signs through the vault and refuses a leaf that is not the vault key', async () => {
    const root = await createRootCa({ commonName: 'Root' });
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
    const vault = {
      publicKey: () =>
        Promise.resolve({
          purpose: 'x509-identity' as const,
          algorithm: 'rsa-pss-sha512' as const,
          spki,
        }),
      sign: (_purpose: string, message: Uint8Array) =>
        Promise.resolve(pssSign(privateKey, message)),
    };
    const leaf = await issueLeaf(root, { userId: ALICE, publicKey: spki });
    const signer = await vaultX509Signer(vault, parseChain([leaf.certPem]), OWN);
    expect(signer.rawValidity()).toBe(leaf.notAfter.getTime());
    const raw = await signer.rawSigner(ourMasterKeyBytes(OWN));
    expect(raw.signature_scheme).toBe('RsaPssSha512');
    expect(raw.signature_bytes).toHaveLength(256);
    expect(raw.certificate_chain).toBe(leaf.certPem.trim() + '\n');
    const sigs = await signer.extraMasterSignatures(ourMasterKeyBytes(OWN));
    expect(Object.keys(sigs)).toEqual([`io.element.x509:${root.skiBase64}`]);
    const other = await issueLeaf(root, { userId: ALICE });
    await expect(vaultX509Signer(vault, parseChain([other.certPem]), OWN)).rejects.toThrow(
      /not for the vault's x509-identity key/,
    );
  });
});
