import { createECDH, randomBytes } from 'node:crypto';
import { TPM_ALG, TPM_RH, TPM_SE, TPMA_SESSION } from './constants.ts';
import { DIGEST_BYTES, kdfa, kdfe } from './kdf.ts';
import { Writer } from './marshal.ts';

/**
 * An authorization session as the execute path needs it. Password sessions carry the auth
 * value in clear (fine for empty hierarchy auth); HMAC and policy sessions carry nonces and a
 * session key, and, when salted, can encrypt the first command and response parameter.
 */
export interface Session {
  readonly kind: 'password' | 'hmac' | 'policy';
  readonly handle: number;
  attributes: number;
  /** HMAC/policy only. */
  sessionKey: Buffer;
  nonceCaller: Buffer;
  nonceTPM: Buffer;
  /**
   * Whether the authorized entity's authValue joins the HMAC key. True for HMAC sessions;
   * for policy sessions only after PolicyAuthValue (which we never use).
   */
  includeAuth: boolean;
}

export function passwordSession(): Session {
  return {
    kind: 'password',
    handle: TPM_RH.PW,
    attributes: 0,
    sessionKey: Buffer.alloc(0),
    nonceCaller: Buffer.alloc(0),
    nonceTPM: Buffer.alloc(0),
    includeAuth: true,
  };
}

/** The ECC P-256 public point of the key that salts sessions (our storage primary). */
export interface SaltKey {
  handle: number;
  x: Uint8Array;
  y: Uint8Array;
}

/**
 * Builds TPM2_StartAuthSession's parameters for a session salted to `saltKey` by ECDH, and
 * returns the session key derivation to run on the TPM's answer.
 */
export function saltedSessionRequest(kind: 'hmac' | 'policy', saltKey: SaltKey) {
  const nonceCaller = randomBytes(DIGEST_BYTES);
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  const eph = ecdh.getPublicKey();
  const ephX = eph.subarray(1, 33);
  const ephY = eph.subarray(33, 65);
  const z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), saltKey.x, saltKey.y]));
  const salt = kdfe(z, 'SECRET', ephX, saltKey.x, 256);
  z.fill(0);
  const params = new Writer()
    .tpm2b(nonceCaller)
    .sized((w) => w.tpm2b(ephX).tpm2b(ephY)) // TPM2B_ENCRYPTED_SECRET holding a TPMS_ECC_POINT
    .u8(kind === 'hmac' ? TPM_SE.HMAC : TPM_SE.POLICY)
    .u16(TPM_ALG.AES)
    .u16(128)
    .u16(TPM_ALG.CFB)
    .u16(TPM_ALG.SHA256)
    .done();
  const finish = (handle: number, nonceTPM: Buffer): Session => {
    // bind is TPM_RH_NULL, so the key is KDFa(salt) alone.
    const sessionKey = kdfa(salt, 'ATH', nonceTPM, nonceCaller, 256);
    salt.fill(0);
    return {
      kind,
      handle,
      attributes: TPMA_SESSION.continueSession,
      sessionKey,
      nonceCaller,
      nonceTPM,
      includeAuth: kind === 'hmac',
    };
  };
  return { handles: [saltKey.handle, TPM_RH.NULL], params, finish };
}
