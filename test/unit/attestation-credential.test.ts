import {
  type KeyObject,
  constants,
  createDecipheriv,
  createHash,
  createHmac,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  privateDecrypt,
  timingSafeEqual,
} from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  AK_NAME_PREFIX,
  EnrolCode,
  type MadeCredential,
  PROOF_LABEL,
  TCG_OID,
  checkAkCertificate,
  checkEkCertificate,
  checkProof,
  ekTemplateParameters,
  expectedProof,
  isEnrolError,
  issueAkCertificate,
  kdfa,
  kdfe,
  makeCredential,
  newActivation,
} from '../../attestation/enrol/index.ts';
import { x509 } from '../../attestation/enrol/provider.ts';
import * as vaultKdf from '../../keyvault/tpm/kdf.ts';

const hex = (s: string) => Buffer.from(s, 'hex');
const DAY = 86_400_000;
const NOW = new Date();
const AK_NAME = hex(`000b${'11'.repeat(32)}`);
const OTHER_NAME = hex(`000b${'12'.repeat(32)}`);
const CHALLENGE = 'AbCdEfGhIjKlMnOpQrStUvWx';

function throwsCode(fn: () => unknown, code: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(isEnrolError(caught), String(caught)).toBe(true);
  expect((caught as { code: string }).code).toBe(code);
}

describe('KDFa and KDFe', () => {
  // The TPM reference implementation's KDFa self-test (KdfTestData.h in the TCG reference code
  // and libtpms): 20-byte key, label "KDFSELFTESTLABEL", two 8-byte contexts, 160 bits.
  const key = hex('271FA08BBDC5060EC3DFA928FF9B73123A12DA0C');
  const u = hex('CE244F395DCA7391');
  const v = hex('DA504031DDF12E83');

  it('matches the TPM reference implementation self-test vectors (SHA-256, SHA-384)', () => {
    expect(kdfa('sha256', key, 'KDFSELFTESTLABEL', u, v, 160).toString('hex')).toBe(
      'bb0259e1c8ba607e6a2cd704b69a902e9ade84c4',
    );
    expect(kdfa('sha384', key, 'KDFSELFTESTLABEL', u, v, 160).toString('hex')).toBe(
      '1dce70c9113eb2dba47bd9cfc72bf46f45b09312',
    );
  });

  // Derived with OpenSSL 3's KBKDF (counter mode, HMAC; its separator byte and [L]32 are the
  // TPM's 0 and bits) and SSKDF (SP 800-56C hash, the TPM's KDFe), e.g.
  //   openssl kdf -keylen 16 -kdfopt mac:HMAC -kdfopt digest:SHA256 -kdfopt hexkey:<seed>
  //     -kdfopt salt:STORAGE -kdfopt hexinfo:<akName> KBKDF
  const seed = hex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
  const none = new Uint8Array();

  it('derives the credential keys as OpenSSL KBKDF does, one block and several', () => {
    expect(kdfa('sha256', seed, 'STORAGE', AK_NAME, none, 128).toString('hex')).toBe(
      '4b6977df7782a6d0312cc5f537456667',
    );
    expect(kdfa('sha256', seed, 'INTEGRITY', none, none, 256).toString('hex')).toBe(
      'bacf689f634ece301e1f1b15b072d9c87db6a69585db42b1a0cb8f73ebe2692e',
    );
    expect(kdfa('sha256', seed, 'STORAGE', AK_NAME, none, 512).toString('hex')).toBe(
      'b96d7b1967706608a5835982784f68eae4e65b56ac08a37ecbd9cfb9b36a99b3' +
        '9b7e863e3acf3b184ff2f8f59f7e103ebf0567391f9a63c898b209672098a788',
    );
    expect(kdfa('sha384', seed, 'INTEGRITY', none, none, 384).toString('hex')).toBe(
      'ce5c1941c2411f7c12d0ad0dea97f8d18968b11c9fa9b006da60acc8fa7015ccffedc78fb26af4019b59583ab55d4698',
    );
    expect(kdfa('sha384', seed, 'STORAGE', AK_NAME, none, 256).toString('hex')).toBe(
      '516c5d259ce5c0ea6da7508ea6a4ac0f8e620d03d73608f68d6d02ff28c81a4a',
    );
  });

  it('derives the ECC seed as OpenSSL SSKDF does', () => {
    const z = Buffer.alloc(32, 0xa5);
    const partyU = Buffer.alloc(32, 0x01);
    const partyV = Buffer.alloc(32, 0x02);
    expect(kdfe('sha256', z, 'IDENTITY', partyU, partyV, 256).toString('hex')).toBe(
      'fd6849fe4ab8ab6b79e01564bff4f895deb5317b9983b07c8c6374fdd7afb6a2',
    );
    expect(kdfe('sha256', z, 'IDENTITY', partyU, partyV, 512).toString('hex')).toBe(
      'fd6849fe4ab8ab6b79e01564bff4f895deb5317b9983b07c8c6374fdd7afb6a2' +
        'b8f799edf230a6615647242f28d5d1893dfb03010c02c628b47720fde09341f6',
    );
    expect(kdfe('sha384', z, 'IDENTITY', partyU, partyV, 384).toString('hex')).toBe(
      '2c55df10c8280e8731b53b5cc18c2626b7431d36883120ca6552e72e1cb504b749e046eaa6ea67531d690b256719b81e',
    );
  });

  it("agrees with the vault's separately written KDFs (SHA-256)", () => {
    expect(kdfa('sha256', seed, 'STORAGE', AK_NAME, none, 128)).toEqual(
      vaultKdf.kdfa(seed, 'STORAGE', AK_NAME, none, 128),
    );
    const z = Buffer.alloc(32, 7);
    expect(kdfe('sha256', z, 'IDENTITY', AK_NAME, seed, 256)).toEqual(
      vaultKdf.kdfe(z, 'IDENTITY', AK_NAME, seed, 256),
    );
  });

  it('refuses partial bytes, zero and huge outputs, and labels with NUL', () => {
    throwsCode(() => kdfa('sha256', seed, 'STORAGE', none, none, 12), EnrolCode.BadInput);
    throwsCode(() => kdfa('sha256', seed, 'STORAGE', none, none, 0), EnrolCode.BadInput);
    throwsCode(() => kdfe('sha256', seed, 'X', none, none, 1 << 20), EnrolCode.BadInput);
    throwsCode(() => kdfa('sha256', seed, 'A\0B', none, none, 128), EnrolCode.BadInput);
  });
});

