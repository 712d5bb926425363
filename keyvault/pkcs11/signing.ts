import pkcs11js, { type Mechanism, type PKCS11, type RsaPSS } from 'pkcs11js';
import {
  PURPOSE_ALGORITHM,
  SIGNING_PURPOSES,
  VaultCode,
  VaultError,
  type PublicKeyInfo,
  type SigningPurpose,
} from '../vault.ts';
import { CKM_EDDSA } from './mechanisms.ts';
import {
  PURPOSE_KEY_TYPE,
  PURPOSE_LABEL,
  assertHardwareBound,
  findVaultObject,
  isEd25519Params,
  readAttributes,
} from './objects.ts';
import { ed25519PointFromEcPoint, ed25519Spki, rsaSpki } from './spki.ts';
import type { VaultScope } from './vault-id.ts';

type Handle = Buffer;

/** Messages are canonical JSON of a key, not bulk data; a bound keeps a bad caller cheap. */
const MAX_MESSAGE_BYTES = 64 * 1024;

const PSS_SHA512: RsaPSS = {
  type: pkcs11js.CK_PARAMS_RSA_PSS,
  hashAlg: pkcs11js.CKM_SHA512,
  mgf: pkcs11js.CKG_MGF1_SHA512,
  saltLen: 64,
};

/** Each purpose's one mechanism: a key can never be used with another. */
const MECHANISM: Record<SigningPurpose, Mechanism> = {
  'cross-signing-master': { mechanism: CKM_EDDSA },
  'x509-identity': {
    mechanism: pkcs11js.CKM_SHA512_RSA_PKCS_PSS,
    parameter: PSS_SHA512,
  },
};

/** Checks a purpose arriving from outside (the RPC): unknown ones are refused by name. */
export function checkPurpose(purpose: unknown): SigningPurpose {
  if (typeof purpose === 'string' && (SIGNING_PURPOSES as readonly string[]).includes(purpose)) {
    return purpose as SigningPurpose;
  }
  throw new VaultError(
    VaultCode.BadRequest,
    `unknown signing purpose; expected one of ${SIGNING_PURPOSES.join(', ')}`,
  );
}

function notProvisioned(purpose: SigningPurpose): VaultError {
  return new VaultError(
    VaultCode.NotProvisioned,
    `no ${PURPOSE_LABEL[purpose]} key on the token; run "vault init"`,
  );
}

/** Signs with the vault's own key for `purpose` (found by label and the vault's CKA_ID). */
export function sign(
  p11: PKCS11,
  session: Handle,
  scope: VaultScope,
  purpose: SigningPurpose,
  message: Uint8Array,
): Uint8Array {
  if (!(message instanceof Uint8Array) || message.length > MAX_MESSAGE_BYTES) {
    throw new VaultError(
      VaultCode.BadRequest,
      `the message must be bytes, at most ${MAX_MESSAGE_BYTES} of them`,
    );
  }
  const label = PURPOSE_LABEL[purpose];
  const key = findVaultObject(p11, session, scope, pkcs11js.CKO_PRIVATE_KEY, purpose);
  if (!key) throw notProvisioned(purpose);
  assertHardwareBound(p11, session, key, label, PURPOSE_KEY_TYPE[purpose]);
  p11.C_SignInit(session, MECHANISM[purpose], key);
  // 512 bytes covers Ed25519 (64) and RSA up to 4096 bits; pkcs11js returns the used part.
  return new Uint8Array(p11.C_Sign(session, Buffer.from(message), Buffer.alloc(512)));
}

export function publicKey(
  p11: PKCS11,
  session: Handle,
  scope: VaultScope,
  purpose: SigningPurpose,
): PublicKeyInfo {
  const label = PURPOSE_LABEL[purpose];
  const key = findVaultObject(p11, session, scope, pkcs11js.CKO_PUBLIC_KEY, purpose);
  if (!key) throw notProvisioned(purpose);
  let spki: Uint8Array;
  if (purpose === 'cross-signing-master') {
    const [params, point] = readAttributes(p11, session, key, [
      pkcs11js.CKA_EC_PARAMS,
      pkcs11js.CKA_EC_POINT,
    ]);
    if (!params || !point || !isEd25519Params(params)) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        `the public key labelled ${label} is not an Ed25519 key`,
      );
    }
    spki = ed25519Spki(ed25519PointFromEcPoint(point));
  } else {
    const [modulus, exponent] = readAttributes(p11, session, key, [
      pkcs11js.CKA_MODULUS,
      pkcs11js.CKA_PUBLIC_EXPONENT,
    ]);
    if (!modulus || !exponent) throw notProvisioned(purpose);
    spki = rsaSpki(modulus, exponent);
  }
  return { purpose, algorithm: PURPOSE_ALGORITHM[purpose], spki };
}
