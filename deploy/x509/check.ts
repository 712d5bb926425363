/**
 * The acceptance rules of the shipped X.509 identity code (matrix-sdk-crypto 0.19 in
 * matrix-sdk-crypto-wasm 18.9.0), checked before a certificate is deployed, because peers
 * reject a bad one silently (the identity just stays unverified). See
 * /work/shared/notes/x509-identity.md and deploy/x509/README.md.
 */
import { X509Certificate as NodeCertificate } from 'node:crypto';
import { X509Error } from './errors.ts';
import { emailForm, matrixUri, parseMxid } from './names.ts';
import { x509 } from './provider.ts';

export type ProblemCode =
  | 'CHAIN_EMPTY'
  | 'CHAIN_UNPARSABLE'
  | 'LEAF_NOT_RSA'
  | 'LEAF_NO_SKI'
  | 'SAN_MISMATCH'
  | 'EKU_NO_CLIENT_AUTH'
  | 'LAST_NO_AKI'
  | 'CA_KEY_UNSUPPORTED'
  | 'EXPIRED'
  | 'NOT_YET_VALID'
  | 'UNTRUSTED'
  | 'CMS_ORDER';

export interface Problem {
  code: ProblemCode;
  message: string;
}

export interface CheckReport {
  ok: boolean;
  problems: Problem[];
  /** Advice that does not make peers reject the chain. */
  warnings: string[];
  userId: string;
  /** The signature's key id peers see: `io.element.x509:<unpadded base64 of the root's SKI>`. */
  signatureKeyId: string | undefined;
  leaf?: { subject: string; notAfter: string; skiBase64: string | undefined; san: string[] };
  /** The earliest notAfter over the chain (what the signer's validity callback reports), ms. */
  notAfterMs?: number;
  /** Whether the chain was verified up to one of the given roots. */
  trusted: boolean;
}

export interface CheckInput {
  /** The chain as the signer sends it: leaf first, then intermediates, root left out (PEM). */
  chainPem: string;
  userId: string;
  /** Trusted roots (PEM); without any, chain signatures to a root are not checked. */
  rootsPem?: string[];
  now?: Date;
}

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

export function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

function b64(hex: string): string {
  return Buffer.from(hex, 'hex').toString('base64').replace(/=+$/, '');
}

/** X.690 11.6: SET OF elements sorted as octet strings, the shorter padded with zero octets. */
export function derSetOrder(a: Uint8Array, b: Uint8Array): number {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function caKeyProblem(cert: NodeCertificate, label: string): Problem | undefined {
  const key = cert.publicKey;
  const type = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (type === 'rsa' || type === 'rsa-pss') return undefined;
  if (type === 'ec' && curve === 'prime256v1') return undefined;
  return {
    code: 'CA_KEY_UNSUPPORTED',
    message: `${label} has a ${type ?? 'unknown'}${curve ? ` ${curve}` : ''} key; CAs must be RSA or ECDSA P-256${curve?.startsWith('brainpool') ? ' (brainpool curves are rejected)' : ''}`,
  };
}

function validityProblems(cert: NodeCertificate, label: string, now: Date): Problem[] {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now > to) return [{ code: 'EXPIRED', message: `${label} expired on ${to.toISOString()}` }];
  if (now < from) {
    return [
      { code: 'NOT_YET_VALID', message: `${label} is not valid before ${from.toISOString()}` },
    ];
  }
  return [];
}