/**
 * TPM2_ActivateCredential in software, with the vault's KDFs (SHA-256 only), to test the
 * layout here; the real TPM does it in test/integration/attestation-credential.test.ts.
 */
function softwareActivate(ek: KeyObject, akName: Uint8Array, made: MadeCredential): Buffer {
  const secret = made.encryptedSecret.subarray(2);
  expect(made.encryptedSecret.readUInt16BE(0)).toBe(secret.length);
  let seed: Buffer;
  if (ek.asymmetricKeyType === 'rsa') {
    seed = privateDecrypt(
      {
        key: ek,
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: 'sha256',
        oaepLabel: Buffer.from('IDENTITY\0'),
      },
      secret,
    );
  } else {
    const xLen = secret.readUInt16BE(0);
    const x = secret.subarray(2, 2 + xLen);
    const y = secret.subarray(4 + xLen, 4 + 2 * xLen);
    expect(secret.readUInt16BE(2 + xLen)).toBe(xLen);
    const ephemeral = createPublicKey({
      key: { kty: 'EC', crv: 'P-256', x: x.toString('base64url'), y: y.toString('base64url') },
      format: 'jwk',
    });
    const z = diffieHellman({ privateKey: ek, publicKey: ephemeral });
    const ekX = Buffer.from(createPublicKey(ek).export({ format: 'jwk' }).x ?? '', 'base64url');
    seed = vaultKdf.kdfe(z, 'IDENTITY', x, ekX, 256);
  }
  const blob = made.credentialBlob;
  expect(blob.readUInt16BE(0)).toBe(blob.length - 2);
  const hmacSize = blob.readUInt16BE(2);
  const integrity = blob.subarray(4, 4 + hmacSize);
  const encIdentity = blob.subarray(4 + hmacSize);
  const hmacKey = vaultKdf.kdfa(seed, 'INTEGRITY', new Uint8Array(), new Uint8Array(), 256);
  const mac = createHmac('sha256', hmacKey).update(encIdentity).update(akName).digest();
  if (mac.length !== integrity.length || !timingSafeEqual(mac, integrity)) {
    throw new Error('TPM_RC_INTEGRITY');
  }
  const symKey = vaultKdf.kdfa(seed, 'STORAGE', akName, new Uint8Array(), 128);
  const d = createDecipheriv('aes-128-cfb', symKey, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  return plain.subarray(2, 2 + plain.readUInt16BE(0));
}

describe('makeCredential', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const credential = Buffer.alloc(32, 0x5c);

  it('lays out TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET as TPM 2.0 Part 1 §24 says (RSA)', () => {
    const made = makeCredential({
      ekPublic: rsa.publicKey,
      ekNameAlg: 'sha256',
      akName: AK_NAME,
      credential,
    });
    // u16 size || (u16 32 || HMAC-SHA256) || AES-CFB(u16 32 || credential)
    expect(made.credentialBlob.length).toBe(2 + 2 + 32 + 2 + 32);
    expect(made.credentialBlob.subarray(0, 4).toString('hex')).toBe('00440020');
    expect(made.encryptedSecret.length).toBe(2 + 256);
    expect(made.encryptedSecret.readUInt16BE(0)).toBe(256);
    expect(softwareActivate(rsa.privateKey, AK_NAME, made)).toEqual(credential);
    // A fresh seed every time: nothing repeats between two blobs for the same inputs.
    const again = makeCredential({
      ekPublic: rsa.publicKey,
      ekNameAlg: 'sha256',
      akName: AK_NAME,
      credential,
    });
    expect(again.credentialBlob.equals(made.credentialBlob)).toBe(false);
  });

  it('uses ECDH and KDFe for an ECC EK (ephemeral TPMS_ECC_POINT as the secret)', () => {
    const made = makeCredential({
      ekPublic: p256.publicKey,
      ekNameAlg: 'sha256',
      akName: AK_NAME,
      credential: credential.subarray(0, 20),
    });
    expect(made.encryptedSecret.toString('hex').slice(0, 8)).toBe('00440020');
    expect(made.encryptedSecret.length).toBe(2 + 2 + 32 + 2 + 32);
    expect(softwareActivate(p256.privateKey, AK_NAME, made)).toEqual(credential.subarray(0, 20));
    const big = makeCredential({
      ekPublic: p384.publicKey,
      ...(ekTemplateParameters(p384.publicKey) ?? { ekNameAlg: 'sha256' }),
      akName: AK_NAME,
      credential,
    });
    // SHA-384 nameAlg: a 48-byte HMAC; P-384: 48-byte coordinates.
    expect(big.credentialBlob.length).toBe(2 + 2 + 48 + 2 + 32);
    expect(big.encryptedSecret.length).toBe(2 + 2 + 48 + 2 + 48);
  });

  it('binds the AK Name: the blob fails the integrity check for any other Name', () => {
    const made = makeCredential({
      ekPublic: rsa.publicKey,
      ekNameAlg: 'sha256',
      akName: AK_NAME,
      credential,
    });
    expect(() => softwareActivate(rsa.privateKey, OTHER_NAME, made)).toThrow('TPM_RC_INTEGRITY');
  });

  it('knows the TCG templates of the EKs it can default for', () => {
    expect(ekTemplateParameters(rsa.publicKey)).toEqual({
      ekNameAlg: 'sha256',
      ekSymmetricBits: 128,
    });
    expect(ekTemplateParameters(p256.publicKey)?.ekNameAlg).toBe('sha256');
    expect(ekTemplateParameters(p384.publicKey)).toEqual({
      ekNameAlg: 'sha384',
      ekSymmetricBits: 256,
    });
    const ed = generateKeyPairSync('ed25519');
    expect(ekTemplateParameters(ed.publicKey)).toBeUndefined();
  });

  it('refuses what it cannot protect properly', () => {
    const base = { ekPublic: rsa.publicKey, ekNameAlg: 'sha256' as const, akName: AK_NAME };
    throwsCode(() => makeCredential({ ...base, credential: Buffer.alloc(15) }), EnrolCode.BadInput);
    throwsCode(() => makeCredential({ ...base, credential: Buffer.alloc(33) }), EnrolCode.BadInput);
    for (const akName of [Buffer.alloc(0), hex('000b1234'), hex(`0004${'00'.repeat(20)}`)]) {
      throwsCode(() => makeCredential({ ...base, akName, credential }), EnrolCode.BadInput);
    }
    throwsCode(
      () => makeCredential({ ...base, ekPublic: rsa.privateKey, credential }),
      EnrolCode.BadInput,
    );
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 });
    throwsCode(
      () => makeCredential({ ...base, ekPublic: small.publicKey, credential }),
      EnrolCode.UnsupportedKey,
    );
    const k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
    throwsCode(
      () => makeCredential({ ...base, ekPublic: k1.publicKey, credential }),
      EnrolCode.UnsupportedKey,
    );
    throwsCode(
      () =>
        makeCredential({ ...base, ekPublic: generateKeyPairSync('ed25519').publicKey, credential }),
      EnrolCode.UnsupportedKey,
    );
  });
});

