import { describe } from './certificates.ts';
import { x509 } from './provider.ts';

/**
 * Path validation, kept to what enrolment needs and done link by link (RFC 5280 §6, minus
 * policies, name constraints and revocation):
 *
 *   1. a path from the leaf to a configured anchor, each certificate's signature verified
 *      with the next one's key (the issuer's name must match its subject, too);
 *   2. every issuer on the path is a CA (basicConstraints cA), may sign certificates (keyUsage,
 *      if present), and its pathLenConstraint allows the CAs below it;
 *   3. no certificate carries a critical extension we do not understand;
 *   4. every certificate on the path, the anchor included, is valid at `now`.
 *
 * Anchors need not be self-signed: a configured intermediate (swtpm's local CA is one) is
 * trusted as it is. Failures of 1-3 make the leaf untrusted, of 4 expired; an untrusted leaf
 * is reported as such even when it is also expired.
 */
export interface PathOptions {
  anchors: readonly x509.X509Certificate[];
  /** Offered by the peer; used only if they link the leaf to an anchor. */
  intermediates: readonly x509.X509Certificate[];
  now: Date;
}

export type PathOutcome =
  | { ok: true; path: x509.X509Certificate[] }
  | { ok: false; reason: 'untrusted' | 'expired'; message: string };

/** Certificates above the leaf, anchor included: more is not a PKI anyone deploys for TPMs. */
const MAX_DEPTH = 5;

const UNDERSTOOD = new Set([
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.15', // keyUsage
  '2.5.29.17', // subjectAltName (EK certificates: critical, with an empty subject)
  '2.5.29.19', // basicConstraints
  '2.5.29.35', // authorityKeyIdentifier
  '2.5.29.37', // extKeyUsage (checked by the callers)
  '2.5.29.9', // subjectDirectoryAttributes (the TPM specification an EK certificate states)
  '2.5.29.32', // certificatePolicies (no policy is required, so none needs processing)
]);

function sameName(a: x509.Name, b: x509.Name): boolean {
  // DER first; the string form catches the same name in another string type.
  const da = Buffer.from(a.toArrayBuffer());
  const db = Buffer.from(b.toArrayBuffer());
  return da.equals(db) || a.toString() === b.toString();
}

async function signedBy(child: x509.X509Certificate, parent: x509.X509Certificate) {
  if (!sameName(child.issuerName, parent.subjectName)) return false;
  try {
    return await child.verify({ publicKey: parent.publicKey, signatureOnly: true });
  } catch {
    // An algorithm WebCrypto does not know, or a key that does not import: no link.
    return false;
  }
}

async function findPath(
  path: x509.X509Certificate[],
  options: PathOptions,
): Promise<x509.X509Certificate[] | undefined> {
  const current = path[path.length - 1] as x509.X509Certificate;
  for (const anchor of options.anchors) {
    if (await signedBy(current, anchor)) return [...path, anchor];
  }
  if (path.length > MAX_DEPTH) return undefined;
  for (const next of options.intermediates) {
    if (path.some((c) => c.equal(next))) continue;
    if (await signedBy(current, next)) {
      const found = await findPath([...path, next], options);
      if (found) return found;
    }
  }
  return undefined;
}

function issuerProblem(issuer: x509.X509Certificate, casBelow: number): string | undefined {
  const bc = issuer.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) return `${describe(issuer)} signed a certificate but is not a CA`;
  if (bc.pathLength !== undefined && casBelow > bc.pathLength) {
    return `${describe(issuer)} allows ${bc.pathLength} CA certificates below it, the path has ${casBelow}`;
  }
  const ku = issuer.getExtension(x509.KeyUsagesExtension);
  if (ku && (ku.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    return `${describe(issuer)} is not allowed to sign certificates (keyUsage)`;
  }
  return undefined;
}

export async function validatePath(
  leaf: x509.X509Certificate,
  options: PathOptions,
): Promise<PathOutcome> {
  const path = await findPath([leaf], options);
  if (!path) {
    return {
      ok: false,
      reason: 'untrusted',
      message: `no configured root (through the given intermediates) signed ${describe(leaf)}, issued by "${leaf.issuer}"`,
    };
  }
  for (const [i, cert] of path.entries()) {
    const unknown = cert.extensions.find((e) => e.critical && !UNDERSTOOD.has(e.type));
    if (unknown) {
      return {
        ok: false,
        reason: 'untrusted',
        message: `${describe(cert)} has a critical extension ${unknown.type} this verifier does not process`,
      };
    }
    if (i > 0) {
      const problem = issuerProblem(cert, i - 1);
      if (problem) return { ok: false, reason: 'untrusted', message: problem };
    }
  }
  for (const cert of path) {
    if (options.now < cert.notBefore) {
      return {
        ok: false,
        reason: 'expired',
        message: `${describe(cert)} is not valid before ${cert.notBefore.toISOString()}`,
      };
    }
    if (options.now > cert.notAfter) {
      return {
        ok: false,
        reason: 'expired',
        message: `${describe(cert)} expired on ${cert.notAfter.toISOString()}`,
      };
    }
  }
  return { ok: true, path };
}
