import { execFile } from 'node:child_process';
import { X509Certificate, createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ACTIVATION_PROOF_LABEL, type VaultBackend } from '../../keyvault/vault.ts';
import { openVault } from '../../keyvault/open.ts';
import type { TpmConfig } from '../../keyvault/config.ts';
import { TpmClient } from '../../keyvault/tpm/index.ts';
import {
  AttestationCode,
  ChallengeBook,
  type Evidence,
  type EvidenceJson,
  PROOF_LABEL,
  type VerifierPolicy,
  type VerifyContext,
  checkProof,
  createEvidence,
  enrolmentFor,
  evidenceToJson,
  verifierPolicySchema,
  verifyEvidence,
} from '../../attestation/index.ts';
import { issueAkCertificate } from '../../attestation/enrol/index.ts';
import { EventType, buildEventLog } from '../../attestation/eventlog/index.ts';
import { makeTempDir, startSwtpm } from '../fixtures/index.ts';
import { useFixture } from '../fixtures/lifecycle.ts';
import { selfSignedCa } from '../fixtures/x509.ts';

/**
 * The verifier against real evidence: swtpm manufactured with an EK certificate by its local
 * CA, our TPM vault quoting and activating credentials, and the pure verifier judging. First
 * the whole path passes (credential activation, then a quote that verifies); then each attack
 * on the threat list is shown to fail with its own code. tpm2_checkquote, an independent
 * implementation, verifies our quotes too.
 */
const run = promisify(execFile);
const tpm = useFixture(() => startSwtpm({ ekCertificate: true }));
/** Resettable, unused by firmware: the test's measured "boot" goes here. */
const LOG_PCR = 23;
const PCRS = [0, 7, LOG_PCR];

let dir: string;
let vault: VaultBackend;
const verifier = { userId: '@alice:example.org', deviceId: 'ALICEDEV' };
const b64key = () => randomBytes(32).toString('base64').replace(/=+$/, '');
const self = {
  userId: '@bob:example.org',
  deviceId: 'BOBDEV',
  ed25519: b64key(),
  curve25519: b64key(),
  masterKey: b64key(),
};
let policy: VerifierPolicy;
/** AK Name (hex) → EK certificate SHA-256, after a credential activation. */
const enrolled = new Map<string, string>();

function vaultConfig(): TpmConfig & { owner: { userId: string } } {
  const t = tpm();
  return {
    backend: 'tpm',
    stateDir: join(dir, 'vault'),
    transport: { swtpm: { host: t.host, port: t.port, ctrlPort: t.ctrlPort } },
    pcrs: [16],
    owner: { userId: self.userId },
  };
}

async function provision(): Promise<void> {
  await run(process.execPath, [
    join(import.meta.dirname, '../../keyvault/main.ts'),
    'init',
    '--config',
    join(dir, 'vault.json'),
  ]);
}

/** swtpm serves one connection: the vault closes while the test extends a PCR. */
async function extend(pcr: number, digest: Buffer): Promise<void> {
  await vault.close();
  const c = new TpmClient(await tpm().connect());
  try {
    await c.pcrExtend(pcr, digest);
  } finally {
    await c.close();
  }
  vault = await openVault(vaultConfig());
}

async function fresh(options: { eventLog?: Uint8Array; akCertificate?: Uint8Array } = {}) {
  const nonce = randomBytes(32);
  const evidence = await createEvidence(vault, {
    nonce,
    verifier,
    self,
    pcrs: PCRS,
    ...options,
  });
  const now = Date.now();
  const ctx: VerifyContext = {
    nonce,
    issuedAt: now,
    now,
    verifier,
    expected: self,
    policy,
    enrolled,
  };
  return { evidence, json: evidenceToJson(evidence), ctx };
}

const text = (json: EvidenceJson) => JSON.stringify(json);
const codes = (r: { failures: { code: string }[] }) => r.failures.map((f) => f.code);

let log: ReturnType<typeof buildEventLog<'sha256'>>;