describe('the activation proof', () => {
  const credential = Buffer.alloc(32, 0x42);

  it('is HMAC-SHA256(credential, label || akName || challengeId)', () => {
    const manual = createHmac('sha256', credential)
      .update(Buffer.concat([Buffer.from('mte-activation-proof v1\0'), AK_NAME]))
      .update(CHALLENGE)
      .digest();
    expect(PROOF_LABEL).toBe('mte-activation-proof v1\0');
    expect(expectedProof(credential, AK_NAME, CHALLENGE)).toEqual(manual);
    expect(checkProof({ credential, akName: AK_NAME, challengeId: CHALLENGE, proof: manual })).toBe(
      true,
    );
  });

  it('fails for a wrong credential, AK Name or challenge id, and for any other length', () => {
    const proof = expectedProof(credential, AK_NAME, CHALLENGE);
    const check = (over: Partial<Parameters<typeof checkProof>[0]>) =>
      checkProof({ credential, akName: AK_NAME, challengeId: CHALLENGE, proof, ...over });
    expect(check({})).toBe(true);
    expect(check({ credential: Buffer.alloc(32, 0x43) })).toBe(false);
    expect(check({ akName: OTHER_NAME })).toBe(false);
    expect(check({ challengeId: `${CHALLENGE.slice(0, -1)}y` })).toBe(false);
    expect(check({ proof: proof.subarray(0, 31) })).toBe(false);
    expect(check({ proof: proof.subarray(0, 16) })).toBe(false);
    expect(check({ proof: Buffer.concat([proof, Buffer.alloc(1)]) })).toBe(false);
    expect(check({ proof: new Uint8Array() })).toBe(false);
    const flipped = Buffer.from(proof);
    flipped[31] = (flipped[31] ?? 0) ^ 1;
    expect(check({ proof: flipped })).toBe(false);
  });

  it('refuses inputs that are not the protocol’s', () => {
    throwsCode(() => expectedProof(credential, AK_NAME, 'short'), EnrolCode.BadInput);
    throwsCode(() => expectedProof(credential, AK_NAME, 'x'.repeat(65)), EnrolCode.BadInput);
    throwsCode(() => expectedProof(credential, AK_NAME, `${CHALLENGE}+`), EnrolCode.BadInput);
    throwsCode(() => expectedProof(Buffer.alloc(8), AK_NAME, CHALLENGE), EnrolCode.BadInput);
    throwsCode(() => expectedProof(credential, hex('000b00'), CHALLENGE), EnrolCode.BadInput);
  });

  it('newActivation: a fresh 32-byte credential and challenge id, recoverable by the EK', () => {
    const ek = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const a = newActivation({ ekPublic: ek.publicKey, ekNameAlg: 'sha256', akName: AK_NAME });
    expect(a.credential.length).toBe(32);
    expect(a.challengeId).toMatch(/^[A-Za-z0-9_-]{24}$/);
    const recovered = softwareActivate(ek.privateKey, AK_NAME, a);
    const proof = expectedProof(recovered, AK_NAME, a.challengeId);
    expect(
      checkProof({ credential: a.credential, akName: AK_NAME, challengeId: a.challengeId, proof }),
    ).toBe(true);
    const b = newActivation({ ekPublic: ek.publicKey, ekNameAlg: 'sha256', akName: AK_NAME });
    expect(b.credential.equals(a.credential)).toBe(false);
    expect(b.challengeId).not.toBe(a.challengeId);
  });
});

