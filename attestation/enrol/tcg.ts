import { AsnConvert } from '@peculiar/asn1-schema';
import { Name, SubjectAlternativeName } from '@peculiar/asn1-x509';
import { x509 } from './provider.ts';

/** TCG object identifiers (TCG EK Credential Profile §3; 2.23.133 is the TCG's arc). */
export const TCG_OID = {
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
  /** tcg-kp-EKCertificate: extended key usage of an EK certificate. */
  ekCertificate: '2.23.133.8.1',
  /** tcg-kp-AIKCertificate: extended key usage of an attestation key certificate. */
  akCertificate: '2.23.133.8.3',
} as const;

/**
 * What an EK certificate says about the TPM, as written there: the manufacturer as the TCG
 * vendor id ("id:00001014"; swtpm says IBM's), the model ("swtpm") and the firmware version
 * ("id:20191023"). What a verifier policy's allowedManufacturers compares with.
 */
export interface TpmInfo {
  manufacturer?: string;
  model?: string;
  version?: string;
}

const FIELDS: ReadonlyArray<[keyof TpmInfo, string]> = [
  ['manufacturer', TCG_OID.tpmManufacturer],
  ['model', TCG_OID.tpmModel],
  ['version', TCG_OID.tpmVersion],
];

/** Printable and short, like the policy's field (anything else is left out, not echoed). */
const VALUE = /^[\x20-\x7e]{1,64}$/;

function fromName(name: Name): TpmInfo {
  const info: TpmInfo = {};
  for (const rdn of name) {
    for (const atv of rdn) {
      const field = FIELDS.find(([, oid]) => oid === atv.type)?.[0];
      const value = atv.value.toString();
      if (field && info[field] === undefined && VALUE.test(value)) info[field] = value;
    }
  }
  return info;
}

/**
 * The TPM attributes from the subjectAltName's directoryName, where the TCG profile puts them
 * (and swtpm does), or else from the subject (older certificates). Empty if neither has them.
 */
export function tpmInfo(cert: x509.X509Certificate): TpmInfo {
  const san = cert.getExtension('2.5.29.17');
  if (san) {
    try {
      for (const general of AsnConvert.parse(san.value, SubjectAlternativeName)) {
        if (general.directoryName) {
          const info = fromName(general.directoryName);
          if (Object.keys(info).length > 0) return info;
        }
      }
    } catch {
      // A SAN we cannot parse says nothing about the TPM; the chain check decides trust.
    }
  }
  try {
    return fromName(AsnConvert.parse(cert.subjectName.toArrayBuffer(), Name));
  } catch {
    return {};
  }
}
