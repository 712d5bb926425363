/**
 * Issuing: a root CA, an intermediate CA, and a leaf for a Matrix user with what the shipped
 * X.509 identity code needs (SAN URI, SKI, AKI, EKU clientAuth, an RSA key). Every leaf is run
 * through checkChain before it is returned, so the tool never hands out a certificate that
 * peers would silently ignore (unless a test asks for one with `allowRejected`).
 */
import { checkChain } from './check.ts';
import { X509Error } from './errors.ts';
import { type KeyType, type SigningKey, generateKey, parsePublicKey } from './keys.ts';
import { type Mxid, matrixUri, parseMxid } from './names.ts';
import { x509 } from './provider.ts';

const DAY = 86_400_000;

export interface Issuer {
  /** The issuer's certificate, PEM. */
  certPem: string;
  key: SigningKey;
}

export interface Issued {
  certPem: string;
  /** Only when the tool generated the key: the PKCS#8 PEM, to be written 0600. */
  keyPem?: string;
  /** Unpadded base64 of the certificate's SKI (the CA's id in `io.element.x509:<id>`). */
  skiBase64: string;
  notAfter: Date;
}

export interface Validity {
  /** Default: now minus 5 minutes (clock skew). */
  notBefore?: Date;
  /** Default: notBefore plus `days`. */
  notAfter?: Date;
  days?: number;
}

function validity(v: Validity, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const notBefore = v.notBefore ?? new Date(Date.now() - 5 * 60_000);
  const notAfter = v.notAfter ?? new Date(notBefore.getTime() + (v.days ?? defaultDays) * DAY);
  if (notAfter <= notBefore)
    throw new X509Error('X509_BAD_INPUT', 'notAfter must be after notBefore');
  return { notBefore, notAfter };
}

function serial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive
  if (bytes[0] === 0) bytes[0] = 1;
  return Buffer.from(bytes).toString('hex');
}

function dn(commonName: string, organisation?: string): string {
  const esc = (s: string) => s.replace(/([,+"\\<>;=])/g, '\\$1');
  return organisation ? `CN=${esc(commonName)}, O=${esc(organisation)}` : `CN=${esc(commonName)}`;
}

export function skiBase64(cert: x509.X509Certificate): string | undefined {
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension);
  return ski ? Buffer.from(ski.keyId, 'hex').toString('base64').replace(/=+$/, '') : undefined;
}

function issued(cert: x509.X509Certificate, keyPem?: string): Issued {
  return {
    certPem: cert.toString('pem') + '\n',
    ...(keyPem ? { keyPem } : {}),
    skiBase64: skiBase64(cert) ?? '',
    notAfter: cert.notAfter,
  };
}

export interface CaOptions extends Validity {
  commonName: string;
  organisation?: string;
  keyType?: KeyType;
}

/** A self-signed root CA (10 years by default), RSA-3072 unless asked otherwise. */
export async function createRootCa(options: CaOptions): Promise<Issued & { key: SigningKey }> {
  const { key, pkcs8Pem } = await generateKey(options.keyType ?? 'rsa-3072');
  const { notBefore, notAfter } = validity(options, 3650);
  const name = dn(options.commonName, options.organisation);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: name,
    issuer: name,
    notBefore,
    notAfter,
    publicKey: key.spki,
    signingKey: key.privateKey,
    signingAlgorithm: key.algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(key.spki),
      await x509.AuthorityKeyIdentifierExtension.create(key.spki),
    ],
  });
  return { ...issued(cert, pkcs8Pem), key };
}

/** An intermediate CA under `issuer` (5 years by default, path length 0). */
export async function createIntermediateCa(
  issuer: Issuer,
  options: CaOptions,
): Promise<Issued & { key: SigningKey }> {
  const parent = new x509.X509Certificate(issuer.certPem);
  const { key, pkcs8Pem } = await generateKey(options.keyType ?? 'rsa-3072');
  const { notBefore, notAfter } = validity(options, 1825);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: dn(options.commonName, options.organisation),
    issuer: parent.subject,
    notBefore,
    notAfter,
    publicKey: key.spki,
    signingKey: issuer.key.privateKey,
    signingAlgorithm: issuer.key.algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(key.spki),
      await authorityKeyId(parent, issuer.key),
    ],
  });
  return { ...issued(cert, pkcs8Pem), key };
}