// ---- certificates made for the tests ---------------------------------------------------

interface TestCa {
  cert: x509.X509Certificate;
  pem: string;
  der: Buffer;
  key: KeyObject;
}

interface CertOptions {
  notBefore?: Date;
  notAfter?: Date;
  /** basicConstraints: a CA (default for CAs), an end entity, or no extension at all. */
  ca?: boolean | 'omit';
  pathLength?: number;
  keyUsage?: x509.KeyUsageFlags;
  extensions?: x509.Extension[];
  /** Sign with this key instead of the issuer's (a forged certificate). */
  signWith?: KeyObject;
  /** An RSA-2048 key instead of ECDSA P-256. */
  rsa?: boolean;
}

const ECDSA = { name: 'ECDSA', hash: 'SHA-256' };
const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };

function signingKey(key: KeyObject) {
  return key.asymmetricKeyType === 'rsa'
    ? key.toCryptoKey(RSA, false, ['sign'])
    : key.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
}

function signingAlgorithm(key: KeyObject) {
  return key.asymmetricKeyType === 'rsa' ? RSA : ECDSA;
}

function spki(key: KeyObject): Buffer {
  const pub = key.type === 'public' ? key : createPublicKey(key);
  return pub.export({ format: 'der', type: 'spki' });
}

async function makeCa(name: string, issuer?: TestCa, o: CertOptions = {}): Promise<TestCa> {
  const { privateKey } = o.rsa
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const signer = o.signWith ?? issuer?.key ?? privateKey;
  const extensions: x509.Extension[] = [
    new x509.KeyUsagesExtension(o.keyUsage ?? x509.KeyUsageFlags.keyCertSign, true),
    await x509.SubjectKeyIdentifierExtension.create(spki(privateKey)),
    ...(o.extensions ?? []),
  ];
  if (o.ca !== 'omit') {
    extensions.push(new x509.BasicConstraintsExtension(o.ca ?? true, o.pathLength, true));
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: `CN=${name}`,
    issuer: issuer ? issuer.cert.subject : `CN=${name}`,
    notBefore: o.notBefore ?? new Date(NOW.getTime() - DAY),
    notAfter: o.notAfter ?? new Date(NOW.getTime() + 365 * DAY),
    publicKey: spki(privateKey),
    signingKey: signingKey(signer),
    signingAlgorithm: signingAlgorithm(signer),
    extensions,
  });
  return { cert, pem: cert.toString('pem'), der: Buffer.from(cert.rawData), key: privateKey };
}

