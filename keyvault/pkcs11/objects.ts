import pkcs11js, { type PKCS11, type Template } from 'pkcs11js';
import { VaultCode, VaultError, type SigningPurpose } from '../vault.ts';
import { CKK_EC_EDWARDS } from './mechanisms.ts';

type Handle = Buffer;

/**
 * The token objects the vault owns, found by CKA_CLASS + CKA_LABEL. CKA_ID is the label's UTF-8
 * bytes, so tools that pair keys by CKA_ID (pkcs11-tool) show each pair together.
 *
 * | label                      | objects                                  |
 * |----------------------------|------------------------------------------|
 * | mte-store-kek              | AES-256 secret key (encrypts the store key) |
 * | mte-cross-signing-master   | Ed25519 private + public key             |
 * | mte-x509-identity          | RSA-3072 private + public key            |
 * | mte-counter                | CKO_DATA, CKA_VALUE = u64 big-endian     |
 */
export const LABELS = {
  storeKek: 'mte-store-kek',
  counter: 'mte-counter',
} as const;

export const PURPOSE_LABEL: Record<SigningPurpose, string> = {
  'cross-signing-master': 'mte-cross-signing-master',
  'x509-identity': 'mte-x509-identity',
};

export const PURPOSE_KEY_TYPE: Record<SigningPurpose, number> = {
  'cross-signing-master': CKK_EC_EDWARDS,
  'x509-identity': pkcs11js.CKK_RSA,
};

/** CKA_APPLICATION of the counter object. */
export const APPLICATION = 'matrix-trusted-endpoint';

/** DER PrintableString "edwards25519" (what SoftHSM uses) and the OID 1.3.101.112. */
export const ED25519_PARAMS_NAME = Buffer.from('130c656477617264733235353139', 'hex');
const ED25519_PARAMS_OID = Buffer.from('06032b6570', 'hex');

export const RSA_BITS = 3072;

export function findObjects(p11: PKCS11, session: Handle, template: Template): Handle[] {
  p11.C_FindObjectsInit(session, template);
  try {
    const all: Handle[] = [];
    for (;;) {
      const batch = p11.C_FindObjects(session, 32);
      if (batch.length === 0) return all;
      all.push(...batch);
    }
  } finally {
    try {
      p11.C_FindObjectsFinal(session);
    } catch {
      // A failed search has nothing to finish; its own error is the one to report.
    }
  }
}

/** The one object of `objectClass` labelled `label`, or undefined; duplicates are refused. */
export function findOne(
  p11: PKCS11,
  session: Handle,
  objectClass: number,
  label: string,
): Handle | undefined {
  const found = findObjects(p11, session, [
    { type: pkcs11js.CKA_CLASS, value: objectClass },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  if (found.length > 1) {
    throw new VaultError(
      VaultCode.Config,
      `the token holds ${found.length} objects labelled ${label}; remove the extra ones (the vault will not guess which is right)`,
    );
  }
  return found[0];
}

export function readAttributes(
  p11: PKCS11,
  session: Handle,
  object: Handle,
  types: readonly number[],
): Buffer[] {
  const result = p11.C_GetAttributeValue(
    session,
    object,
    types.map((type) => ({ type })),
  );
  return types.map((type) => {
    const attr = result.find((a) => a.type === type);
    if (!attr) throw new VaultError(VaultCode.HardwareError, 'the token omitted an attribute');
    return attr.value;
  });
}

function ulong(value: Buffer): number {
  return value.length >= 8 ? Number(value.readBigUInt64LE()) : value.readUInt32LE();
}

/**
 * Refuses a key under our label that could ever have left the token: it must be sensitive and
 * non-extractable now, and always sensitive and never extractable (generated inside, not
 * imported). Guards against someone planting a known key under our label.
 */
export function assertHardwareBound(
  p11: PKCS11,
  session: Handle,
  key: Handle,
  label: string,
  keyType: number,
): void {
  const [type, sensitive, extractable, alwaysSensitive, neverExtractable] = readAttributes(
    p11,
    session,
    key,
    [
      pkcs11js.CKA_KEY_TYPE,
      pkcs11js.CKA_SENSITIVE,
      pkcs11js.CKA_EXTRACTABLE,
      pkcs11js.CKA_ALWAYS_SENSITIVE,
      pkcs11js.CKA_NEVER_EXTRACTABLE,
    ],
  );
  if (!type || ulong(type) !== keyType) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the key labelled ${label} has the wrong key type; the vault will not use it`,
    );
  }
  const isTrue = (b: Buffer | undefined): boolean => b?.[0] === 1;
  if (
    !isTrue(sensitive) ||
    isTrue(extractable) ||
    !isTrue(alwaysSensitive) ||
    !isTrue(neverExtractable)
  ) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the key labelled ${label} is extractable or was not generated inside the token; the vault will not use it`,
    );
  }
}

/** Only Ed25519 among the Edwards curves: Ed448 shares CKK_EC_EDWARDS. */
export function isEd25519Params(params: Buffer): boolean {
  return params.equals(ED25519_PARAMS_NAME) || params.equals(ED25519_PARAMS_OID);
}

const common = (label: string): Template => [
  { type: pkcs11js.CKA_TOKEN, value: true },
  { type: pkcs11js.CKA_LABEL, value: label },
  { type: pkcs11js.CKA_MODIFIABLE, value: false },
];

/** Data objects have no CKA_ID; keys do. */
const keyCommon = (label: string): Template => [
  ...common(label),
  { type: pkcs11js.CKA_ID, value: Buffer.from(label, 'utf8') },
];

/** Secret and private keys: usable inside the token only, by the logged-in user only. */
const hidden: Template = [
  { type: pkcs11js.CKA_PRIVATE, value: true },
  { type: pkcs11js.CKA_SENSITIVE, value: true },
  { type: pkcs11js.CKA_EXTRACTABLE, value: false },
  { type: pkcs11js.CKA_DERIVE, value: false },
];

export function kekTemplate(): Template {
  return [
    ...keyCommon(LABELS.storeKek),
    ...hidden,
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
  ];
}

export function keyPairTemplates(purpose: SigningPurpose): { pub: Template; priv: Template } {
  const label = PURPOSE_LABEL[purpose];
  const keyType = PURPOSE_KEY_TYPE[purpose];
  const pub: Template = [
    ...keyCommon(label),
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: keyType },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_VERIFY, value: true },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
  ];
  const priv: Template = [
    ...keyCommon(label),
    ...hidden,
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: keyType },
    // Signing only: SoftHSM would otherwise default decrypt/unwrap to true on Edwards keys.
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
  ];
  if (purpose === 'cross-signing-master') {
    pub.push({ type: pkcs11js.CKA_EC_PARAMS, value: ED25519_PARAMS_NAME });
  } else {
    pub.push(
      { type: pkcs11js.CKA_MODULUS_BITS, value: RSA_BITS },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([0x01, 0x00, 0x01]) },
    );
  }
  return { pub, priv };
}

export function counterTemplate(value: bigint): Template {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(value);
  return [
    ...common(LABELS.counter),
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_APPLICATION, value: APPLICATION },
    { type: pkcs11js.CKA_VALUE, value: bytes },
  ];
}
