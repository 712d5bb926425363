import pkcs11js from 'pkcs11js';
import { VaultCode, VaultError } from '../vault.ts';

/** pkcs11js 2.1.7 has no names for the PKCS#11 3.0 EdDSA values and the GCM value we rely on. */
export const CKK_EC_EDWARDS = 0x40;
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;
export const CKM_AES_GCM = 0x1087;

/** Every mechanism the vault uses, with what for (shown when one is missing). */
export const REQUIRED_MECHANISMS: readonly { name: string; code: number; usedFor: string }[] = [
  {
    name: 'CKM_EC_EDWARDS_KEY_PAIR_GEN',
    code: CKM_EC_EDWARDS_KEY_PAIR_GEN,
    usedFor: 'generating the Ed25519 cross-signing master key',
  },
  { name: 'CKM_EDDSA', code: CKM_EDDSA, usedFor: 'cross-signing signatures' },
  { name: 'CKM_AES_KEY_GEN', code: pkcs11js.CKM_AES_KEY_GEN, usedFor: 'generating the store KEK' },
  { name: 'CKM_AES_GCM', code: CKM_AES_GCM, usedFor: 'encrypting the store key under the KEK' },
  {
    name: 'CKM_SHA512_RSA_PKCS_PSS',
    code: pkcs11js.CKM_SHA512_RSA_PKCS_PSS,
    usedFor: 'X.509 identity signatures',
  },
  {
    name: 'CKM_RSA_PKCS_KEY_PAIR_GEN',
    code: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN,
    usedFor: 'generating the X.509 identity key',
  },
  {
    name: 'CKM_GENERIC_SECRET_KEY_GEN',
    code: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN,
    usedFor: "generating the counter's MAC key",
  },
  {
    name: 'CKM_SHA256_HMAC',
    code: pkcs11js.CKM_SHA256_HMAC,
    usedFor: 'authenticating the counter objects',
  },
];

export interface MechanismCheck {
  found: string[];
  missing: string[];
}

/** Pure, so a token lacking a mechanism can be simulated without one. */
export function checkMechanisms(available: readonly number[]): MechanismCheck {
  const have = new Set(available);
  const found: string[] = [];
  const missing: string[] = [];
  for (const m of REQUIRED_MECHANISMS) (have.has(m.code) ? found : missing).push(m.name);
  return { found, missing };
}

export function requireMechanisms(check: MechanismCheck): void {
  if (check.missing.length === 0) return;
  const details = REQUIRED_MECHANISMS.filter((m) => check.missing.includes(m.name))
    .map((m) => `${m.name} (0x${m.code.toString(16)}, for ${m.usedFor})`)
    .join(', ');
  throw new VaultError(
    VaultCode.MechanismMissing,
    `the token lacks ${details}; use a PKCS#11 module that supports ${check.missing.length === 1 ? 'it' : 'them'}`,
  );
}
