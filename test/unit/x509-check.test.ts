import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Issued,
  type SigningKey,
  checkChain,
  createIntermediateCa,
  createRootCa,
  derSetOrder,
  issueLeaf,
  parseMxid,
} from '../../deploy/x509/index.ts';
import { openssl } from '../fixtures/x509.ts';

const ALICE = '@alice:example.org';
const DAY = 86_400_000;

function codes(report: { problems: { code: string }[] }): string[] {
  return report.problems.map((p) => p.code);
}

describe('X.509 certificate tool: issuing and the acceptance check', { timeout: 60_000 }, () => {
  let dir: string;
  let root: Issued & { key: SigningKey };
  let ecRoot: Issued & { key: SigningKey };
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mte-x509-'));
    root = await createRootCa({ commonName: 'Test Root' });
    ecRoot = await createRootCa({ commonName: 'Test EC Root', keyType: 'ecdsa-p256' });
    await writeFile(join(dir, 'root.pem'), root.certPem);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('parses user ids and refuses what is not one', () => {
    expect(parseMxid('@alice:example.org:8448')).toEqual({
      userId: '@alice:example.org:8448',
      localpart: 'alice',
      server: 'example.org:8448',
    });
    for (const bad of ['alice:example.org', '@alice', '@:x', '@a b:x']) {
      expect(() => parseMxid(bad)).toThrow(/not a Matrix user id/);
    }
  });

  it('makes a root CA that openssl reads as a CA with SKI, RSA-3072 by default', async () => {
    const text = await openssl(['x509', '-in', join(dir, 'root.pem'), '-noout', '-text']);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('Public-Key: (3072 bit)');
    expect(text.stdout).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
    expect(text.stdout).toContain('Subject Key Identifier');
    const ec = new X509Certificate(ecRoot.certPem);
    expect(ec.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(ec.ca).toBe(true);
  });

  it('issues a leaf with the SAN URI, SKI, AKI and clientAuth, verified by openssl', async () => {
    const leaf = await issueLeaf(root, { userId: ALICE });
    await writeFile(join(dir, 'alice.pem'), leaf.certPem);
    const text = await openssl(['x509', '-in', join(dir, 'alice.pem'), '-noout', '-text']);
    expect(text.stdout).toContain('URI:matrix:u/alice:example.org');
    expect(text.stdout).toContain('TLS Web Client Authentication');
    expect(text.stdout).toContain('X509v3 Subject Key Identifier');
    expect(text.stdout).toContain('X509v3 Authority Key Identifier');
    expect(text.stdout).toContain('Public-Key: (2048 bit)');
    expect(text.stdout).toMatch(/CA:FALSE/);
    const verify = await openssl([
      'verify',
      '-CAfile',
      join(dir, 'root.pem'),
      '-purpose',
      'sslclient',
      join(dir, 'alice.pem'),
    ]);
    expect(verify.stdout.trim()).toBe(`${join(dir, 'alice.pem')}: OK`);
    const report = checkChain({ chainPem: leaf.certPem, userId: ALICE, rootsPem: [root.certPem] });
    expect(report.problems).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.trusted).toBe(true);
    // The key id peers see is the root's SKI (the last certificate's AKI).
    expect(report.signatureKeyId).toBe(`io.element.x509:${root.skiBase64}`);
    expect(report.notAfterMs).toBe(leaf.notAfter.getTime());
  });

  it('issues for a given public key (SPKI DER or PEM), as for the vault key', async () => {
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const der = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
    const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    for (const given of [der, pem]) {
      const leaf = await issueLeaf(ecRoot, { userId: ALICE, publicKey: given });
      expect(leaf.keyPem).toBeUndefined();
      const cert = new X509Certificate(leaf.certPem);
      expect(cert.publicKey.equals(publicKey)).toBe(true);
      expect(cert.verify(new X509Certificate(ecRoot.certPem).publicKey)).toBe(true);
    }
  });

  it('rejects a SAN for another user, and the tool refuses to issue one', async () => {
    const leaf = await issueLeaf(root, {
      userId: ALICE,
      sanUri: 'matrix:u/bob:example.org',
      allowRejected: true,
    });
    const report = checkChain({ chainPem: leaf.certPem, userId: ALICE, rootsPem: [root.certPem] });
    expect(codes(report)).toEqual(['SAN_MISMATCH']);
    expect(report.problems[0]?.message).toContain('found URI matrix:u/bob:example.org');
    // Checked against bob, alice's own leaf is the one that does not match.
    const own = await issueLeaf(root, { userId: ALICE });
    expect(codes(checkChain({ chainPem: own.certPem, userId: '@bob:example.org' }))).toEqual([
      'SAN_MISMATCH',
    ]);
    await expect(
      issueLeaf(root, { userId: ALICE, sanUri: 'matrix:u/bob:example.org' }),
    ).rejects.toThrow(/would be rejected: the leaf does not name @alice:example.org/);
  });

  it('rejects EKU without clientAuth, a missing SKI and a non-RSA leaf', async () => {
    const email = await issueLeaf(root, {
      userId: ALICE,
      extendedKeyUsages: ['1.3.6.1.5.5.7.3.4'],
      allowRejected: true,
    });
    expect(codes(checkChain({ chainPem: email.certPem, userId: ALICE }))).toEqual([
      'EKU_NO_CLIENT_AUTH',
    ]);
    // No EKU at all is fine.
    const noEku = await issueLeaf(root, { userId: ALICE, extendedKeyUsages: [] });
    expect(checkChain({ chainPem: noEku.certPem, userId: ALICE }).ok).toBe(true);
    const noSki = await issueLeaf(root, {
      userId: ALICE,
      omitSubjectKeyId: true,
      allowRejected: true,
    });
    expect(codes(checkChain({ chainPem: noSki.certPem, userId: ALICE }))).toEqual(['LEAF_NO_SKI']);
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const ec = await issueLeaf(root, {
      userId: ALICE,
      publicKey: new Uint8Array(publicKey.export({ type: 'spki', format: 'der' })),
      allowRejected: true,
    });
    const report = checkChain({ chainPem: ec.certPem, userId: ALICE });
    expect(codes(report)).toEqual(['LEAF_NOT_RSA']);
    expect(report.problems[0]?.message).toContain('must be RSA');
  });

  it('rejects expired and not yet valid certificates, and a chain to another CA', async () => {
    const expired = await issueLeaf(root, {
      userId: ALICE,
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
      allowRejected: true,
    });
    const report = checkChain({
      chainPem: expired.certPem,
      userId: ALICE,
      rootsPem: [root.certPem],
    });
    expect(codes(report)).toEqual(['EXPIRED']);
    const future = await issueLeaf(root, {
      userId: ALICE,
      notBefore: new Date(Date.now() + DAY),
      allowRejected: true,
    });
    expect(codes(checkChain({ chainPem: future.certPem, userId: ALICE }))).toEqual([
      'NOT_YET_VALID',
    ]);
    const leaf = await issueLeaf(root, { userId: ALICE });
    const wrong = checkChain({ chainPem: leaf.certPem, userId: ALICE, rootsPem: [ecRoot.certPem] });
    expect(codes(wrong)).toEqual(['UNTRUSTED']);
    expect(wrong.trusted).toBe(false);
    // openssl agrees on both.
    await writeFile(join(dir, 'expired.pem'), expired.certPem);
    await writeFile(join(dir, 'ecroot.pem'), ecRoot.certPem);
    await writeFile(join(dir, 'leaf.pem'), leaf.certPem);
    expect(
      (await openssl(['verify', '-CAfile', join(dir, 'root.pem'), join(dir, 'expired.pem')]))
        .stderr,
    ).toContain('certificate has expired');
    expect(
      (await openssl(['verify', '-CAfile', join(dir, 'ecroot.pem'), join(dir, 'leaf.pem')])).code,
    ).not.toBe(0);
  });

  it('checks chains with an intermediate, including the CMS ordering bug', async () => {
    // An RSA-4096 intermediate: its certificate is longer than the RSA-2048 leaf's, so the
    // leaf sorts first in the CMS certificate set.
    const big = await createIntermediateCa(root, {
      commonName: 'Big Intermediate',
      keyType: 'rsa-4096',
    });
    const good = await issueLeaf(big, {
      userId: ALICE,
      intermediatesPem: [big.certPem],
      rootsPem: [root.certPem],
    });
    const chain = good.certPem + big.certPem;
    const report = checkChain({ chainPem: chain, userId: ALICE, rootsPem: [root.certPem] });
    expect(report.problems).toEqual([]);
    expect(report.signatureKeyId).toBe(`io.element.x509:${root.skiBase64}`);
    await writeFile(join(dir, 'big.pem'), big.certPem);
    await writeFile(join(dir, 'good.pem'), good.certPem);
    const verified = await openssl([
      'verify',
      '-CAfile',
      join(dir, 'root.pem'),
      '-untrusted',
      join(dir, 'big.pem'),
      join(dir, 'good.pem'),
    ]);
    expect(verified.code).toBe(0);
    // An ECDSA intermediate under an ECDSA root is short: it sorts before the RSA leaf.
    const small = await createIntermediateCa(ecRoot, {
      commonName: 'Small',
      keyType: 'ecdsa-p256',
    });
    await expect(
      issueLeaf(small, {
        userId: ALICE,
        intermediatesPem: [small.certPem],
        rootsPem: [ecRoot.certPem],
      }),
    ).rejects.toThrow(/sorts before the leaf/);
    const bad = await issueLeaf(small, { userId: ALICE, allowRejected: true });
    const r = checkChain({
      chainPem: bad.certPem + small.certPem,
      userId: ALICE,
      rootsPem: [ecRoot.certPem],
    });
    expect(codes(r)).toEqual(['CMS_ORDER']);
    // Wrong order in the file: leaf must come first.
    const swapped = checkChain({ chainPem: big.certPem + good.certPem, userId: ALICE });
    expect(codes(swapped)).toContain('UNTRUSTED');
    expect(derSetOrder(new Uint8Array([1, 2]), new Uint8Array([1, 2, 0]))).toBe(0);
    expect(derSetOrder(new Uint8Array([1, 3]), new Uint8Array([1, 2, 9]))).toBeGreaterThan(0);
  });

  it('rejects a brainpool CA and a last certificate without an AKI (made with openssl)', async () => {
    const o = (args: string[]) => openssl(args, { cwd: dir });
    expect(
      (await o(['ecparam', '-name', 'brainpoolP256r1', '-genkey', '-noout', '-out', 'bp.key']))
        .code,
    ).toBe(0);
    expect(
      (
        await o([
          'req',
          '-x509',
          '-new',
          '-key',
          'bp.key',
          '-subj',
          '/CN=Brainpool Root',
          '-days',
          '30',
          '-addext',
          'basicConstraints=critical,CA:TRUE',
          '-addext',
          'keyUsage=critical,keyCertSign',
          '-addext',
          'subjectKeyIdentifier=hash',
          '-out',
          'bp.pem',
        ])
      ).code,
    ).toBe(0);
    const { loadSigningKey } = await import('../../deploy/x509/index.ts');
    await expect(loadSigningKey(await readFile(join(dir, 'bp.key'), 'utf8'))).rejects.toThrow(
      /RSA or ECDSA P-256.*brainpoolP256r1/,
    );
    // A leaf signed by the brainpool root, with openssl.
    expect((await o(['genrsa', '-out', 'l.key', '2048'])).code).toBe(0);
    await writeFile(
      join(dir, 'leaf.ext'),
      'subjectAltName=URI:matrix:u/alice:example.org\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nextendedKeyUsage=clientAuth\n',
    );
    await writeFile(
      join(dir, 'noaki.ext'),
      'subjectAltName=URI:matrix:u/alice:example.org\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=none\n',
    );
    expect(
      (await o(['req', '-new', '-key', 'l.key', '-subj', '/CN=alice', '-out', 'l.csr'])).code,
    ).toBe(0);
    expect(
      (
        await o([
          'x509',
          '-req',
          '-in',
          'l.csr',
          '-CA',
          'bp.pem',
          '-CAkey',
          'bp.key',
          '-days',
          '5',
          '-extfile',
          'leaf.ext',
          '-out',
          'bpleaf.pem',
        ])
      ).code,
    ).toBe(0);
    const bpRoot = await readFile(join(dir, 'bp.pem'), 'utf8');
    const report = checkChain({
      chainPem: await readFile(join(dir, 'bpleaf.pem'), 'utf8'),
      userId: ALICE,
      rootsPem: [bpRoot],
    });
    expect(codes(report)).toEqual(['CA_KEY_UNSUPPORTED']);
    expect(report.problems[0]?.message).toContain('brainpool curves are rejected');
    // No AKI on the last (here: only) certificate.
    await writeFile(join(dir, 'rsaroot.key'), root.keyPem ?? '');
    expect(
      (
        await o([
          'x509',
          '-req',
          '-in',
          'l.csr',
          '-CA',
          'root.pem',
          '-CAkey',
          'rsaroot.key',
          '-days',
          '5',
          '-extfile',
          'noaki.ext',
          '-out',
          'noaki.pem',
        ])
      ).code,
    ).toBe(0);
    const noAki = checkChain({
      chainPem: await readFile(join(dir, 'noaki.pem'), 'utf8'),
      userId: ALICE,
      rootsPem: [root.certPem],
    });
    expect(codes(noAki)).toEqual(['LAST_NO_AKI']);
  });
});