const TPM_SAN = '2.23.133.2.1=id:00001014, 2.23.133.2.2=swtpm, 2.23.133.2.3=id:20191023';

/** An EK certificate the way swtpm writes one: subject "unknown", critical SAN, EKU 2.23.133.8.1. */
async function makeEkCert(
  issuer: TestCa,
  ekPublic: KeyObject,
  o: CertOptions & { eku?: string[] | null; subject?: string; san?: boolean } = {},
): Promise<Buffer> {
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(o.ca === true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true),
    ...(o.extensions ?? []),
  ];
  if (o.eku !== null) {
    extensions.push(new x509.ExtendedKeyUsageExtension(o.eku ?? [TCG_OID.ekCertificate]));
  }
  if (o.san !== false) {
    extensions.push(
      new x509.SubjectAlternativeNameExtension([{ type: 'dn', value: TPM_SAN }], true),
    );
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: o.subject ?? 'CN=unknown',
    issuer: issuer.cert.subject,
    notBefore: o.notBefore ?? new Date(NOW.getTime() - DAY),
    notAfter: o.notAfter ?? new Date('9999-12-31T23:59:59Z'),
    publicKey: spki(ekPublic),
    signingKey: signingKey(o.signWith ?? issuer.key),
    signingAlgorithm: ECDSA,
    extensions,
  });
  return Buffer.from(cert.rawData);
}

