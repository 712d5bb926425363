import { execFile } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type MadeCredential,
  checkAkCertificate,
  checkEkCertificate,
  checkProof,
  ekTemplateParameters,
  expectedProof,
  issueAkCertificate,
  makeCredential,
  newActivation,
} from '../../attestation/enrol/index.ts';
import { x509 } from '../../attestation/enrol/provider.ts';
import { TPM_RH, TpmClient, akTemplate } from '../../keyvault/tpm/index.ts';
import { makeTempDir, startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { openssl } from '../fixtures/x509.ts';

/**
 * The verifier's half of enrolment (attestation/enrol) against a real TPM: swtpm manufactured
 * with EK certificates by its local CA, and tpm2-tools as the attester, an implementation
 * independent of ours. The proof that makeCredential is right is that the TPM itself gives
 * our credential back from TPM2_ActivateCredential, and refuses it for any other AK.
 */
const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm({ ekCertificate: true }));

const RSA_EK = '0x81010001';
const ECC_EK = '0x81010016'; // swtpm's P-384 EK (SHA-384, AES-256)
const RSA_EK_CERT = '0x01c00002';
const ECC_EK_CERT = '0x01c00016';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir('enrol');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Result = { code: number; stdout: string; stderr: string };

/**
 * One tpm2-tools command. swtpm has no resource manager, so every tool leaves its transient
 * objects loaded; flush them after each command (saved contexts in files stay usable), or
 * the TPM runs out of object slots after three.
 */
async function tpm2(tool: string, args: string[]): Promise<Result> {
  const env = { ...process.env, TPM2TOOLS_TCTI: tpm().tcti };
  try {
    const { stdout, stderr } = await run(tool, args, { cwd: dir, env });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof err.code !== 'number') throw e;
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  } finally {
    await run('tpm2_flushcontext', ['-t'], { cwd: dir, env });
  }
}

