import { type KeyObject, createPublicKey, randomBytes, webcrypto } from 'node:crypto';
import { z } from 'zod';
import {
  certifiedKey,
  describe,
  ekuIncludes,
  isCa,
  parsePeerCertificate,
  parseRoots,
  sha256Hex,
} from './certificates.ts';
import { validatePath } from './chain.ts';
import {
  AkCertCode,
  type AkCertFailureCode,
  type CheckFailure,
  EnrolCode,
  EnrolError,
  failure,
} from './errors.ts';
import { assertObjectName, isObjectName } from './names.ts';
import { x509 } from './provider.ts';
import { TCG_OID } from './tcg.ts';

/**
 * AK certificates from an institution's attestation CA: after a successful activation, the CA
 * states "this P-256 key is the AK with this TPM Name, on a TPM whose EK we checked", so that
 * verifiers configured with the CA need not repeat the activation.
 *
 * Where the Name goes: the subject's serialNumber attribute (X.520, 2.5.4.5, PrintableString),
 * as `tpm-name:` and the standard base64 of the Name (57 characters for a SHA-256 Name, within
 * the attribute's 64-character bound; hex would not fit). Not an extension under a private
 * OID: the registration-free arc is 2.25.<UUID as a 128-bit integer> (ITU-T X.667), and
 * @peculiar/x509 2.2 (asn1js) decodes arcs above 2^53 into a placeholder and writes a mangled
 * OID back when it re-encodes the extension, so a certificate made or re-read with it would
 * lose the binding silently. The rest of the subject stays the institution's to choose.
 *
 * The certificate also carries the TCG's tcg-kp-AIKCertificate extended key usage, so no other
 * certificate of the same CA (a user's X.509 identity, a TLS server) passes as an AK's.
 */
export const AK_NAME_PREFIX = 'tpm-name:';
const SERIAL_NUMBER = '2.5.4.5';
/** X.520's ub-serial-number. */
const MAX_SERIAL_NUMBER = 64;

/** The subject serialNumber value that carries `akName`. */
export function akNameSerialNumber(akName: Uint8Array): string {
  return AK_NAME_PREFIX + Buffer.from(akName).toString('base64');
}

const DAY_MS = 86_400_000;

const requestSchema = z
  .object({
    caCert: z.string().max(16 * 1024),
    akPublicKeyDer: z.instanceof(Uint8Array).refine((b) => b.length > 0 && b.length <= 1024),
    akName: z.instanceof(Uint8Array),
    subject: z.string().min(1).max(512),
    validityDays: z.number().int().min(1).max(3650),
    notBefore: z.date().optional(),
  })
  .loose();

export interface AkCertificateRequest {
  /** The attestation CA's private key (RSA, or ECDSA P-256/P-384). */
  caKey: KeyObject;
  /** The attestation CA's certificate (PEM): a CA, whose key is caKey. */
  caCert: string;
  /** The AK's SubjectPublicKeyInfo (DER), ECC P-256. */
  akPublicKeyDer: Uint8Array;
  /** The AK's TPM Name, checked by activation (and against the AK's public area) beforehand. */
  akName: Uint8Array;
  /** Subject DN, e.g. "CN=vault of @alice:example.org, O=Example Health"; the AK Name is added. */
  subject: string;
  validityDays: number;
  /** Default: now minus 5 minutes (clock skew). */
  notBefore?: Date;
}

export interface IssuedAkCertificate {
  der: Buffer;
  pem: string;
  notAfter: Date;
}

function bad(message: string): never {
  throw new EnrolError(EnrolCode.BadInput, message);
}