describe('EK certificates', { timeout: 30_000 }, () => {
  const ek = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const otherEk = generateKeyPairSync('ec', { namedCurve: 'P-384' });
  let root: TestCa;
  let intermediate: TestCa;
  let stranger: TestCa;
  let good: Buffer;
  beforeAll(async () => {
    root = await makeCa('TPM Vendor Root');
    intermediate = await makeCa('TPM Vendor EK CA', root, { pathLength: 0 });
    stranger = await makeCa('Someone Else Root');
    good = await makeEkCert(intermediate, ek.publicKey);
  });
  const opts = () => ({ roots: [root.pem], intermediates: [intermediate.der], now: NOW });

  it('accepts an EK certificate that chains to a configured root, and reads the TPM', async () => {
    const r = await checkEkCertificate(good, { ...opts(), ekPublic: ek.publicKey });
    expect(r.ok, JSON.stringify(r)).toBe(true);
    if (!r.ok) return;
    expect(r.ekPublic.equals(ek.publicKey)).toBe(true);
    expect(r.tpm).toEqual({ manufacturer: 'id:00001014', model: 'swtpm', version: 'id:20191023' });
    expect(r.sha256).toBe(createHash('sha256').update(good).digest('hex'));
    expect(r.notAfter.getTime()).toBe(root.cert.notAfter.getTime());
  });

  it('takes a configured intermediate as an anchor (swtpm’s local CA is one)', async () => {
    const r = await checkEkCertificate(good, { roots: [intermediate.pem], now: NOW });
    expect(r.ok).toBe(true);
  });

  it('refuses a certificate from an untrusted root, or with its intermediate missing', async () => {
    const untrusted = await checkEkCertificate(good, {
      roots: [stranger.pem],
      intermediates: [intermediate.der],
      now: NOW,
    });
    expect(untrusted).toMatchObject({ ok: false, code: 'EK_CERT_UNTRUSTED' });
    const noPath = await checkEkCertificate(good, { roots: [root.pem], now: NOW });
    expect(noPath).toMatchObject({ ok: false, code: 'EK_CERT_UNTRUSTED' });
    // A certificate with the right issuer name but signed by another key is not a link.
    const forged = await makeEkCert(intermediate, ek.publicKey, { signWith: stranger.key });
    expect(await checkEkCertificate(forged, opts())).toMatchObject({
      code: 'EK_CERT_UNTRUSTED',
    });
  });

  it('refuses a path through an issuer that is not a CA, or beyond its path length', async () => {
    const notCa = await makeCa('Not a CA', root, { ca: false });
    const viaNotCa = await makeEkCert(notCa, ek.publicKey);
    const r1 = await checkEkCertificate(viaNotCa, {
      roots: [root.pem],
      intermediates: [notCa.der],
      now: NOW,
    });
    expect(r1).toMatchObject({ ok: false, code: 'EK_CERT_UNTRUSTED' });
    expect(r1.ok ? '' : r1.message).toMatch(/is not a CA/);
    const noBc = await makeCa('No constraints', root, { ca: 'omit' });
    const viaNoBc = await makeEkCert(noBc, ek.publicKey);
    expect(
      await checkEkCertificate(viaNoBc, { roots: [root.pem], intermediates: [noBc.der], now: NOW }),
    ).toMatchObject({ code: 'EK_CERT_UNTRUSTED' });
    const noSign = await makeCa('No certSign', root, {
      keyUsage: x509.KeyUsageFlags.digitalSignature,
    });
    const viaNoSign = await makeEkCert(noSign, ek.publicKey);
    expect(
      await checkEkCertificate(viaNoSign, {
        roots: [root.pem],
        intermediates: [noSign.der],
        now: NOW,
      }),
    ).toMatchObject({ code: 'EK_CERT_UNTRUSTED' });
    // The vendor CA allows no CA below it; one more level breaks the constraint.
    const deeper = await makeCa('Sub CA', intermediate);
    const viaDeeper = await makeEkCert(deeper, ek.publicKey);
    const r2 = await checkEkCertificate(viaDeeper, {
      roots: [root.pem],
      intermediates: [intermediate.der, deeper.der],
      now: NOW,
    });
    expect(r2).toMatchObject({ code: 'EK_CERT_UNTRUSTED' });
    expect(r2.ok ? '' : r2.message).toMatch(/allows 0 CA certificates/);
  });

  it('refuses expired and not-yet-valid certificates on the path', async () => {
    const expired = await makeEkCert(intermediate, ek.publicKey, {
      notBefore: new Date(NOW.getTime() - 10 * DAY),
      notAfter: new Date(NOW.getTime() - DAY),
    });
    expect(await checkEkCertificate(expired, opts())).toMatchObject({
      ok: false,
      code: 'EK_CERT_EXPIRED',
    });
    const future = await makeEkCert(intermediate, ek.publicKey, {
      notBefore: new Date(NOW.getTime() + DAY),
    });
    expect(await checkEkCertificate(future, opts())).toMatchObject({ code: 'EK_CERT_EXPIRED' });
    const oldCa = await makeCa('Old EK CA', root, {
      notBefore: new Date(NOW.getTime() - 10 * DAY),
      notAfter: new Date(NOW.getTime() - DAY),
    });
    const viaOld = await makeEkCert(oldCa, ek.publicKey);
    expect(
      await checkEkCertificate(viaOld, { roots: [root.pem], intermediates: [oldCa.der], now: NOW }),
    ).toMatchObject({ code: 'EK_CERT_EXPIRED' });
    // Untrusted wins over expired: an expired stranger is not "only expired".
    expect(await checkEkCertificate(expired, { roots: [stranger.pem], now: NOW })).toMatchObject({
      code: 'EK_CERT_UNTRUSTED',
    });
  });

  it('refuses a certificate for another key than the EK presented', async () => {
    const r = await checkEkCertificate(good, { ...opts(), ekPublic: otherEk.publicKey });
    expect(r).toMatchObject({ ok: false, code: 'EK_CERT_KEY_MISMATCH' });
  });

  it('refuses what is not an EK certificate', async () => {
    const garbage = await checkEkCertificate(Buffer.from('not a certificate'), opts());
    expect(garbage).toMatchObject({ ok: false, code: 'EK_CERT_MALFORMED' });
    const padded = await checkEkCertificate(Buffer.concat([good, Buffer.alloc(4)]), opts());
    expect(padded).toMatchObject({ code: 'EK_CERT_MALFORMED' });
    expect(await checkEkCertificate(intermediate.der, opts())).toMatchObject({
      code: 'EK_CERT_MALFORMED',
    });
    const p521 = generateKeyPairSync('ec', { namedCurve: 'P-521' });
    const odd = await makeEkCert(intermediate, p521.publicKey);
    expect(await checkEkCertificate(odd, opts())).toMatchObject({ code: 'EK_CERT_MALFORMED' });
    const serverAuth = await makeEkCert(intermediate, ek.publicKey, {
      eku: ['1.3.6.1.5.5.7.3.1'],
    });
    expect(await checkEkCertificate(serverAuth, opts())).toMatchObject({
      code: 'EK_CERT_UNTRUSTED',
    });
    const critical = await makeEkCert(intermediate, ek.publicKey, {
      extensions: [new x509.Extension('1.2.3.4.5', true, new Uint8Array([5, 0]))],
    });
    expect(await checkEkCertificate(critical, opts())).toMatchObject({
      code: 'EK_CERT_UNTRUSTED',
    });
    const badIntermediate = await checkEkCertificate(good, {
      ...opts(),
      intermediates: [Buffer.from([0x30, 0x00])],
    });
    expect(badIntermediate).toMatchObject({ code: 'EK_CERT_MALFORMED' });
  });

  it('needs neither an EKU nor a SAN, and reads TPM attributes from the subject too', async () => {
    const plain = await makeEkCert(intermediate, ek.publicKey, {
      eku: null,
      san: false,
      subject: TPM_SAN,
    });
    const r = await checkEkCertificate(plain, opts());
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.tpm.manufacturer).toBe('id:00001014');
    const bare = await makeEkCert(intermediate, ek.publicKey, { eku: null, san: false });
    const r2 = await checkEkCertificate(bare, opts());
    expect(r2.ok && r2.tpm).toEqual({});
  });

  it('throws on a configuration error rather than trusting fewer roots', async () => {
    await expect(checkEkCertificate(good, { roots: ['not pem'], now: NOW })).rejects.toMatchObject({
      code: EnrolCode.BadInput,
    });
  });
});