beforeAll(async () => {
  dir = await makeTempDir('attest');
  await writeFile(join(dir, 'vault.json'), JSON.stringify(vaultConfig()));
  await provision();
  const ekRoot = tpm().ekIssuer;
  if (!ekRoot) throw new Error('swtpm was not manufactured with an EK certificate');
  // The "measured boot": a synthetic TCG log whose events are extended into PCR 23.
  log = buildEventLog({
    algorithms: ['sha256'],
    events: [
      { pcr: LOG_PCR, type: EventType.EV_POST_CODE, data: Buffer.from('mte launcher v1') },
      { pcr: LOG_PCR, type: EventType.EV_IPL, data: Buffer.from('endpoint code sha256:abc') },
    ],
  });
  vault = await openVault(vaultConfig());
  for (const event of log.events) await extend(event.pcr, event.digests.sha256);
  policy = verifierPolicySchema.parse({
    version: 1,
    ekRoots: [ekRoot],
    pcrs: { required: [0, 7] },
  });
}, 120_000);

afterAll(async () => {
  await vault.close();
  await rm(dir, { recursive: true, force: true });
});

describe('attestation against a real TPM (swtpm with an EK certificate)', () => {
  it('a first contact needs credential activation; after it the same AK passes', async () => {
    const first = await fresh();
    const before = await verifyEvidence(text(first.json), first.ctx);
    expect(codes(before)).toEqual([AttestationCode.AkNotEnrolled]);
    expect(before.facts?.enrolment).toBe('none');

    // The verifier makes a credential for the EK in the certificate and the AK's Name; only
    // the TPM with both loaded recovers it. The vault answers with a proof, not the credential.
    const enrolment = await enrolmentFor(
      first.evidence,
      before.facts?.akName ?? '',
      policy,
      Date.now(),
    );
    if (!enrolment.ok) throw new Error(JSON.stringify(enrolment.failures));
    const a = enrolment.activation;
    const proof = await vault.activateCredential({
      credentialBlob: a.credentialBlob,
      encryptedSecret: a.encryptedSecret,
      challengeId: a.challengeId,
    });
    expect(
      checkProof({
        credential: a.credential,
        akName: Buffer.from(a.akName, 'hex'),
        challengeId: a.challengeId,
        proof,
      }),
    ).toBe(true);
    expect(ACTIVATION_PROOF_LABEL).toBe(PROOF_LABEL); // the vault and the verifier agree
    enrolled.set(a.akName, a.ekSha256);

    const second = await fresh();
    const after = await verifyEvidence(text(second.json), second.ctx);
    expect(after.failures).toEqual([]);
    expect(after.ok).toBe(true);
    expect(after.facts?.enrolment).toBe('credential-activation');
    expect(after.facts?.pcrs.map((p) => p.pcr)).toEqual(PCRS);
  });

  it('credential activation fails for a credential made for another AK (AK not on the EK\u2019s TPM)', async () => {
    const { evidence } = await fresh();
    const otherAk = Buffer.concat([Buffer.from([0, 0x0b]), randomBytes(32)]).toString('hex');
    const enrolment = await enrolmentFor(evidence, otherAk, policy, Date.now());
    if (!enrolment.ok) throw new Error('enrolment refused');
    const a = enrolment.activation;
    await expect(
      vault.activateCredential({
        credentialBlob: a.credentialBlob,
        encryptedSecret: a.encryptedSecret,
        challengeId: a.challengeId,
      }),
    ).rejects.toMatchObject({ code: 'VAULT_FOREIGN_OR_TAMPERED' });
  });

  it('a credential made by tpm2_makecredential (tpm2-tools, -T none) is activated by our vault', async () => {
    const { evidence } = await fresh();
    const ekCert = evidence.ek.certificate;
    if (!ekCert) throw new Error('no EK certificate');
    const ekPem = new X509Certificate(ekCert).publicKey.export({ type: 'spki', format: 'pem' });
    await writeFile(join(dir, 'ek.pem'), ekPem);
    const secret = randomBytes(32);
    await writeFile(join(dir, 'secret.bin'), secret);
    const akName = akNameOf(evidence).toString('hex');
    await run('tpm2_makecredential', [
      '-T',
      'none',
      '-G',
      'rsa',
      '-u',
      join(dir, 'ek.pem'),
      '-s',
      join(dir, 'secret.bin'),
      '-n',
      akName,
      '-o',
      join(dir, 'cred.out'),
    ]);
    // cred.out: 0xBADCC0DE, u32 version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    const out = await readFile(join(dir, 'cred.out'));
    expect(out.readUInt32BE(0)).toBe(0xbadcc0de);
    const blobEnd = 8 + 2 + out.readUInt16BE(8);
    const credentialBlob = out.subarray(8, blobEnd);
    const encryptedSecret = out.subarray(blobEnd, blobEnd + 2 + out.readUInt16BE(blobEnd));
    const challengeId = randomBytes(18).toString('base64url');
    const proof = await vault.activateCredential({ credentialBlob, encryptedSecret, challengeId });
    expect(
      checkProof({ credential: secret, akName: Buffer.from(akName, 'hex'), challengeId, proof }),
    ).toBe(true);
  });

  it('tpm2_checkquote (tpm2-tools) verifies our quote and its qualifying data', async () => {
    const { evidence } = await fresh();
    const ak = createPublicKeyPem(evidence);
    await writeFile(join(dir, 'ak.pem'), ak);
    await writeFile(join(dir, 'attest.bin'), evidence.quote.attest);
    await writeFile(join(dir, 'sig.bin'), evidence.quote.signature);
    const extraData = extraDataHex(evidence.quote.attest);
    const good = await run('tpm2_checkquote', [
      '-u',
      join(dir, 'ak.pem'),
      '-m',
      join(dir, 'attest.bin'),
      '-s',
      join(dir, 'sig.bin'),
      '-g',
      'sha256',
      '-q',
      extraData,
    ]).then(
      () => 0,
      (e: unknown) => (e as { code?: number }).code ?? 1,
    );
    expect(good).toBe(0);
    const bad = await run('tpm2_checkquote', [
      '-u',
      join(dir, 'ak.pem'),
      '-m',
      join(dir, 'attest.bin'),
      '-s',
      join(dir, 'sig.bin'),
      '-g',
      'sha256',
      '-q',
      randomBytes(32).toString('hex'),
    ]).then(
      () => 0,
      (e: unknown) => (e as { code?: number }).code ?? 1,
    );
    expect(bad).not.toBe(0);
  });

  it('the offline CLI (attestation/main.ts verify) gives the same verdict, with exit codes', async () => {
    const { json, ctx } = await fresh();
    const evidenceFile = join(dir, 'evidence.json');
    const policyFile = join(dir, 'verifier.json');
    const subjectFile = join(dir, 'subject.json');
    const enrolledFile = join(dir, 'enrolled.json');
    await writeFile(evidenceFile, text(json));
    await writeFile(policyFile, JSON.stringify({ version: 1, ekRoots: policy.ekRoots }));
    await writeFile(subjectFile, JSON.stringify(self));
    await writeFile(enrolledFile, JSON.stringify(Object.fromEntries(enrolled)));
    const cli = (...args: string[]) =>
      run(process.execPath, [join(import.meta.dirname, '../../attestation/main.ts'), ...args]).then(
        (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
        (e: unknown) => {
          const err = e as { code?: number; stdout?: string; stderr?: string };
          return { code: err.code ?? -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
        },
      );
    const nonce = Buffer.from(ctx.nonce).toString('base64');
    const common = ['--policy', policyFile, '--subject', subjectFile, '--enrolled', enrolledFile];
    const good = await cli(
      'verify',
      evidenceFile,
      '--nonce',
      nonce,
      '--verifier',
      `${verifier.userId}:${verifier.deviceId}`,
      ...common,
      '--json',
    );
    expect(good.code).toBe(0);
    expect(JSON.parse(good.stdout)).toMatchObject({
      ok: true,
      failures: [],
      notCheckedIndependently: [],
    });
    const wrong = await cli(
      'verify',
      evidenceFile,
      '--nonce',
      randomBytes(32).toString('base64'),
      ...common,
    );
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).toMatch(/^FAILED\n/);
    expect(wrong.stdout).toMatch(/NONCE_MISMATCH/);
    expect(wrong.stdout).toMatch(/not checked independently: who it was made for/);
    const usage = await cli('verify', evidenceFile, '--nonce', 'short', '--policy', policyFile);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toBe('attestation: --nonce: expected 32 bytes in base64\n');
    const help = await cli('verify', '--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: node attestation\/main\.ts verify/);
  });

  describe('each attack fails with its own reason', () => {
    it('wrong nonce', async () => {
      const { json, ctx } = await fresh();
      const r = await verifyEvidence(text(json), { ...ctx, nonce: randomBytes(32) });
      expect(codes(r)).toContain(AttestationCode.NonceMismatch);
      expect(codes(r)).toContain(AttestationCode.BindingMismatch);
      expect(r.ok).toBe(false);
    });

    it('expired nonce', async () => {
      const { json, ctx } = await fresh();
      const r = await verifyEvidence(text(json), { ...ctx, now: ctx.issuedAt + 301_000 });
      expect(codes(r)).toEqual([AttestationCode.NonceExpired]);
    });

    it('replayed evidence: a challenge is answered once', () => {
      const book = new ChallengeBook(300_000);
      const c = book.issue('@bob:example.org', 'BOBDEV', PCRS, 1000);
      const sender = { userId: '@bob:example.org', deviceId: 'BOBDEV' };
      expect(book.take(c.requestId, sender, 1001).ok).toBe(true);
      expect(book.take(c.requestId, sender, 1002)).toMatchObject({
        ok: false,
        code: 'NONCE_UNKNOWN',
      });
    });

    it('an answer from a device other than the one asked', () => {
      const book = new ChallengeBook(300_000);
      const c = book.issue('@bob:example.org', 'BOBDEV', PCRS, 1000);
      expect(
        book.take(c.requestId, { userId: '@bob:example.org', deviceId: 'EVILDEV' }, 1001),
      ).toMatchObject({ ok: false, code: 'WRONG_SUBJECT' });
    });

    it('evidence about another device, or made for another verifier', async () => {
      const { json, ctx } = await fresh();
      const r = await verifyEvidence(text(json), {
        ...ctx,
        expected: { ...self, deviceId: 'OTHERDEV' },
      });
      expect(codes(r)).toContain(AttestationCode.WrongSubject);
      expect(codes(r)).toContain(AttestationCode.BindingMismatch);
      const r2 = await verifyEvidence(text(json), {
        ...ctx,
        verifier: { userId: '@mallory:example.org', deviceId: 'M' },
      });
      expect(codes(r2)).toContain(AttestationCode.WrongSubject);
      expect(codes(r2)).toContain(AttestationCode.BindingMismatch);
    });

    it('device keys in the quote that are not the Matrix device\u2019s (a forged device list)', async () => {
      const { json, ctx } = await fresh();
      const r = await verifyEvidence(text(json), {
        ...ctx,
        expected: { ...self, curve25519: b64key() },
      });
      expect(codes(r)).toContain(AttestationCode.DeviceKeysMismatch);
      expect(codes(r)).toContain(AttestationCode.BindingMismatch);
      // Editing the claimed keys to match does not help: the quote binds the real ones.
      const forged = { ...json, subject: { ...json.subject, curve25519: ctx.expected.curve25519 } };
      const r2 = await verifyEvidence(text(forged), {
        ...ctx,
        expected: { ...self, curve25519: b64key() },
      });
      expect(codes(r2)).toContain(AttestationCode.BindingMismatch);
    });

    it('a PCR value the policy does not accept (PCR changed: extended on the TPM)', async () => {
      const before = await fresh();
      const pcr7 =
        before.evidence.pcrs.values.find((v) => v.pcr === 7)?.digest.toString('hex') ?? '';
      const golden = verifierPolicySchema.parse({
        ...policy,
        pcrs: { required: [0, 7], golden: { 7: [pcr7] } },
      });
      expect((await verifyEvidence(text(before.json), { ...before.ctx, policy: golden })).ok).toBe(
        true,
      );
      await extend(7, createHash('sha256').update('a changed boot').digest());
      const after = await fresh();
      const r = await verifyEvidence(text(after.json), { ...after.ctx, policy: golden });
      expect(codes(r)).toEqual([AttestationCode.PcrValueRejected]);
    });

    it('listed PCR values that do not match the quote\u2019s digest', async () => {
      const { json, ctx } = await fresh();
      const values = json.pcrs.values.map((v) =>
        v.pcr === 0 ? { ...v, digest: randomBytes(32).toString('base64') } : v,
      );
      const r = await verifyEvidence(text({ ...json, pcrs: { ...json.pcrs, values } }), ctx);
      expect(codes(r)).toEqual([AttestationCode.PcrDigestMismatch]);
      const dropped = { ...json, pcrs: { ...json.pcrs, values: json.pcrs.values.slice(1) } };
      expect(codes(await verifyEvidence(text(dropped), ctx))).toContain(
        AttestationCode.PcrSelectionMismatch,
      );
    });

    it('an AK that is not restricted', async () => {
      const { json, ctx } = await fresh();
      const ak = Buffer.from(json.ak.public, 'base64');
      const attributes = ak.readUInt32BE(4) & ~(1 << 16); // clear `restricted`
      ak.writeUInt32BE(attributes >>> 0, 4);
      const r = await verifyEvidence(text({ ...json, ak: { public: ak.toString('base64') } }), ctx);
      // Same key, so the signature still verifies; the attributes and the Name do not.
      expect(codes(r)).toContain(AttestationCode.AkNotRestricted);
      expect(codes(r)).toContain(AttestationCode.BindingMismatch);
      expect(codes(r)).not.toContain(AttestationCode.SignatureInvalid);
    });

    it('an EK certificate from a CA the policy does not trust', async () => {
      const { json, ctx } = await fresh();
      const otherRoot = await selfSignedCa(join(dir, 'other-EK-CA'), 'other EK CA');
      const untrusting = verifierPolicySchema.parse({ ...policy, ekRoots: [otherRoot.pem] });
      const r = await verifyEvidence(text(json), { ...ctx, policy: untrusting });
      expect(codes(r)).toContain(AttestationCode.EkCertUntrusted);
      expect(r.ok).toBe(false);
    });

    it('an AK certificate from another CA than the trusted one; from the trusted one it passes', async () => {
      const { evidence } = await fresh();
      const caA = await selfSignedCa(join(dir, 'AK-CA-A'), 'AK CA A');
      const caB = await selfSignedCa(join(dir, 'AK-CA-B'), 'AK CA B');
      const akSpki = akSpkiOf(evidence);
      const issued = await issueAkCertificate({
        caKey: createPrivateKey(caA.key),
        caCert: caA.pem,
        akPublicKeyDer: akSpki,
        akName: akNameOf(evidence),
        subject: 'CN=vault of @bob:example.org, O=Test Health',
        validityDays: 30,
      });
      const withCert = await fresh({ akCertificate: issued.der });
      // No EK roots: only the AK CA can vouch.
      const trustsB = verifierPolicySchema.parse({ version: 1, akRoots: [caB.pem] });
      const r = await verifyEvidence(text(withCert.json), {
        ...withCert.ctx,
        policy: trustsB,
        enrolled: new Map(),
      });
      expect(codes(r)).toContain(AttestationCode.AkCertUntrusted);
      const trustsA = verifierPolicySchema.parse({ version: 1, akRoots: [caA.pem] });
      const good = await verifyEvidence(text(withCert.json), {
        ...withCert.ctx,
        policy: trustsA,
        enrolled: new Map(),
      });
      expect(good.failures).toEqual([]);
      expect(good.facts?.enrolment).toBe('ak-certificate');
    });

    it('a truncated or bit-flipped TPMS_ATTEST', async () => {
      const { json, ctx } = await fresh();
      const attest = Buffer.from(json.quote.attest, 'base64');
      const truncated = {
        ...json,
        quote: { ...json.quote, attest: attest.subarray(0, attest.length - 3).toString('base64') },
      };
      expect(codes(await verifyEvidence(text(truncated), ctx))).toContain(
        AttestationCode.AttestMalformed,
      );
      const flipped = Buffer.from(attest);
      flipped[flipped.length - 5] = (flipped[flipped.length - 5] ?? 0) ^ 0x01;
      const r = await verifyEvidence(
        text({ ...json, quote: { ...json.quote, attest: flipped.toString('base64') } }),
        ctx,
      );
      expect(codes(r)).toContain(AttestationCode.SignatureInvalid);
      const magic = Buffer.from(attest);
      magic[0] = 0;
      const r2 = await verifyEvidence(
        text({ ...json, quote: { ...json.quote, attest: magic.toString('base64') } }),
        ctx,
      );
      expect(codes(r2)).toContain(AttestationCode.AttestMalformed);
    });

    it('a quote signed by another key', async () => {
      const { json, ctx } = await fresh();
      // Another AK's public area (a fresh P-256 key in the same template).
      const ak = Buffer.from(json.ak.public, 'base64');
      const other = Buffer.from(ak);
      const x = randomBytes(32);
      // Replace the point by a valid one from a software key.
      const { publicKey } = await import('node:crypto').then((c) =>
        c.generateKeyPairSync('ec', { namedCurve: 'P-256' }),
      );
      const jwk = publicKey.export({ format: 'jwk' });
      Buffer.from(jwk.x ?? '', 'base64url').copy(other, other.length - 68 + 2);
      Buffer.from(jwk.y ?? '', 'base64url').copy(other, other.length - 32);
      expect(x.length).toBe(32);
      const r = await verifyEvidence(
        text({ ...json, ak: { public: other.toString('base64') } }),
        ctx,
      );
      expect(codes(r)).toContain(AttestationCode.SignatureInvalid);
    });

    it('an event log that does not replay to the quoted PCRs; the true one passes its reference state', async () => {
      const reference = {
        version: 1,
        bank: 'sha256',
        pcrs: {
          [LOG_PCR]: {
            events: log.events.map((e) => ({
              type: e.type,
              digest: e.digests.sha256.toString('hex'),
            })),
          },
        },
      };
      const measured = verifierPolicySchema.parse({
        ...policy,
        requireEventLog: true,
        referenceState: reference,
      });
      const good = await fresh({ eventLog: log.bytes });
      const r = await verifyEvidence(text(good.json), { ...good.ctx, policy: measured });
      expect(r.failures).toEqual([]);
      expect(r.facts?.eventLog).toBe('replayed');

      const lie = buildEventLog({
        algorithms: ['sha256'],
        events: [{ pcr: LOG_PCR, type: EventType.EV_POST_CODE, data: Buffer.from('not what ran') }],
      });
      const bad = await fresh({ eventLog: lie.bytes });
      const r2 = await verifyEvidence(text(bad.json), { ...bad.ctx, policy: measured });
      expect(codes(r2)).toContain(AttestationCode.EventLogMismatch);
      const none = await fresh();
      expect(
        codes(await verifyEvidence(text(none.json), { ...none.ctx, policy: measured })),
      ).toContain(AttestationCode.EventLogMissing);
    });

    it('a TPM whose clock went backwards since the last accepted quote', async () => {
      const { json, ctx } = await fresh();
      const first = await verifyEvidence(text(json), ctx);
      const clock = first.facts?.clock;
      if (!clock) throw new Error('no facts');
      const r = await verifyEvidence(text(json), {
        ...ctx,
        history: { ...clock, clock: clock.clock + 1_000_000n },
      });
      expect(codes(r)).toEqual([AttestationCode.ClockWentBackwards]);
    });

    it('evidence bigger than the bound, or not evidence at all', async () => {
      const { json, ctx } = await fresh();
      const padded = text(json) + ' '.repeat(48 * 1024);
      expect(codes(await verifyEvidence(padded, ctx))).toEqual([AttestationCode.TooLarge]);
      expect(codes(await verifyEvidence('{"type":"org.mte.attestation.evidence"}', ctx))).toEqual([
        AttestationCode.Malformed,
      ]);
      expect(codes(await verifyEvidence('not json', ctx))).toEqual([AttestationCode.Malformed]);
    });
  });
});

function akSpkiOf(evidence: Evidence): Buffer {
  const pub = evidence.ak.public;
  const x = pub.subarray(pub.length - 68 + 2, pub.length - 34);
  const y = pub.subarray(pub.length - 32);
  return Buffer.concat([
    Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex'),
    Buffer.from([4]),
    x,
    y,
  ]);
}

function akNameOf(evidence: Evidence): Buffer {
  return Buffer.concat([
    Buffer.from([0, 0x0b]),
    createHash('sha256').update(evidence.ak.public).digest(),
  ]);
}

function createPublicKeyPem(evidence: Evidence): string {
  const spki = akSpkiOf(evidence).toString('base64');
  return `-----BEGIN PUBLIC KEY-----\n${spki.match(/.{1,64}/g)?.join('\n') ?? ''}\n-----END PUBLIC KEY-----\n`;
}

/** TPMS_ATTEST: magic(4) type(2) qualifiedSigner(TPM2B) extraData(TPM2B). */
function extraDataHex(attest: Buffer): string {
  const signer = attest.readUInt16BE(6);
  const at = 8 + signer;
  const size = attest.readUInt16BE(at);
  return attest.subarray(at + 2, at + 2 + size).toString('hex');
}