async function ok(tool: string, args: string[]): Promise<string> {
  const r = await tpm2(tool, args);
  expect(r.code, `${tool} ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** tpm2-tools' credential file: 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
function toolsFile(made: MadeCredential): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(0xbadcc0de, 0);
  head.writeUInt32BE(1, 4);
  return Buffer.concat([head, made.credentialBlob, made.encryptedSecret]);
}

/** The layout of a credential file: the sizes of each TPM2B, not their (random) contents. */
function layout(file: Buffer) {
  const blob = file.readUInt16BE(8);
  const hmac = file.readUInt16BE(10);
  const secret = file.readUInt16BE(10 + blob);
  return {
    magic: file.readUInt32BE(0).toString(16),
    version: file.readUInt32BE(4),
    blob,
    hmac,
    encIdentity: blob - 2 - hmac,
    secret,
    total: file.length,
  };
}

/**
 * TPM2_ActivateCredential with tpm2-tools. The EK's USER role needs a policy session that ran
 * PolicySecret(TPM_RH_ENDORSEMENT) (its authPolicy; userWithAuth is clear) unless `password`;
 * the AK's ADMIN role is its (empty) authValue.
 */
async function activate(
  akContext: string,
  ek: string,
  file: Buffer,
  auth: { policy: 'sha256' | 'sha384' } | 'password',
): Promise<{ credential?: Buffer; error?: string }> {
  const name = `cred-${randomBytes(4).toString('hex')}`;
  await writeFile(join(dir, `${name}.in`), file);
  const args = ['-c', akContext, '-C', ek, '-i', `${name}.in`, '-o', `${name}.out`];
  if (auth !== 'password') {
    await ok('tpm2_startauthsession', ['--policy-session', '-g', auth.policy, '-S', 'session.ctx']);
    await ok('tpm2_policysecret', ['-S', 'session.ctx', '-c', 'e']);
    args.push('-P', 'session:session.ctx');
  }
  const r = await tpm2('tpm2_activatecredential', args);
  if (auth !== 'password') await tpm2('tpm2_flushcontext', ['session.ctx']);
  if (r.code !== 0) return { error: r.stderr };
  return { credential: await readFile(join(dir, `${name}.out`)) };
}

describe('AK enrolment against swtpm, with tpm2-tools as the attester', () => {
  let rsaCert: Buffer;
  let eccCert: Buffer;
  let rsaEk: ReturnType<typeof createPublicKey>;
  let eccEk: ReturnType<typeof createPublicKey>;
  let akName: Buffer;
  let akSpki: Buffer;

  beforeAll(async () => {
    await ok('tpm2_nvread', [RSA_EK_CERT, '-C', 'o', '-o', 'ek-rsa.der']);
    await ok('tpm2_nvread', [ECC_EK_CERT, '-C', 'o', '-o', 'ek-ecc.der']);
    rsaCert = await readFile(join(dir, 'ek-rsa.der'));
    eccCert = await readFile(join(dir, 'ek-ecc.der'));
    await ok('tpm2_readpublic', ['-c', RSA_EK, '-f', 'pem', '-o', 'ek-rsa.pem']);
    await ok('tpm2_readpublic', ['-c', ECC_EK, '-f', 'pem', '-o', 'ek-ecc.pem']);
    rsaEk = createPublicKey(await readFile(join(dir, 'ek-rsa.pem'), 'utf8'));
    eccEk = createPublicKey(await readFile(join(dir, 'ek-ecc.pem'), 'utf8'));
    // The AK as the vault makes it (keyvault/tpm/structures.ts akTemplate): a primary in the
    // endorsement hierarchy, ECC P-256, ECDSA-SHA256, restricted signing, userWithAuth, noDA.
    await ok('tpm2_createprimary', [
      '-C',
      'e',
      '-G',
      'ecc256:ecdsa-sha256:null',
      '-a',
      'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign',
      '-c',
      'ak.ctx',
    ]);
    await ok('tpm2_readpublic', ['-c', 'ak.ctx', '-n', 'ak.name', '-f', 'tpmt', '-o', 'ak.tpmt']);
    await ok('tpm2_readpublic', ['-c', 'ak.ctx', '-f', 'der', '-o', 'ak.der']);
    akName = await readFile(join(dir, 'ak.name'));
    akSpki = await readFile(join(dir, 'ak.der'));
  });

  it("tpm2-tools' AK is the vault's AK, and its Name is nameAlg || SHA-256(TPMT_PUBLIC)", async () => {
    const tpmt = await readFile(join(dir, 'ak.tpmt'));
    const digest = createHash('sha256').update(tpmt).digest();
    expect(akName).toEqual(Buffer.concat([Buffer.from([0x00, 0x0b]), digest]));
    // The vault's own client, with the vault's own template, on the same TPM: the same Name.
    const client = new TpmClient(await tpm().connect());
    try {
      const vaultName = await client.withPrimary(TPM_RH.ENDORSEMENT, akTemplate(), (ak) =>
        Promise.resolve(Buffer.from(ak.name)),
      );
      expect(vaultName).toEqual(akName);
    } finally {
      await client.close();
    }
  });

  it('reads both EK certificates from NV and chains them to swtpm’s local CA only', async () => {
    const roots = [tpm().ekIssuer ?? ''];
    const now = new Date();
    const rsa = await checkEkCertificate(rsaCert, { roots, now, ekPublic: rsaEk });
    expect(rsa.ok, JSON.stringify(rsa)).toBe(true);
    if (!rsa.ok) return;
    expect(rsa.tpm).toEqual({
      manufacturer: 'id:00001014',
      model: 'swtpm',
      version: 'id:20191023',
    });
    expect(rsa.ekPublic.asymmetricKeyDetails?.modulusLength).toBe(2048);
    const ecc = await checkEkCertificate(eccCert, { roots, now, ekPublic: eccEk });
    expect(ecc.ok, JSON.stringify(ecc)).toBe(true);
    if (ecc.ok) expect(ecc.ekPublic.asymmetricKeyDetails?.namedCurve).toBe('secp384r1');

    // Another CA (the same names even): untrusted.
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01',
      name: new x509.X509Certificate(roots[0] ?? '').subject,
      keys: {
        privateKey: privateKey.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']),
        publicKey: publicKey.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']),
      },
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
    });
    expect(
      await checkEkCertificate(rsaCert, { roots: [other.toString('pem')], now }),
    ).toMatchObject({ ok: false, code: 'EK_CERT_UNTRUSTED' });
    // The RSA certificate is not the P-384 EK's.
    expect(await checkEkCertificate(rsaCert, { roots, now, ekPublic: eccEk })).toMatchObject({
      ok: false,
      code: 'EK_CERT_KEY_MISMATCH',
    });
  });

  it('has the layout of tpm2_makecredential (RSA-2048 and P-256 EKs)', async () => {
    const credential = randomBytes(32);
    await writeFile(join(dir, 'secret.bin'), credential);
    const nameHex = akName.toString('hex');
    await ok('tpm2_makecredential', [
      ...['-T', 'none', '-G', 'rsa', '-u', 'ek-rsa.pem', '-s', 'secret.bin'],
      ...['-n', nameHex, '-o', 'theirs-rsa.out'],
    ]);
    const theirs = await readFile(join(dir, 'theirs-rsa.out'));
    const ours = toolsFile(
      makeCredential({ ekPublic: rsaEk, ekNameAlg: 'sha256', akName, credential }),
    );
    expect(layout(ours)).toEqual(layout(theirs));
    expect(layout(ours)).toEqual({
      magic: 'badcc0de',
      version: 1,
      blob: 68,
      hmac: 32,
      encIdentity: 34,
      secret: 256,
      total: 336,
    });
    // tpm2_createek's default ECC EK: P-256 (tpm2_makecredential -T none knows no P-384).
    await ok('tpm2_createek', ['-G', 'ecc', '-c', 'ek-p256.ctx', '-u', 'ek-p256.pem', '-f', 'pem']);
    await ok('tpm2_makecredential', [
      ...['-T', 'none', '-G', 'ecc', '-u', 'ek-p256.pem', '-s', 'secret.bin'],
      ...['-n', nameHex, '-o', 'theirs-p256.out'],
    ]);
    const p256 = createPublicKey(await readFile(join(dir, 'ek-p256.pem'), 'utf8'));
    const oursEcc = toolsFile(
      makeCredential({ ekPublic: p256, ekNameAlg: 'sha256', akName, credential }),
    );
    expect(layout(oursEcc)).toEqual(layout(await readFile(join(dir, 'theirs-p256.out'))));
    expect(layout(oursEcc).secret).toBe(2 + 32 + 2 + 32);
  });

  it('the TPM recovers our credential with its RSA EK, and the proof checks', async () => {
    const check = await checkEkCertificate(rsaCert, {
      roots: [tpm().ekIssuer ?? ''],
      now: new Date(),
    });
    if (!check.ok) throw new Error(check.message);
    const params = ekTemplateParameters(check.ekPublic);
    expect(params).toEqual({ ekNameAlg: 'sha256', ekSymmetricBits: 128 });
    const activation = newActivation({ ekPublic: check.ekPublic, ekNameAlg: 'sha256', akName });
    const got = await activate('ak.ctx', RSA_EK, toolsFile(activation), { policy: 'sha256' });
    expect(got.error).toBeUndefined();
    expect(got.credential).toEqual(activation.credential);
    // The attester's answer, and the verifier's check of it.
    const proof = expectedProof(got.credential ?? Buffer.alloc(0), akName, activation.challengeId);
    expect(
      checkProof({
        credential: activation.credential,
        akName,
        challengeId: activation.challengeId,
        proof,
      }),
    ).toBe(true);
    // Without the policy session the EK refuses to be used (userWithAuth is clear).
    const noPolicy = await activate('ak.ctx', RSA_EK, toolsFile(activation), 'password');
    // TPM_RC_AUTH_UNAVAILABLE.
    expect(noPolicy.error).toMatch(/0x12F|authValue or authPolicy is not available/);
  });

  it('refuses a credential made for another AK Name, or for another EK', async () => {
    const credential = randomBytes(32);
    const otherName = Buffer.from(akName);
    otherName[otherName.length - 1] = (otherName[otherName.length - 1] ?? 0) ^ 0xff;
    const forOther = makeCredential({
      ekPublic: rsaEk,
      ekNameAlg: 'sha256',
      akName: otherName,
      credential,
    });
    const r1 = await activate('ak.ctx', RSA_EK, toolsFile(forOther), { policy: 'sha256' });
    expect(r1.credential).toBeUndefined();
    // TPM_RC_INTEGRITY on parameter 1 (credentialBlob): 0x1DF.
    expect(r1.error).toMatch(/0x1DF|integrity check failed/);
    const forEcc = makeCredential({ ekPublic: eccEk, ekNameAlg: 'sha384', akName, credential });
    const r2 = await activate('ak.ctx', RSA_EK, toolsFile(forEcc), { policy: 'sha256' });
    expect(r2.credential).toBeUndefined();
    // TPM_RC_SIZE on parameter 2 (secret): a P-384 point is no RSA-2048 ciphertext.
    expect(r2.error).toMatch(/0x2D5|wrong size/);
    // Made for another RSA-2048 key: the TPM's OAEP decryption fails.
    const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
    const forStranger = makeCredential({
      ekPublic: stranger,
      ekNameAlg: 'sha256',
      akName,
      credential,
    });
    const r3 = await activate('ak.ctx', RSA_EK, toolsFile(forStranger), { policy: 'sha256' });
    expect(r3.credential).toBeUndefined();
    // swtpm (libtpms) answers TPM_RC_FAILURE here, but only for this command: it works on.
    expect(r3.error).toMatch(/Esys_ActivateCredential\(0x[0-9A-F]+\)/);
    const good = makeCredential({ ekPublic: rsaEk, ekNameAlg: 'sha256', akName, credential });
    const after = await activate('ak.ctx', RSA_EK, toolsFile(good), { policy: 'sha256' });
    expect(after.credential).toEqual(credential);
  });

  it('ECC EKs: swtpm’s P-384 EK (SHA-384, AES-256) and a P-256 EK recover our credential', async () => {
    const credential = randomBytes(32);
    const p384 = makeCredential({
      ekPublic: eccEk,
      ...(ekTemplateParameters(eccEk) ?? { ekNameAlg: 'sha256' }),
      akName,
      credential,
    });
    // swtpm's P-384 EK has userWithAuth set (and a PolicyOR authPolicy): its empty authValue works.
    const got = await activate('ak.ctx', ECC_EK, toolsFile(p384), 'password');
    expect(got.error).toBeUndefined();
    expect(got.credential).toEqual(credential);

    const p256Key = createPublicKey(await readFile(join(dir, 'ek-p256.pem'), 'utf8'));
    const p256 = makeCredential({ ekPublic: p256Key, ekNameAlg: 'sha256', akName, credential });
    const got256 = await activate('ak.ctx', 'ek-p256.ctx', toolsFile(p256), { policy: 'sha256' });
    expect(got256.error).toBeUndefined();
    expect(got256.credential).toEqual(credential);
  });

  it('then an attestation CA certifies the AK; openssl verifies the certificate', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const caKey = privateKey.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
    const caPublic = createPublicKey(privateKey).toCryptoKey(
      { name: 'ECDSA', namedCurve: 'P-256' },
      true,
      ['verify'],
    );
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01',
      name: 'CN=Example Health Attestation CA',
      keys: { privateKey: caKey, publicKey: caPublic },
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
        await x509.SubjectKeyIdentifierExtension.create(caPublic),
      ],
    });
    const caPem = ca.toString('pem');
    const issued = await issueAkCertificate({
      caKey: privateKey,
      caCert: caPem,
      akPublicKeyDer: akSpki,
      akName,
      subject: 'CN=swtpm AK, O=Example Health',
      validityDays: 30,
    });
    const now = new Date();
    expect(
      await checkAkCertificate(issued.der, { roots: [caPem], akPublicSpki: akSpki, akName, now }),
    ).toMatchObject({ ok: true });
    await writeFile(join(dir, 'ak-ca.pem'), caPem);
    await writeFile(join(dir, 'ak-cert.pem'), issued.pem);
    const verified = await openssl(['verify', '-CAfile', 'ak-ca.pem', 'ak-cert.pem'], { cwd: dir });
    expect(verified.stdout + verified.stderr).toContain('ak-cert.pem: OK');
    const text = await openssl(
      ['x509', '-in', 'ak-cert.pem', '-noout', '-subject', '-ext', 'extendedKeyUsage'],
      {
        cwd: dir,
      },
    );
    // openssl quotes the value (it has '+', '/' or '='): the bytes are the base64 of the Name.
    expect(text.stdout).toMatch(/serialNumber = "?tpm-name:/);
    expect(text.stdout).toContain(`tpm-name:${akName.toString('base64')}`);
    expect(text.stdout).toContain('2.23.133.8.3');
  });
});
