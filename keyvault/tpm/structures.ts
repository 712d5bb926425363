import { TPM_ALG, TPM_CC, TPM_ECC_NIST_P256, TPMA_OBJECT } from './constants.ts';
import { DIGEST_BYTES, sha256 } from './kdf.ts';
import { Reader, Writer } from './marshal.ts';

/** TPMT_PUBLIC, parsed, with its raw bytes kept: Names and signatures are over the raw form. */
export interface PublicArea {
  raw: Buffer;
  type: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  ecc?: { curve: number; x: Buffer; y: Buffer };
  rsa?: { bits: number; exponent: number; modulus: Buffer };
}

export function parsePublic(raw: Uint8Array): PublicArea {
  const r = new Reader(raw);
  const type = r.u16();
  const nameAlg = r.u16();
  const attributes = r.u32();
  const authPolicy = r.tpm2b();
  const area: PublicArea = { raw: Buffer.from(raw), type, nameAlg, attributes, authPolicy };
  if (type === TPM_ALG.ECC) {
    skipSymmetric(r);
    skipScheme(r);
    const curve = r.u16();
    skipScheme(r); // kdf
    area.ecc = { curve, x: r.tpm2b(), y: r.tpm2b() };
  } else if (type === TPM_ALG.RSA) {
    skipSymmetric(r);
    skipScheme(r);
    const bits = r.u16();
    const exponent = r.u32() || 65537;
    area.rsa = { bits, exponent, modulus: r.tpm2b() };
  } else if (type === TPM_ALG.KEYEDHASH) {
    skipScheme(r);
    r.tpm2b();
  } else {
    throw new RangeError(`unsupported public area type 0x${type.toString(16)}`);
  }
  return area;
}

function skipSymmetric(r: Reader): void {
  if (r.u16() !== TPM_ALG.NULL) r.bytes(4); // keyBits, mode
}
function skipScheme(r: Reader): void {
  const alg = r.u16();
  if (alg !== TPM_ALG.NULL) r.u16(); // hash (every scheme we meet carries one)
}

/** An object's Name: nameAlg || H(TPMT_PUBLIC). */
export function objectName(publicRaw: Uint8Array): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(TPM_ALG.SHA256);
  return Buffer.concat([alg, sha256(publicRaw)]);
}

function publicArea(
  type: number,
  attributes: number,
  authPolicy: Uint8Array,
  parameters: (w: Writer) => void,
  unique: (w: Writer) => void,
): Buffer {
  const w = new Writer().u16(type).u16(TPM_ALG.SHA256).u32(attributes).tpm2b(authPolicy);
  parameters(w);
  unique(w);
  return w.done();
}

const eccPoint0 = (w: Writer): void => {
  w.tpm2b(new Uint8Array()).tpm2b(new Uint8Array());
};

/**
 * The storage primary ("SRK"), ECC P-256, the same template as tpm2-tools' default. It is
 * derived from the owner seed, so the same template gives the same key on the same TPM: we
 * recreate it on demand instead of persisting it, and pin its Name at provisioning.
 *
 * With `unique` (at most 32 bytes, put in the template's unique.x, as `tpm2_createprimary -u`
 * does), the TPM derives a different key: the template, unique field included, is input to
 * the derivation. Each vault uses its own random `unique`, so its storage primary, the parent
 * of all its blobs, is its own and no other vault's blob loads under it.
 */
export function srkTemplate(unique: Uint8Array = new Uint8Array()): Buffer {
  if (unique.length > 32) throw new RangeError('srkTemplate: unique is at most 32 bytes');
  return publicArea(
    TPM_ALG.ECC,
    TPMA_OBJECT.fixedTPM |
      TPMA_OBJECT.fixedParent |
      TPMA_OBJECT.sensitiveDataOrigin |
      TPMA_OBJECT.userWithAuth |
      TPMA_OBJECT.noDA |
      TPMA_OBJECT.restricted |
      TPMA_OBJECT.decrypt,
    new Uint8Array(),
    (w) =>
      w
        .u16(TPM_ALG.AES)
        .u16(128)
        .u16(TPM_ALG.CFB)
        .u16(TPM_ALG.NULL)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG.NULL),
    (w) => w.tpm2b(unique).tpm2b(new Uint8Array()),
  );
}

