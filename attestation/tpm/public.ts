import { type KeyObject, createHash, createPublicKey } from 'node:crypto';
import { ALG, ECC_NIST_P256, TPMA } from './constants.ts';
import { Reader, TpmParseError } from './reader.ts';

/** An attestation key's public area, as far as the verifier needs it. */
export interface AkPublic {
  raw: Buffer;
  /** nameAlg (SHA-256) || SHA-256(raw): what the TPM calls the key, and what enrolment binds. */
  name: Buffer;
  attributes: number;
  authPolicy: Buffer;
  key: KeyObject;
}

/**
 * Parses a TPMT_PUBLIC that must be an ECC P-256 ECDSA-SHA256 signing key (the vault's AK
 * template, keyvault/tpm/structures.ts akTemplate). Anything else is refused by the parser:
 * the verifier only ever handles the one kind of key it knows how to judge.
 */
export function parseAkPublic(bytes: Uint8Array): AkPublic {
  const r = new Reader(bytes, 'TPMT_PUBLIC');
  const type = r.u16('type');
  if (type !== ALG.ECC) throw new TpmParseError('TPMT_PUBLIC.type', 'the AK is not an ECC key');
  const nameAlg = r.u16('nameAlg');
  if (nameAlg !== ALG.SHA256) throw new TpmParseError('TPMT_PUBLIC.nameAlg', 'not SHA-256');
  const attributes = r.u32('objectAttributes');
  const authPolicy = r.sized('authPolicy', 64);
  const symmetric = r.u16('parameters.symmetric');
  if (symmetric !== ALG.NULL) {
    throw new TpmParseError('TPMT_PUBLIC.parameters.symmetric', 'a signing key has none');
  }
  const scheme = r.u16('parameters.scheme');
  const schemeHash = r.u16('parameters.scheme.hashAlg');
  if (scheme !== ALG.ECDSA || schemeHash !== ALG.SHA256) {
    throw new TpmParseError('TPMT_PUBLIC.parameters.scheme', 'not ECDSA with SHA-256');
  }
  if (r.u16('parameters.curveID') !== ECC_NIST_P256) {
    throw new TpmParseError('TPMT_PUBLIC.parameters.curveID', 'not NIST P-256');
  }
  if (r.u16('parameters.kdf') !== ALG.NULL) {
    throw new TpmParseError('TPMT_PUBLIC.parameters.kdf', 'a signing key has none');
  }
  const x = r.sized('unique.x', 32);
  const y = r.sized('unique.y', 32);
  r.end();
  if (x.length !== 32 || y.length !== 32) {
    throw new TpmParseError('TPMT_PUBLIC.unique', 'not a P-256 point');
  }
  let key: KeyObject;
  try {
    key = createPublicKey({
      key: { kty: 'EC', crv: 'P-256', x: x.toString('base64url'), y: y.toString('base64url') },
      format: 'jwk',
    });
  } catch {
    throw new TpmParseError('TPMT_PUBLIC.unique', 'not a point on P-256');
  }
  const raw = Buffer.from(bytes);
  const name = Buffer.concat([
    Buffer.from([ALG.SHA256 >> 8, ALG.SHA256 & 0xff]),
    createHash('sha256').update(raw).digest(),
  ]);
  return { raw, name, attributes, authPolicy, key };
}

/**
 * What makes a key an attestation key a verifier may believe: it signs only TPM-made
 * structures (restricted + sign, not decrypt), it never leaves this TPM (fixedTPM,
 * fixedParent) and the TPM made its private part (sensitiveDataOrigin). Returns the missing
 * or forbidden attributes by name.
 */
export function akAttributeProblems(attributes: number): string[] {
  const problems: string[] = [];
  for (const name of [
    'restricted',
    'sign',
    'fixedTPM',
    'fixedParent',
    'sensitiveDataOrigin',
  ] as const) {
    if ((attributes & TPMA[name]) === 0) problems.push(`${name} not set`);
  }
  if (attributes & TPMA.decrypt) problems.push('decrypt set');
  // A policy could then stand in for the AK's authValue in the ADMIN role (ActivateCredential).
  if (attributes & TPMA.adminWithPolicy) problems.push('adminWithPolicy set');
  return problems;
}