describe('AK certificates', { timeout: 30_000 }, () => {
  const ak = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const otherAk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const akSpki = spki(ak.publicKey);
  let ca: TestCa;
  let stranger: TestCa;
  let issued: Buffer;
  beforeAll(async () => {
    ca = await makeCa('Example Health Attestation CA');
    stranger = await makeCa('Other Attestation CA');
    issued = (
      await issueAkCertificate({
        caKey: ca.key,
        caCert: ca.pem,
        akPublicKeyDer: akSpki,
        akName: AK_NAME,
        subject: 'CN=vault of @alice:example.org, O=Example Health',
        validityDays: 30,
      })
    ).der;
  });
  const opts = () => ({ roots: [ca.pem], akPublicSpki: akSpki, akName: AK_NAME, now: NOW });

  it('issues a certificate that carries the AK Name and the AIK purpose, and accepts it', async () => {
    const cert = new x509.X509Certificate(issued);
    const serial = `${AK_NAME_PREFIX}${AK_NAME.toString('base64')}`;
    expect(serial.length).toBeLessThanOrEqual(64);
    expect(cert.subject).toBe(
      `CN=vault of @alice:example.org, O=Example Health, 2.5.4.5=${serial}`,
    );
    // PrintableString (0x13), as X.520 wants serialNumber.
    const der = Buffer.from(cert.subjectName.toArrayBuffer());
    expect(
      der.includes(Buffer.concat([Buffer.from([0x13, serial.length]), Buffer.from(serial)])),
    ).toBe(true);
    expect(cert.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([
      TCG_OID.akCertificate,
    ]);
    expect(cert.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
    const r = await checkAkCertificate(issued, opts());
    expect(r, JSON.stringify(r)).toMatchObject({ ok: true });
  });

  it('refuses an untrusted CA, an expired certificate, another key, another Name', async () => {
    expect(await checkAkCertificate(issued, { ...opts(), roots: [stranger.pem] })).toMatchObject({
      ok: false,
      code: 'AK_CERT_UNTRUSTED',
    });
    expect(
      await checkAkCertificate(issued, { ...opts(), now: new Date(NOW.getTime() + 31 * DAY) }),
    ).toMatchObject({ ok: false, code: 'AK_CERT_EXPIRED' });
    expect(
      await checkAkCertificate(issued, { ...opts(), akPublicSpki: spki(otherAk.publicKey) }),
    ).toMatchObject({ ok: false, code: 'AK_CERT_KEY_MISMATCH' });
    expect(await checkAkCertificate(issued, { ...opts(), akName: OTHER_NAME })).toMatchObject({
      ok: false,
      code: 'AK_CERT_NAME_MISMATCH',
    });
  });

  it('refuses a certificate of the same CA that is not an AK certificate, or names no AK', async () => {
    const make = async (extensions: x509.Extension[]) =>
      Buffer.from(
        (
          await x509.X509CertificateGenerator.create({
            serialNumber: '03',
            subject: 'CN=not an AK',
            issuer: ca.cert.subject,
            notBefore: new Date(NOW.getTime() - DAY),
            notAfter: new Date(NOW.getTime() + DAY),
            publicKey: akSpki,
            signingKey: signingKey(ca.key),
            signingAlgorithm: ECDSA,
            extensions,
          })
        ).rawData,
      );
    const tls = await make([new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.1'])]);
    expect(await checkAkCertificate(tls, opts())).toMatchObject({ code: 'AK_CERT_UNTRUSTED' });
    const noEku = await make([]);
    expect(await checkAkCertificate(noEku, opts())).toMatchObject({ code: 'AK_CERT_UNTRUSTED' });
    const unnamed = await make([new x509.ExtendedKeyUsageExtension([TCG_OID.akCertificate])]);
    const r = await checkAkCertificate(unnamed, opts());
    expect(r).toMatchObject({ code: 'AK_CERT_NAME_MISMATCH' });
    expect(r.ok ? '' : r.message).toMatch(/carries no AK Name/);
    expect(await checkAkCertificate(Buffer.alloc(10), opts())).toMatchObject({
      code: 'AK_CERT_MALFORMED',
    });
  });

  it('issues under an intermediate, checked through it', async () => {
    const sub = await makeCa('Attestation Issuing CA', ca);
    const der = (
      await issueAkCertificate({
        caKey: sub.key,
        caCert: sub.pem,
        akPublicKeyDer: akSpki,
        akName: AK_NAME,
        subject: 'CN=ak',
        validityDays: 1,
      })
    ).der;
    expect(await checkAkCertificate(der, { ...opts(), intermediates: [sub.der] })).toMatchObject({
      ok: true,
    });
    expect(await checkAkCertificate(der, opts())).toMatchObject({ code: 'AK_CERT_UNTRUSTED' });
  });

  it('refuses to issue for a wrong CA key, a non-CA, an RSA AK, a bad Name or validity', async () => {
    const base = {
      caKey: ca.key,
      caCert: ca.pem,
      akPublicKeyDer: akSpki,
      akName: AK_NAME,
      subject: 'CN=ak',
      validityDays: 30,
    };
    const rejects = (over: object, code: string) =>
      expect(issueAkCertificate({ ...base, ...over })).rejects.toMatchObject({ code });
    await rejects({ caKey: stranger.key }, EnrolCode.BadInput);
    const leafLike = await makeCa('leaf', ca, { ca: false });
    await rejects({ caCert: leafLike.pem, caKey: leafLike.key }, EnrolCode.BadInput);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    await rejects({ akPublicKeyDer: spki(rsa.publicKey) }, EnrolCode.UnsupportedKey);
    await rejects({ akPublicKeyDer: Buffer.from('junk') }, EnrolCode.BadInput);
    await rejects({ akName: hex('000b00') }, EnrolCode.BadInput);
    await rejects({ validityDays: 0 }, EnrolCode.BadInput);
    await rejects({ validityDays: 1.5 }, EnrolCode.BadInput);
    await rejects({ caKey: createPublicKey(ca.key) }, EnrolCode.BadInput);
    await rejects({ subject: 'CN=ak, serialNumber=1234' }, EnrolCode.BadInput);
    await rejects({ akName: hex(`000c${'11'.repeat(48)}`) }, EnrolCode.BadInput);
  });

  it('issues with an RSA attestation CA too', async () => {
    const rsaCa = await makeCa('RSA Attestation CA', undefined, { rsa: true });
    const der = (
      await issueAkCertificate({
        caKey: rsaCa.key,
        caCert: rsaCa.pem,
        akPublicKeyDer: akSpki,
        akName: AK_NAME,
        subject: 'CN=ak',
        validityDays: 7,
      })
    ).der;
    expect(new x509.X509Certificate(der).signatureAlgorithm).toMatchObject({
      name: 'RSASSA-PKCS1-v1_5',
    });
    expect(await checkAkCertificate(der, { ...opts(), roots: [rsaCa.pem] })).toMatchObject({
      ok: true,
    });
  });
});
