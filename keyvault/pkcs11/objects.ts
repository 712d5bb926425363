import pkcs11js, { type PKCS11, type Template } from 'pkcs11js';
import { VaultCode, VaultError, type SigningPurpose } from '../vault.ts';
import { CKK_EC_EDWARDS } from './mechanisms.ts';
import type { VaultScope } from './vault-id.ts';

type Handle = Buffer;

/**
 * The token objects a vault owns. Several vaults may share a token, so each key carries its
 * vault's id: CKA_ID is the 16-byte vault id followed by one byte naming the object's role, and
 * a key is found by CKA_CLASS + CKA_LABEL + CKA_ID. Data objects cannot have a CKA_ID, so the
 * counter's label carries the vault id instead (and its value is authenticated, counter.ts).
 * An object under our label without our id is another vault's, and is never touched.
 *
 * | label                      | CKA_ID         | objects                                      |
 * |----------------------------|----------------|----------------------------------------------|
 * | mte-store-kek              | id ‖ 01        | AES-256 secret key (encrypts the store key)  |
 * | mte-cross-signing-master   | id ‖ 02        | Ed25519 private + public key                 |
 * | mte-x509-identity          | id ‖ 03        | RSA-3072 private + public key                |
 * | mte-counter-mac            | id ‖ 04        | HMAC-SHA256 key (authenticates the counter)  |
 * | mte-counter-<id hex>       | (none: data)   | CKO_DATA, the counter record (counter.ts)    |
 */
export const LABELS = {
  storeKek: 'mte-store-kek',
  counterMac: 'mte-counter-mac',
  /** Followed by the vault id in hex. */
  counterPrefix: 'mte-counter-',
} as const;

export const PURPOSE_LABEL: Record<SigningPurpose, string> = {
  'cross-signing-master': 'mte-cross-signing-master',
  'x509-identity': 'mte-x509-identity',
};

export const PURPOSE_KEY_TYPE: Record<SigningPurpose, number> = {
  'cross-signing-master': CKK_EC_EDWARDS,
  'x509-identity': pkcs11js.CKK_RSA,
};

/** What each of a vault's keys is for: the last byte of its CKA_ID. */
export type ObjectRole = 'store-kek' | SigningPurpose | 'counter-mac';

const ROLE: Record<ObjectRole, { tag: number; label: string }> = {
  'store-kek': { tag: 0x01, label: LABELS.storeKek },
  'cross-signing-master': { tag: 0x02, label: PURPOSE_LABEL['cross-signing-master'] },
  'x509-identity': { tag: 0x03, label: PURPOSE_LABEL['x509-identity'] },
  'counter-mac': { tag: 0x04, label: LABELS.counterMac },
};

export function roleLabel(role: ObjectRole): string {
  return ROLE[role].label;
}

/** CKA_ID of the vault's key for `role`: vault id ‖ role byte. */
export function objectId(scope: VaultScope, role: ObjectRole): Buffer {
  return Buffer.concat([scope.id, Buffer.from([ROLE[role].tag])]);
}

/** The counter's label: the vault id is in it, since data objects have no CKA_ID. */
export function counterLabel(scope: VaultScope): string {
  return `${LABELS.counterPrefix}${scope.hex}`;
}

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

/**
 * The vault's one object of `objectClass` for `role` (label and CKA_ID both match), or
 * undefined. Two of them mean one was made by someone else with our id: refused, never guessed.
 */
export function findVaultObject(
  p11: PKCS11,
  session: Handle,
  scope: VaultScope,
  objectClass: number,
  role: ObjectRole,
): Handle | undefined {
  const label = roleLabel(role);
  const found = findObjects(p11, session, [
    { type: pkcs11js.CKA_CLASS, value: objectClass },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: objectId(scope, role) },
  ]);
  if (found.length > 1) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the token holds ${found.length} objects labelled ${label} with this vault's id (${scope.hex}); all but one were made by someone else, and the vault will not guess which is its own`,
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

/** Keys: the role's label, and the vault's id in CKA_ID. Data objects have no CKA_ID. */
const keyCommon = (scope: VaultScope, role: ObjectRole): Template => [
  ...common(roleLabel(role)),
  { type: pkcs11js.CKA_ID, value: objectId(scope, role) },
];

/** Secret and private keys: usable inside the token only, by the logged-in user only. */
const hidden: Template = [
  { type: pkcs11js.CKA_PRIVATE, value: true },
  { type: pkcs11js.CKA_SENSITIVE, value: true },
  { type: pkcs11js.CKA_EXTRACTABLE, value: false },
  { type: pkcs11js.CKA_DERIVE, value: false },
];

export function kekTemplate(scope: VaultScope): Template {
  return [
    ...keyCommon(scope, 'store-kek'),
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

export function keyPairTemplates(
  purpose: SigningPurpose,
  scope: VaultScope,
): { pub: Template; priv: Template } {
  const keyType = PURPOSE_KEY_TYPE[purpose];
  const pub: Template = [
    ...keyCommon(scope, purpose),
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: keyType },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_VERIFY, value: true },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
  ];
  const priv: Template = [
    ...keyCommon(scope, purpose),
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

/** The counter's MAC key: HMAC-SHA256 inside the token, sign/verify only. */
export function counterMacTemplate(scope: VaultScope): Template {
  return [
    ...keyCommon(scope, 'counter-mac'),
    ...hidden,
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_VERIFY, value: true },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
  ];
}

/** One counter object: private, read-only, `record` as its value (counter.ts). */
export function counterTemplate(scope: VaultScope, record: Buffer): Template {
  return [
    ...common(counterLabel(scope)),
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_APPLICATION, value: APPLICATION },
    { type: pkcs11js.CKA_VALUE, value: record },
  ];
}