export function checkChain(input: CheckInput): CheckReport {
  const now = input.now ?? new Date();
  const mxid = parseMxid(input.userId);
  const problems: Problem[] = [];
  const warnings: string[] = [];
  const report = (extra: Partial<CheckReport>): CheckReport => ({
    ok: problems.length === 0,
    problems,
    warnings,
    userId: mxid.userId,
    signatureKeyId: undefined,
    trusted: false,
    ...extra,
  });
  const pems = splitPem(input.chainPem);
  if (pems.length === 0) {
    problems.push({
      code: 'CHAIN_EMPTY',
      message: 'no certificate found (expected PEM, leaf first)',
    });
    return report({});
  }
  let chain: x509.X509Certificate[];
  let nodeChain: NodeCertificate[];
  let roots: NodeCertificate[];
  try {
    chain = pems.map((p) => new x509.X509Certificate(p));
    nodeChain = pems.map((p) => new NodeCertificate(p));
    roots = (input.rootsPem ?? []).flatMap(splitPem).map((p) => new NodeCertificate(p));
  } catch {
    problems.push({ code: 'CHAIN_UNPARSABLE', message: 'a certificate does not parse as X.509' });
    return report({});
  }
  const leaf = chain[0] as x509.X509Certificate;
  const nodeLeaf = nodeChain[0] as NodeCertificate;
  const last = chain[chain.length - 1] as x509.X509Certificate;

  // Key type of the leaf: only RSA (RSASSA-PSS SHA-512 signatures) is accepted.
  const leafType = nodeLeaf.publicKey.asymmetricKeyType;
  if (leafType !== 'rsa') {
    problems.push({
      code: 'LEAF_NOT_RSA',
      message: `the leaf has a ${leafType ?? 'unknown'} key; it must be RSA (signatures are RSASSA-PSS SHA-512)`,
    });
  }
  const ski = leaf.getExtension(x509.SubjectKeyIdentifierExtension);
  if (!ski) {
    problems.push({
      code: 'LEAF_NO_SKI',
      message: 'the leaf has no Subject Key Identifier; without it no signature is uploaded',
    });
  }
  // Identity binding.
  const sanExt = leaf.getExtension(x509.SubjectAlternativeNameExtension);
  const names = sanExt?.names.items ?? [];
  const uris = names.filter((n) => n.type === 'url').map((n) => n.value);
  const emails = names.filter((n) => n.type === 'email').map((n) => n.value);
  const subjectEmails = leaf.subjectName
    .getField('E')
    .concat(leaf.subjectName.getField('1.2.840.113549.1.9.1'));
  const wantUri = matrixUri(mxid);
  const wantEmail = emailForm(mxid);
  const bound =
    uris.includes(wantUri) ||
    (!uris.some((u) => u.startsWith('matrix:')) &&
      (emails.includes(wantEmail) || subjectEmails.includes(wantEmail)));
  if (!bound) {
    const found = [...uris.map((u) => `URI ${u}`), ...emails.map((e) => `email ${e}`)];
    problems.push({
      code: 'SAN_MISMATCH',
      message: `the leaf does not name ${mxid.userId}: expected SAN URI ${wantUri}, found ${found.length > 0 ? found.join(', ') : 'no SAN'}`,
    });
  }
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && !eku.usages.map(String).includes(CLIENT_AUTH)) {
    problems.push({
      code: 'EKU_NO_CLIENT_AUTH',
      message: `the leaf's Extended Key Usage lacks clientAuth (has ${eku.usages.map(String).join(', ') || 'none'}); peers report it as "expired"`,
    });
  }
  const aki = last.getExtension(x509.AuthorityKeyIdentifierExtension);
  if (!aki?.keyId) {
    problems.push({
      code: 'LAST_NO_AKI',
      message: `the last certificate of the chain (${last.subject}) has no Authority Key Identifier keyIdentifier`,
    });
  }
  // Every certificate in the chain, and the roots, must be valid now; CA keys RSA or P-256.
  nodeChain.forEach((c, i) => {
    const label = i === 0 ? 'the leaf' : `intermediate ${c.subject.replace(/\n/g, ', ')}`;
    problems.push(...validityProblems(c, label, now));
    if (i > 0) {
      const p = caKeyProblem(c, label);
      if (p) problems.push(p);
    }
    if (c.checkIssued(c) && i > 0)
      warnings.push(`${label} is self-signed: leave the root out of the chain`);
  });
  // Links inside the chain, then to a root.
  for (let i = 0; i + 1 < nodeChain.length; i++) {
    const child = nodeChain[i] as NodeCertificate;
    const parent = nodeChain[i + 1] as NodeCertificate;
    if (!child.checkIssued(parent) || !child.verify(parent.publicKey)) {
      problems.push({
        code: 'UNTRUSTED',
        message: `certificate ${i + 1} of the chain is not signed by certificate ${i + 2} (order: leaf first, then its issuer)`,
      });
    }
  }
  const nodeLast = nodeChain[nodeChain.length - 1] as NodeCertificate;
  let trusted = false;
  const root = roots.find((r) => nodeLast.checkIssued(r) && nodeLast.verify(r.publicKey));
  if (root) {
    trusted = true;
    problems.push(...validityProblems(root, `the root ${root.subject.replace(/\n/g, ', ')}`, now));
    const p = caKeyProblem(root, 'the root');
    if (p) problems.push(p);
  } else if (roots.length > 0) {
    problems.push({
      code: 'UNTRUSTED',
      message: `the chain does not lead to the given CA (its last certificate was issued by ${nodeLast.issuer.replace(/\n/g, ', ')})`,
    });
  } else {
    warnings.push('no CA given: the chain was not checked against a root');
  }
  // The known CMS bug: certificates travel as a DER-sorted SET and the parser takes the first
  // as the leaf, so with intermediates the leaf must sort first.
  if (chain.length > 1) {
    const leafDer = new Uint8Array(leaf.rawData);
    const first = chain.find((c) => derSetOrder(new Uint8Array(c.rawData), leafDer) < 0);
    if (first) {
      problems.push({
        code: 'CMS_ORDER',
        message: `intermediate ${first.subject} sorts before the leaf in the CMS certificate set, and peers would take it for the leaf (known bug); the intermediate's certificate must be longer than the leaf's (an RSA root, whose signature on it outweighs the leaf's key, or a long root name), see deploy/x509/README.md`,
      });
    }
  }
  const notAfterMs = Math.min(...nodeChain.map((c) => new Date(c.validTo).getTime()));
  return report({
    signatureKeyId: aki?.keyId ? `io.element.x509:${b64(aki.keyId)}` : undefined,
    leaf: {
      subject: leaf.subject,
      notAfter: leaf.notAfter.toISOString(),
      skiBase64: ski ? b64(ski.keyId) : undefined,
      san: [...uris.map((u) => `URI:${u}`), ...emails.map((e) => `email:${e}`)],
    },
    notAfterMs,
    trusted,
  });
}

/** Throws X509_REJECTED with every problem in one line, unless the chain passes. */
export function assertAccepted(input: CheckInput): CheckReport {
  const r = checkChain(input);
  if (!r.ok) throw new X509Error('X509_REJECTED', r.problems.map((p) => p.message).join('; '));
  return r;
}
