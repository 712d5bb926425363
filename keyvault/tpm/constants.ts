/** The subset of TPM 2.0 Part 2 constants this client uses. */
export const TPM_ST = {
  NO_SESSIONS: 0x8001,
  SESSIONS: 0x8002,
  ATTEST_QUOTE: 0x8018,
  HASHCHECK: 0x8024,
} as const;

export const TPM_CC = {
  NV_UndefineSpace: 0x122,
  NV_DefineSpace: 0x12a,
  EvictControl: 0x120,
  CreatePrimary: 0x131,
  NV_Increment: 0x134,
  NV_Read: 0x14e,
  Create: 0x153,
  Load: 0x157,
  Quote: 0x158,
  Sign: 0x15d,
  Unseal: 0x15e,
  FlushContext: 0x165,
  NV_ReadPublic: 0x169,
  ReadPublic: 0x173,
  StartAuthSession: 0x176,
  GetCapability: 0x17a,
  GetRandom: 0x17b,
  PCR_Read: 0x17e,
  PolicyPCR: 0x17f,
  PCR_Extend: 0x182,
  PolicyGetDigest: 0x189,
  ActivateCredential: 0x147,
  PolicySecret: 0x151,
} as const;

export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAPSS: 0x0016,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CFB: 0x0043,
} as const;

export const TPM_ECC_NIST_P256 = 0x0003;

export const TPM_RH = {
  OWNER: 0x40000001,
  NULL: 0x40000007,
  PW: 0x40000009,
  ENDORSEMENT: 0x4000000b,
} as const;

export const TPM_SE = { HMAC: 0x00, POLICY: 0x01 } as const;

/** TPMA_SESSION bits. */
export const TPMA_SESSION = {
  continueSession: 0x01,
  decrypt: 0x20,
  encrypt: 0x40,
} as const;

/** TPMA_OBJECT bits. */
export const TPMA_OBJECT = {
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

/** TPMA_NV bits; the index type lives in bits 4..7. */
export const TPMA_NV = {
  PPWRITE: 1 << 0,
  OWNERWRITE: 1 << 1,
  AUTHWRITE: 1 << 2,
  POLICYWRITE: 1 << 3,
  TPM_NT_COUNTER: 1 << 4,
  OWNERREAD: 1 << 17,
  AUTHREAD: 1 << 18,
  NO_DA: 1 << 25,
  ORDERLY: 1 << 26,
  WRITTEN: 1 << 29,
} as const;

export const TPM_CAP = {
  ALGS: 0x0,
  HANDLES: 0x1,
  COMMANDS: 0x2,
  PCRS: 0x5,
  TPM_PROPERTIES: 0x6,
} as const;
export const TPM_PT = {
  MANUFACTURER: 0x105,
  VENDOR_STRING_1: 0x106,
  VENDOR_STRING_2: 0x107,
  FIRMWARE_VERSION_1: 0x10b,
  FIRMWARE_VERSION_2: 0x10c,
} as const;

export const TPM_GENERATED_VALUE = 0xff544347;
export const HT_TRANSIENT = 0x80;
export const HT_NV_INDEX = 0x01;
