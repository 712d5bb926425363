import pkcs11js, { type AesGCM, type Mechanism, type PKCS11 } from 'pkcs11js';
import { VaultCode, VaultError } from '../vault.ts';
import { ckrOf } from './errors.ts';
import { CKM_AES_GCM } from './mechanisms.ts';
import { storeKeyAad, type StoreKeyFile } from './store-key-file.ts';
import type { VaultScope } from './vault-id.ts';

type Handle = Buffer;

const STORE_KEY_BYTES = 32;
const TAG_BYTES = 16;

/** AES-GCM, 96-bit IV, 128-bit tag. The v240 params set ulIvBits, which the older type leaves unset. */
function gcm(iv: Uint8Array, aad: Buffer): Mechanism {
  const parameter: AesGCM = {
    type: pkcs11js.CK_PARAMS_AES_GCM_v240,
    iv: Buffer.from(iv),
    aad,
    ivBits: 96,
    tagBits: 128,
  };
  return { mechanism: CKM_AES_GCM, parameter };
}

/** Makes a fresh store key with the token's RNG and encrypts it under the vault's KEK. */
export function sealNewStoreKey(
  p11: PKCS11,
  session: Handle,
  kek: Handle,
  tokenSerial: string,
  scope: VaultScope,
): StoreKeyFile {
  const storeKey = p11.C_GenerateRandom(session, Buffer.alloc(STORE_KEY_BYTES));
  try {
    const iv = p11.C_GenerateRandom(session, Buffer.alloc(12));
    p11.C_EncryptInit(session, gcm(iv, storeKeyAad(tokenSerial, scope.hex)), kek);
    const ciphertext = p11.C_Encrypt(session, storeKey, Buffer.alloc(STORE_KEY_BYTES + TAG_BYTES));
    return { tokenSerial, vaultId: scope.hex, iv, ciphertext: Buffer.from(ciphertext) };
  } finally {
    storeKey.fill(0);
  }
}

/** The file must record this vault's id; the tag check below makes the record honest. */
export function checkStoreKeyVault(file: StoreKeyFile, scope: VaultScope): void {
  if (file.vaultId !== scope.hex) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the store-key file belongs to another vault (vault id ${file.vaultId}; this vault is ${scope.hex}): it was copied or swapped into this state dir`,
    );
  }
}

/**
 * Decrypts the store key. The additional data is built from this token's serial and this
 * vault's id, so a file from another vault or token fails the tag even with its recorded
 * fields forged. A failed tag check is reported as tampering: SoftHSM 2.6 answers a bad tag
 * with CKR_GENERAL_ERROR rather than CKR_ENCRYPTED_DATA_INVALID, so both count (the caller
 * rules out a token that went away, session.ts).
 */
export function unsealStoreKey(
  p11: PKCS11,
  session: Handle,
  kek: Handle,
  file: StoreKeyFile,
  scope: VaultScope,
): Uint8Array {
  checkStoreKeyVault(file, scope);
  const plain = decryptUnderKek(
    p11,
    session,
    kek,
    gcm(file.iv, storeKeyAad(file.tokenSerial, scope.hex)),
    Buffer.from(file.ciphertext),
    'the store-key file',
  );
  if (plain.length !== STORE_KEY_BYTES) {
    plain.fill(0);
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      'the decrypted store key has the wrong length',
    );
  }
  return plain;
}

/**
 * AES-GCM decryption under the KEK; a failed tag (CKR_GENERAL_ERROR on SoftHSM 2.6, see above)
 * is tampering, named after `what`. The caller owns (and zeroises) the plaintext.
 */
function decryptUnderKek(
  p11: PKCS11,
  session: Handle,
  kek: Handle,
  mechanism: Mechanism,
  ciphertext: Buffer,
  what: string,
): Uint8Array {
  const out = Buffer.alloc(ciphertext.length);
  try {
    p11.C_DecryptInit(session, mechanism, kek);
    let plain: Buffer;
    try {
      plain = p11.C_Decrypt(session, ciphertext, out);
    } catch (e) {
      const code = ckrOf(e);
      if (
        code === pkcs11js.CKR_ENCRYPTED_DATA_INVALID ||
        code === pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE ||
        code === pkcs11js.CKR_GENERAL_ERROR
      ) {
        throw new VaultError(
          VaultCode.ForeignOrTampered,
          `${what} does not decrypt under this vault's KEK: it was altered, or belongs to another vault or token`,
        );
      }
      throw e;
    }
    return Uint8Array.from(plain);
  } finally {
    out.fill(0);
  }
}

export function kekMissing(stateDir: string): VaultError {
  return new VaultError(
    VaultCode.ForeignOrTampered,
    `a store-key file exists in ${stateDir} but the token has no mte-store-kek of this vault: the token was re-initialised or the file belongs elsewhere, and the store key cannot be recovered here`,
  );
}

/** A store-key file with no vault identity beside it: from before vault ids, or copied here. */
export function orphanStoreKeyFile(stateDir: string): VaultError {
  return new VaultError(
    VaultCode.ForeignOrTampered,
    `a store-key file exists in ${stateDir} but no vault identity (pkcs11-vault.json): it belongs to another vault, or was written before vaults had their own id; this vault will not use it`,
  );
}

/** GCM additional data for a sealed secret: its own label, so no store-key file opens as one. */
function secretAad(tokenSerial: string, vaultIdHex: string): Buffer {
  return Buffer.from(`mte-pkcs11-sealed-secret/v1\0${tokenSerial}\0${vaultIdHex}`, 'utf8');
}

/** Encrypts a vault-internal secret (the backup key) under the KEK, bound to token and vault. */
export function sealSecretUnderKek(
  p11: PKCS11,
  session: Handle,
  kek: Handle,
  tokenSerial: string,
  scope: VaultScope,
  secret: Uint8Array,
): { iv: string; ciphertext: string } {
  const iv = p11.C_GenerateRandom(session, Buffer.alloc(12));
  p11.C_EncryptInit(session, gcm(iv, secretAad(tokenSerial, scope.hex)), kek);
  const ciphertext = p11.C_Encrypt(
    session,
    Buffer.from(secret),
    Buffer.alloc(secret.length + TAG_BYTES),
  );
  return { iv: iv.toString('base64'), ciphertext: Buffer.from(ciphertext).toString('base64') };
}

export function unsealSecretUnderKek(
  p11: PKCS11,
  session: Handle,
  kek: Handle,
  tokenSerial: string,
  scope: VaultScope,
  sealed: { iv: string; ciphertext: string },
): Uint8Array {
  const iv = Buffer.from(sealed.iv, 'base64');
  const ciphertext = Buffer.from(sealed.ciphertext, 'base64');
  if (iv.length !== 12 || ciphertext.length <= TAG_BYTES || ciphertext.length > 4096) {
    throw new VaultError(VaultCode.ForeignOrTampered, 'the sealed secret has the wrong shape');
  }
  return decryptUnderKek(
    p11,
    session,
    kek,
    gcm(iv, secretAad(tokenSerial, scope.hex)),
    ciphertext,
    'the sealed secret',
  );
}