/** The attestation key: restricted ECC P-256 signing, ECDSA/SHA-256, under the endorsement hierarchy. */
export function akTemplate(): Buffer {
  return publicArea(
    TPM_ALG.ECC,
    TPMA_OBJECT.fixedTPM |
      TPMA_OBJECT.fixedParent |
      TPMA_OBJECT.sensitiveDataOrigin |
      TPMA_OBJECT.userWithAuth |
      TPMA_OBJECT.noDA |
      TPMA_OBJECT.restricted |
      TPMA_OBJECT.sign,
    new Uint8Array(),
    (w) =>
      w
        .u16(TPM_ALG.NULL)
        .u16(TPM_ALG.ECDSA)
        .u16(TPM_ALG.SHA256)
        .u16(TPM_ECC_NIST_P256)
        .u16(TPM_ALG.NULL),
    eccPoint0,
  );
}

/**
 * A sealed data object usable only through `policy` (no userWithAuth: the empty authValue
 * alone cannot unseal it), bound to this TPM and its parent.
 */
export function sealTemplate(policy: Uint8Array): Buffer {
  return publicArea(
    TPM_ALG.KEYEDHASH,
    TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.noDA,
    policy,
    (w) => w.u16(TPM_ALG.NULL),
    (w) => w.tpm2b(new Uint8Array()),
  );
}

/** An unrestricted RSA signing key fixed to RSASSA-PSS with SHA-512 (the X.509 identity). */
export function rsaPssTemplate(bits: number): Buffer {
  return publicArea(
    TPM_ALG.RSA,
    TPMA_OBJECT.fixedTPM |
      TPMA_OBJECT.fixedParent |
      TPMA_OBJECT.sensitiveDataOrigin |
      TPMA_OBJECT.userWithAuth |
      TPMA_OBJECT.noDA |
      TPMA_OBJECT.sign,
    new Uint8Array(),
    (w) => w.u16(TPM_ALG.NULL).u16(TPM_ALG.RSAPSS).u16(TPM_ALG.SHA512).u16(bits).u32(0),
    (w) => w.tpm2b(new Uint8Array()),
  );
}

/** TPML_PCR_SELECTION for one SHA-256 bank. */
export function pcrSelection(pcrs: readonly number[]): Buffer {
  const select = Buffer.alloc(3);
  for (const pcr of pcrs) {
    if (!Number.isInteger(pcr) || pcr < 0 || pcr > 23)
      throw new RangeError(`PCR ${pcr} is out of range 0..23`);
    select[pcr >> 3] = (select[pcr >> 3] ?? 0) | (1 << (pcr & 7));
  }
  return new Writer().u32(1).u16(TPM_ALG.SHA256).u8(3).bytes(select).done();
}

/** The policy digest TPM2_PolicyPCR produces for these PCR values, computed in software. */
export function pcrPolicyDigest(pcrs: readonly number[], values: readonly Uint8Array[]): Buffer {
  const pcrDigest = sha256(...values);
  const cc = Buffer.alloc(4);
  cc.writeUInt32BE(TPM_CC.PolicyPCR);
  return sha256(
    Buffer.alloc(DIGEST_BYTES),
    cc,
    pcrSelection([...pcrs].sort((a, b) => a - b)),
    pcrDigest,
  );
}

/** Reads a TPML_PCR_SELECTION and returns the selected PCR indices of the SHA-256 bank. */
export function readPcrSelection(r: Reader): number[] {
  const out: number[] = [];
  const count = r.u32();
  for (let i = 0; i < count; i++) {
    const hash = r.u16();
    const size = r.u8();
    const bits = r.bytes(size);
    if (hash !== TPM_ALG.SHA256) continue;
    bits.forEach((byte, j) => {
      for (let b = 0; b < 8; b++) if (byte & (1 << b)) out.push(j * 8 + b);
    });
  }
  return out;
}
