import { type KeyObject, verify } from 'node:crypto';
import { ALG } from './constants.ts';
import { Reader, TpmParseError } from './reader.ts';

/**
 * Verifies a TPMT_SIGNATURE (ECDSA, SHA-256) over the raw TPMS_ATTEST bytes with the AK. The
 * signature is checked over exactly the bytes that were parsed, never a re-encoding.
 */
export function verifyQuoteSignature(
  attest: Uint8Array,
  signature: Uint8Array,
  ak: KeyObject,
): boolean {
  const r = new Reader(signature, 'TPMT_SIGNATURE');
  const sigAlg = r.u16('sigAlg');
  const hash = r.u16('hash');
  if (sigAlg !== ALG.ECDSA || hash !== ALG.SHA256) {
    throw new TpmParseError('TPMT_SIGNATURE', 'not ECDSA with SHA-256');
  }
  const rPart = r.sized('signatureR', 32);
  const sPart = r.sized('signatureS', 32);
  r.end();
  const p1363 = Buffer.alloc(64);
  rPart.copy(p1363, 32 - rPart.length);
  sPart.copy(p1363, 64 - sPart.length);
  return verify('sha256', attest, { key: ak, dsaEncoding: 'ieee-p1363' }, p1363);
}
