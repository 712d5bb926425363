import {
  type KeyObject,
  constants,
  createCipheriv,
  createHmac,
  diffieHellman,
  generateKeyPairSync,
  publicEncrypt,
  randomBytes,
} from 'node:crypto';
import { EnrolCode, EnrolError } from './errors.ts';
import { DIGEST_BYTES, type HashName, kdfa, kdfe } from './kdf.ts';
import { assertObjectName } from './names.ts';

/**
 * TPM2_MakeCredential in software (TPM 2.0 Part 1 §24, "Credential Protection"; the secret
 * sharing of Annex B.10.3 for RSA and C.6.1 for ECC). The verifier runs it; only the TPM that
 * holds the EK's private key, with an object of Name `akName` loaded, gets the credential back
 * from TPM2_ActivateCredential.
 */
export interface MakeCredentialInput {
  /** The EK public key, from a checked EK certificate: RSA 2048-4096, or ECC P-256 or P-384. */
  ekPublic: KeyObject;
  /**
   * The EK's nameAlg (its template's, not the certificate's): the hash for the seed, OAEP, both
   * KDFs and the HMAC. SHA-256 for the TCG templates L-1, L-2, H-1, H-2 (RSA-2048, P-256);
   * SHA-384 for H-3 (P-384, swtpm's ECC EK).
   */
  ekNameAlg: HashName;
  /**
   * The EK's symmetric key size (AES-CFB). Default: 128 with SHA-256, 256 with SHA-384, which
   * is how the TCG EK templates pair them.
   */
  ekSymmetricBits?: 128 | 256;
  /** The AK's Name: nameAlg || H(TPMT_PUBLIC), as the attester's TPM computes it. */
  akName: Uint8Array;
  /** The secret to protect, 16 to 32 bytes (random: it keys the activation proof). */
  credential: Uint8Array;
}

export interface MadeCredential {
  /** TPM2B_ID_OBJECT, size included: u16 size || TPM2B(integrityHMAC) || encIdentity. */
  credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET, size included: the OAEP ciphertext, or the ephemeral TPMS_ECC_POINT. */
  encryptedSecret: Buffer;
}

/** Shorter would let a peer that saw the blob guess the credential from the proof offline. */
export const MIN_CREDENTIAL_BYTES = 16;
/** A TPM2B_DIGEST every TPM accepts (the largest digest a SHA-256-only TPM knows). */
export const MAX_CREDENTIAL_BYTES = 32;

const IDENTITY = 'IDENTITY';
const RSA_BITS = new Set([2048, 3072, 4096]);
const CURVES: Readonly<Record<string, number>> = { prime256v1: 32, secp384r1: 48 };

export function makeCredential(input: MakeCredentialInput): MadeCredential {
  const { ekPublic, ekNameAlg, akName, credential } = input;
  if (!(ekNameAlg in DIGEST_BYTES)) {
    throw new EnrolError(EnrolCode.BadInput, 'ekNameAlg must be sha256 or sha384');
  }
  const symBits = input.ekSymmetricBits ?? (ekNameAlg === 'sha384' ? 256 : 128);
  assertObjectName(akName, 'akName');
  if (credential.length < MIN_CREDENTIAL_BYTES || credential.length > MAX_CREDENTIAL_BYTES) {
    throw new EnrolError(
      EnrolCode.BadInput,
      `the credential must be ${MIN_CREDENTIAL_BYTES} to ${MAX_CREDENTIAL_BYTES} bytes`,
    );
  }
  if (ekPublic.type !== 'public') {
    throw new EnrolError(EnrolCode.BadInput, 'ekPublic must be a public key');
  }

  const { seed, secret } = shareSeed(ekPublic, ekNameAlg);
  // The TPM decrypts into a TPM2B_DIGEST, so the size travels encrypted with the credential.
  const plain = Buffer.alloc(2 + credential.length);
  const keys: Buffer[] = [];
  try {
    plain.writeUInt16BE(credential.length);
    plain.set(credential, 2);
    const none = new Uint8Array();
    const symKey = kdfa(ekNameAlg, seed, 'STORAGE', akName, none, symBits);
    keys.push(symKey);
    const hmacKey = kdfa(ekNameAlg, seed, 'INTEGRITY', none, none, 8 * DIGEST_BYTES[ekNameAlg]);
    keys.push(hmacKey);
    // IV zero is safe here: symKey is fresh for every seed, and a seed is used once.
    const cipher = createCipheriv(`aes-${symBits}-cfb`, symKey, Buffer.alloc(16));
    const encIdentity = Buffer.concat([cipher.update(plain), cipher.final()]);
    // The HMAC covers the Name: a blob made for one AK fails TPM_RC_INTEGRITY for any other.
    const outerHmac = createHmac(ekNameAlg, hmacKey).update(encIdentity).update(akName).digest();
    return { credentialBlob: tpm2b(tpm2b(outerHmac), encIdentity), encryptedSecret: tpm2b(secret) };
  } finally {
    for (const b of [seed, plain, ...keys]) b.fill(0);
  }
}

