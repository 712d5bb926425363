/** The TPM 2.0 constants the verifier needs (TPM 2.0 Part 2), and nothing else. */
export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;

export const ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  ECDSA: 0x0018,
  ECC: 0x0023,
} as const;

export const ECC_NIST_P256 = 0x0003;

/** TPMA_OBJECT bits (Part 2 §8.3). */
export const TPMA = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

export const HASH_NAMES: Readonly<Record<number, 'sha1' | 'sha256' | 'sha384' | 'sha512'>> = {
  [ALG.SHA1]: 'sha1',
  [ALG.SHA256]: 'sha256',
  [ALG.SHA384]: 'sha384',
  [ALG.SHA512]: 'sha512',
};