async function authorityKeyId(
  parent: x509.X509Certificate,
  key: SigningKey,
): Promise<x509.AuthorityKeyIdentifierExtension> {
  const ski = parent.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ski) return new x509.AuthorityKeyIdentifierExtension(ski.keyId);
  return x509.AuthorityKeyIdentifierExtension.create(key.spki);
}

export interface LeafOptions extends Validity {
  /** `@alice:example.org` */
  userId: string;
  /** The leaf's public key (SPKI, DER or PEM), e.g. the vault's x509-identity key. */
  publicKey?: Uint8Array | string;
  /** When no public key is given, a fresh key of this type (RSA only; default rsa-2048). */
  keyType?: Exclude<KeyType, 'ecdsa-p256'>;
  /** Chain certificates between the leaf and the root (PEM), to check the result against. */
  intermediatesPem?: string[];
  /** The root(s) the result is checked against (PEM). */
  rootsPem?: string[];
  /** Tests only: make certificates peers reject, to test that they do. */
  allowRejected?: boolean;
  /** Tests only: a different SAN URI (e.g. another user's), or none. */
  sanUri?: string | null;
  /** Tests only: extended key usages (default [clientAuth]); [] leaves the extension out. */
  extendedKeyUsages?: string[];
  /** Tests only: leave out the Subject Key Identifier. */
  omitSubjectKeyId?: boolean;
}

/**
 * A leaf for a Matrix user (1 year by default): subject CN = the MXID, SAN URI
 * `matrix:u/<localpart>:<server>`, SKI, AKI, EKU clientAuth, KU digitalSignature, not a CA.
 */
export async function issueLeaf(issuer: Issuer, options: LeafOptions): Promise<Issued> {
  const mxid: Mxid = parseMxid(options.userId);
  let spki: Uint8Array;
  let keyPem: string | undefined;
  if (options.publicKey !== undefined) {
    spki = parsePublicKey(options.publicKey);
  } else {
    const generated = await generateKey(options.keyType ?? 'rsa-2048');
    spki = generated.key.spki;
    keyPem = generated.pkcs8Pem;
  }
  const parent = new x509.X509Certificate(issuer.certPem);
  const { notBefore, notAfter } = validity(options, 365);
  const san = options.sanUri === undefined ? matrixUri(mxid) : options.sanUri;
  const ekus = options.extendedKeyUsages ?? [x509.ExtendedKeyUsage.clientAuth];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    await authorityKeyId(parent, issuer.key),
  ];
  if (!options.omitSubjectKeyId)
    extensions.push(await x509.SubjectKeyIdentifierExtension.create(spki));
  if (ekus.length > 0) extensions.push(new x509.ExtendedKeyUsageExtension(ekus, false));
  if (san !== null)
    extensions.push(new x509.SubjectAlternativeNameExtension([{ type: 'url', value: san }], false));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: dn(mxid.userId),
    issuer: parent.subject,
    notBefore,
    notAfter,
    publicKey: spki,
    signingKey: issuer.key.privateKey,
    signingAlgorithm: issuer.key.algorithm,
    extensions,
  });
  const result = issued(cert, keyPem);
  if (!options.allowRejected) {
    const chain = [result.certPem, ...(options.intermediatesPem ?? [])];
    const report = checkChain({
      chainPem: chain.join(''),
      userId: mxid.userId,
      rootsPem: options.rootsPem ?? (options.intermediatesPem?.length ? [] : [issuer.certPem]),
    });
    if (!report.ok) {
      throw new X509Error(
        'X509_REJECTED',
        `the leaf would be rejected: ${report.problems.map((p) => p.message).join('; ')}`,
      );
    }
  }
  return result;
}