/** WebCrypto parameters for signing with the CA key: SHA-256 (SHA-384 with a P-384 key). */
function signingParams(key: KeyObject): {
  importParams: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams;
  signing: webcrypto.RsaHashedImportParams | webcrypto.EcdsaParams;
} {
  if (key.asymmetricKeyType === 'rsa') {
    const params = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    return { importParams: params, signing: params };
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (key.asymmetricKeyType === 'ec' && (curve === 'prime256v1' || curve === 'secp384r1')) {
    const p384 = curve === 'secp384r1';
    return {
      importParams: { name: 'ECDSA', namedCurve: p384 ? 'P-384' : 'P-256' },
      signing: { name: 'ECDSA', hash: p384 ? 'SHA-384' : 'SHA-256' },
    };
  }
  throw new EnrolError(
    EnrolCode.UnsupportedKey,
    'the attestation CA key must be RSA or ECDSA P-256/P-384',
  );
}

export async function issueAkCertificate(
  request: AkCertificateRequest,
): Promise<IssuedAkCertificate> {
  const parsed = requestSchema.safeParse(request);
  if (!parsed.success)
    bad(`the AK certificate request is invalid: ${parsed.error.issues[0]?.path.join('.') ?? ''}`);
  const { caKey, akName, akPublicKeyDer, validityDays } = request;
  if (caKey.type !== 'private') bad('caKey must be a private key');
  assertObjectName(akName, 'akName');
  let ca: x509.X509Certificate;
  try {
    ca = new x509.X509Certificate(request.caCert);
  } catch {
    bad('caCert does not parse as a PEM certificate');
  }
  if (!isCa(ca)) bad('caCert is not a CA certificate (basicConstraints cA)');
  const caPublic = certifiedKey(ca);
  if (!caPublic?.equals(createPublicKey(caKey))) bad('caKey is not the key of caCert');
  let ak: KeyObject;
  try {
    ak = createPublicKey({ key: Buffer.from(akPublicKeyDer), format: 'der', type: 'spki' });
  } catch {
    bad('akPublicKeyDer is not a DER SubjectPublicKeyInfo');
  }
  if (ak.asymmetricKeyType !== 'ec' || ak.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new EnrolError(EnrolCode.UnsupportedKey, 'the AK must be an ECC P-256 key');
  }
  const serialNumber = akNameSerialNumber(akName);
  if (serialNumber.length > MAX_SERIAL_NUMBER) bad('only SHA-256 AK Names fit the certificate');
  let subject: x509.Name;
  try {
    const json = new x509.Name(request.subject).toJSON();
    if (
      json.some((rdn) => Object.keys(rdn).some((k) => k === 'serialNumber' || k === SERIAL_NUMBER))
    ) {
      bad('the subject must not have a serialNumber: it carries the AK Name');
    }
    subject = new x509.Name([...json, { [SERIAL_NUMBER]: [serialNumber] }]);
  } catch (e) {
    if (e instanceof EnrolError) throw e;
    bad('subject is not a distinguished name such as "CN=..., O=..."');
  }
  const { importParams, signing } = signingParams(caKey);
  const signingKey = caKey.toCryptoKey(importParams, false, ['sign']);
  const spki = ak.export({ format: 'der', type: 'spki' });
  const notBefore = request.notBefore ?? new Date(Date.now() - 5 * 60_000);
  const notAfter = new Date(notBefore.getTime() + validityDays * DAY_MS);
  const caSki = ca.getExtension(x509.SubjectKeyIdentifierExtension);
  const serial = randomBytes(16);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x01; // positive, and no leading zero octet
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject,
    issuer: ca.subjectName,
    notBefore,
    notAfter,
    publicKey: spki,
    signingKey,
    signingAlgorithm: signing,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([TCG_OID.akCertificate], false),
      await x509.SubjectKeyIdentifierExtension.create(spki),
      caSki
        ? new x509.AuthorityKeyIdentifierExtension(caSki.keyId)
        : await x509.AuthorityKeyIdentifierExtension.create(ca.publicKey),
    ],
  });
  const der = Buffer.from(cert.rawData);
  return { der, pem: cert.toString('pem') + '\n', notAfter };
}

export interface AkCertificateOptions {
  /** Trusted attestation CAs (PEM). */
  roots: readonly string[];
  intermediates?: readonly Uint8Array[];
  /** The AK from the evidence (SubjectPublicKeyInfo DER, e.g. from its TPMT_PUBLIC). */
  akPublicSpki: Uint8Array;
  /** The AK's Name computed from its TPMT_PUBLIC in the evidence, never taken from the certificate. */
  akName: Uint8Array;
  now: Date;
}

export interface CheckedAkCertificate {
  ok: true;
  subject: string;
  notAfter: Date;
  sha256: string;
}

export type AkCertificateResult = CheckedAkCertificate | CheckFailure<AkCertFailureCode>;

export async function checkAkCertificate(
  der: Uint8Array,
  options: AkCertificateOptions,
): Promise<AkCertificateResult> {
  const anchors = parseRoots(options.roots);
  let expectedKey: KeyObject;
  try {
    expectedKey = createPublicKey({
      key: Buffer.from(options.akPublicSpki),
      format: 'der',
      type: 'spki',
    });
  } catch {
    bad('akPublicSpki is not a DER SubjectPublicKeyInfo');
  }
  if (!isObjectName(options.akName)) bad('akName is not a TPM object Name');
  const cert = parsePeerCertificate(der);
  if (!cert) return failure(AkCertCode.Malformed, 'the AK certificate is not one DER certificate');
  const intermediates: x509.X509Certificate[] = [];
  for (const [i, bytes] of (options.intermediates ?? []).entries()) {
    const parsed = parsePeerCertificate(bytes);
    if (!parsed) {
      return failure(AkCertCode.Malformed, `intermediate ${i + 1} is not one DER certificate`);
    }
    intermediates.push(parsed);
  }
  const path = await validatePath(cert, { anchors, intermediates, now: options.now });
  if (!path.ok) {
    return failure(
      path.reason === 'expired' ? AkCertCode.Expired : AkCertCode.Untrusted,
      path.message,
    );
  }
  if (isCa(cert) || ekuIncludes(cert, TCG_OID.akCertificate) !== true) {
    return failure(
      AkCertCode.Untrusted,
      `${describe(cert)} was not issued as an AK certificate (tcg-kp-AIKCertificate, not a CA)`,
    );
  }
  const key = certifiedKey(cert);
  if (!key?.equals(expectedKey)) {
    return failure(AkCertCode.KeyMismatch, 'the AK certificate certifies another key than this AK');
  }
  const named = cert.subjectName
    .getField(SERIAL_NUMBER)
    .filter((v) => v.startsWith(AK_NAME_PREFIX));
  if (named.length !== 1 || named[0] !== akNameSerialNumber(options.akName)) {
    return failure(
      AkCertCode.NameMismatch,
      named.length === 0
        ? 'the AK certificate carries no AK Name'
        : 'the AK certificate names another TPM object',
    );
  }
  return { ok: true, subject: cert.subject, notAfter: cert.notAfter, sha256: sha256Hex(cert) };
}