/**
 * The seed, and what lets the EK's owner recover it. RSA: a random seed, OAEP-encrypted with
 * the EK's nameAlg and the label "IDENTITY\0". ECC: the seed is KDFe over the x-coordinate of
 * an ECDH with a fresh ephemeral key, and the secret is that ephemeral public point.
 */
function shareSeed(ek: KeyObject, nameAlg: HashName): { seed: Buffer; secret: Buffer } {
  const type = ek.asymmetricKeyType;
  const details = ek.asymmetricKeyDetails;
  const seedBytes = DIGEST_BYTES[nameAlg];
  if (type === 'rsa') {
    if (!RSA_BITS.has(details?.modulusLength ?? 0)) {
      throw new EnrolError(
        EnrolCode.UnsupportedKey,
        `an RSA EK of ${details?.modulusLength ?? 0} bits is not supported (2048, 3072, 4096)`,
      );
    }
    const seed = randomBytes(seedBytes);
    const secret = publicEncrypt(
      {
        key: ek,
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: nameAlg,
        oaepLabel: Buffer.from(`${IDENTITY}\0`, 'ascii'),
      },
      seed,
    );
    return { seed, secret };
  }
  const curve = details?.namedCurve ?? '';
  const size = type === 'ec' ? CURVES[curve] : undefined;
  if (size === undefined) {
    throw new EnrolError(
      EnrolCode.UnsupportedKey,
      `an EK of type ${type ?? 'unknown'}${curve ? ` (${curve})` : ''} is not supported (RSA, P-256, P-384)`,
    );
  }
  const ephemeral = generateKeyPairSync('ec', { namedCurve: curve });
  const z = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: ek });
  try {
    const ephemeralPoint = coordinates(ephemeral.publicKey, size);
    const ekX = coordinates(ek, size).x;
    const seed = kdfe(nameAlg, z, IDENTITY, ephemeralPoint.x, ekX, 8 * seedBytes);
    return { seed, secret: Buffer.concat([tpm2b(ephemeralPoint.x), tpm2b(ephemeralPoint.y)]) };
  } finally {
    z.fill(0);
  }
}

/** An EC public key's affine coordinates, each padded to the field size as TPM2B_ECC_PARAMETER. */
function coordinates(key: KeyObject, size: number): { x: Buffer; y: Buffer } {
  const jwk = key.export({ format: 'jwk' });
  const pad = (v: string | undefined): Buffer => {
    const raw = Buffer.from(v ?? '', 'base64url');
    if (raw.length > size)
      throw new EnrolError(EnrolCode.UnsupportedKey, 'not a point of the curve');
    return Buffer.concat([Buffer.alloc(size - raw.length), raw]);
  };
  return { x: pad(jwk.x), y: pad(jwk.y) };
}

function tpm2b(...parts: Uint8Array[]): Buffer {
  const body = Buffer.concat(parts);
  const size = Buffer.alloc(2);
  size.writeUInt16BE(body.length);
  return Buffer.concat([size, body]);
}

/**
 * The nameAlg and AES key size of the TCG EK Credential Profile's template for this kind of
 * EK: RSA-2048 and P-256 (templates L-1/H-1, L-2/H-2) use SHA-256 and AES-128, P-384 (H-3,
 * swtpm's ECC EK) SHA-384 and AES-256. Undefined for other keys: ask the attester for the
 * EK's public area and read them there.
 */
export function ekTemplateParameters(
  ek: KeyObject,
): { ekNameAlg: HashName; ekSymmetricBits: 128 | 256 } | undefined {
  const d = ek.asymmetricKeyDetails;
  if (ek.asymmetricKeyType === 'rsa' && d?.modulusLength === 2048) {
    return { ekNameAlg: 'sha256', ekSymmetricBits: 128 };
  }
  if (ek.asymmetricKeyType !== 'ec') return undefined;
  if (d?.namedCurve === 'prime256v1') return { ekNameAlg: 'sha256', ekSymmetricBits: 128 };
  if (d?.namedCurve === 'secp384r1') return { ekNameAlg: 'sha384', ekSymmetricBits: 256 };
  return undefined;
}
