import { type KeyObject, createHash, createPublicKey } from 'node:crypto';
import { EnrolCode, EnrolError } from './errors.ts';
import { x509 } from './provider.ts';

/**
 * Parsing certificates that arrive from a peer, and the trust anchors an operator configured.
 * A peer's certificate is bounded in size and must be exactly one DER certificate: trailing
 * bytes (a TPM's NV index padded with zeros, say) are refused here, and trimmed, if at all,
 * by whoever read them from the TPM.
 */
export const MAX_CERT_BYTES = 8 * 1024;

/** The length a DER SEQUENCE's header declares, header included; undefined if it has none. */
function derSequenceLength(der: Uint8Array): number | undefined {
  if (der[0] !== 0x30 || der.length < 2) return undefined;
  const first = der[1] ?? 0;
  if (first < 0x80) return 2 + first;
  const octets = first & 0x7f;
  if (octets === 0 || octets > 3 || der.length < 2 + octets) return undefined;
  let length = 0;
  for (let i = 0; i < octets; i++) length = length * 256 + (der[2 + i] ?? 0);
  return 2 + octets + length;
}

/** One DER certificate from a peer, or undefined (the caller reports it as malformed). */
export function parsePeerCertificate(der: Uint8Array): x509.X509Certificate | undefined {
  if (der.length === 0 || der.length > MAX_CERT_BYTES) return undefined;
  if (derSequenceLength(der) !== der.length) return undefined;
  try {
    return new x509.X509Certificate(Buffer.from(der));
  } catch {
    return undefined;
  }
}

const PEM = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/**
 * Configured trust anchors (PEM text, any number of certificates each). A root that does not
 * parse is a configuration error, so it throws rather than silently trusting fewer CAs.
 */
export function parseRoots(pems: readonly string[]): x509.X509Certificate[] {
  const roots: x509.X509Certificate[] = [];
  for (const [i, text] of pems.entries()) {
    const blocks = text.match(PEM) ?? [];
    if (blocks.length === 0) {
      throw new EnrolError(EnrolCode.BadInput, `root ${i + 1} holds no PEM certificate`);
    }
    for (const block of blocks) {
      try {
        roots.push(new x509.X509Certificate(block));
      } catch {
        throw new EnrolError(EnrolCode.BadInput, `root ${i + 1} does not parse as X.509`);
      }
    }
  }
  return roots;
}

/** The certified public key as a Node KeyObject, or undefined if Node cannot import it. */
export function certifiedKey(cert: x509.X509Certificate): KeyObject | undefined {
  try {
    return createPublicKey({
      key: Buffer.from(cert.publicKey.rawData),
      format: 'der',
      type: 'spki',
    });
  } catch {
    return undefined;
  }
}

export function sha256Hex(cert: x509.X509Certificate): string {
  return createHash('sha256').update(Buffer.from(cert.rawData)).digest('hex');
}

/** A name for messages: the subject, or the serial number when the subject is empty. */
export function describe(cert: x509.X509Certificate): string {
  return cert.subject ? `"${cert.subject}"` : `serial ${cert.serialNumber}`;
}

export function isCa(cert: x509.X509Certificate): boolean {
  return cert.getExtension(x509.BasicConstraintsExtension)?.ca === true;
}

/** Whether the extended key usage includes `oid`; undefined when the certificate states none. */
export function ekuIncludes(cert: x509.X509Certificate, oid: string): boolean | undefined {
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  return eku ? eku.usages.map(String).includes(oid) : undefined;
}
