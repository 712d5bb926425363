import type { KeyObject } from 'node:crypto';
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
import { type CheckFailure, EkCertCode, type EkCertFailureCode, failure } from './errors.ts';
import { TCG_OID, type TpmInfo, tpmInfo } from './tcg.ts';
import type { x509 } from './provider.ts';

/**
 * Is this the certificate of a genuine TPM's endorsement key? Yes if a configured TPM
 * manufacturer CA (or an intermediate under one) vouches for it. That is all an EK
 * certificate proves: that the key pair was made inside a TPM of that manufacturer. It says
 * nothing about the AK; credential activation links the two.
 *
 * Deliberately not required, because real and swtpm EK certificates lack them: a subject (the
 * TCG profile leaves it empty or "unknown" and names the TPM in the subjectAltName), a subject
 * key identifier, any particular key usage. Required: the chain, and that the certificate is
 * not a CA and, if it states an extended key usage, that it includes tcg-kp-EKCertificate.
 */
export interface EkCertificateOptions {
  /** Trusted EK CAs (PEM); a configured intermediate is an anchor in its own right. */
  roots: readonly string[];
  /** Intermediates the attester sent (DER), between the EK certificate and a root. */
  intermediates?: readonly Uint8Array[];
  now: Date;
  /** When known from elsewhere (the EK's public area): the certificate must certify this key. */
  ekPublic?: KeyObject;
}

export interface CheckedEkCertificate {
  ok: true;
  ekPublic: KeyObject;
  tpm: TpmInfo;
  /** SHA-256 of the DER (hex): what an enrolment record keeps to recognise this EK again. */
  sha256: string;
  /** The earliest notAfter on the path. */
  notAfter: Date;
}

export type EkCertificateResult = CheckedEkCertificate | CheckFailure<EkCertFailureCode>;

const SUPPORTED = (key: KeyObject): boolean => {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa') return [2048, 3072, 4096].includes(d?.modulusLength ?? 0);
  return (
    key.asymmetricKeyType === 'ec' && ['prime256v1', 'secp384r1'].includes(d?.namedCurve ?? '')
  );
};

export async function checkEkCertificate(
  der: Uint8Array,
  options: EkCertificateOptions,
): Promise<EkCertificateResult> {
  const anchors = parseRoots(options.roots);
  const cert = parsePeerCertificate(der);
  if (!cert) return failure(EkCertCode.Malformed, 'the EK certificate is not one DER certificate');
  const key = certifiedKey(cert);
  if (!key || !SUPPORTED(key)) {
    return failure(
      EkCertCode.Malformed,
      'the EK certificate certifies a key enrolment cannot use (RSA 2048-4096, ECC P-256 or P-384)',
    );
  }
  if (isCa(cert)) {
    return failure(EkCertCode.Malformed, `${describe(cert)} is a CA certificate, not an EK's`);
  }
  if (ekuIncludes(cert, TCG_OID.ekCertificate) === false) {
    return failure(
      EkCertCode.Untrusted,
      'the certificate states an extended key usage without tcg-kp-EKCertificate: not issued for an EK',
    );
  }
  const intermediates: x509.X509Certificate[] = [];
  for (const [i, bytes] of (options.intermediates ?? []).entries()) {
    const parsed = parsePeerCertificate(bytes);
    if (!parsed)
      return failure(EkCertCode.Malformed, `intermediate ${i + 1} is not one DER certificate`);
    intermediates.push(parsed);
  }
  const path = await validatePath(cert, { anchors, intermediates, now: options.now });
  if (!path.ok) {
    return failure(
      path.reason === 'expired' ? EkCertCode.Expired : EkCertCode.Untrusted,
      path.message,
    );
  }
  if (options.ekPublic && !options.ekPublic.equals(key)) {
    return failure(EkCertCode.KeyMismatch, 'the EK certificate certifies another key than this EK');
  }
  return {
    ok: true,
    ekPublic: key,
    tpm: tpmInfo(cert),
    sha256: sha256Hex(cert),
    notAfter: new Date(Math.min(...path.path.map((c) => c.notAfter.getTime()))),
  };
}
