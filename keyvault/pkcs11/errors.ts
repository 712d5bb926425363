import pkcs11js from 'pkcs11js';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * Turning what pkcs11js throws into VaultErrors. pkcs11js throws Pkcs11Error (with `code`) from
 * most calls but a plain Error whose message is "CKR_NAME:number" from a few (C_SetAttributeValue),
 * so both shapes are read. Nothing of the original error (its native stack, its message) is
 * passed on: callers get a code and a readable CKR name only.
 */

const ckrNames = new Map<number, string>([
  // PKCS#11 2.40/3.0 values pkcs11js has no names for.
  [0x1b, 'CKR_ACTION_PROHIBITED'],
  [0x140, 'CKR_CURVE_NOT_SUPPORTED'],
]);
for (const [name, value] of Object.entries(pkcs11js)) {
  if (name.startsWith('CKR_') && typeof value === 'number' && !ckrNames.has(value)) {
    ckrNames.set(value, name);
  }
}

/** The CKR return value a PKCS#11 call failed with, or undefined for any other failure. */
export function ckrOf(e: unknown): number | undefined {
  if (!(e instanceof Error)) return undefined;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'number' && code > 0) return code;
  const match = /\bCKR_\w+:(\d+)/.exec(e.message);
  return match ? Number(match[1]) : undefined;
}

export function ckrName(code: number): string {
  return ckrNames.get(code) ?? `CKR_0x${code.toString(16).padStart(8, '0')}`;
}

/** Failures after which the session or the whole module must be set up again. */
const RECONNECT = new Set<number>([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
]);

export function needsReconnect(e: unknown): boolean {
  const code = ckrOf(e);
  return code !== undefined && RECONNECT.has(code);
}

/** A VaultError for `what` having failed; VaultErrors pass through unchanged. */
export function toVaultError(e: unknown, what: string): VaultError {
  if (e instanceof VaultError) return e;
  const code = ckrOf(e);
  if (code === undefined) {
    return new VaultError(VaultCode.HardwareError, `${what} failed: unexpected error`);
  }
  const name = ckrName(code);
  switch (code) {
    case pkcs11js.CKR_PIN_INCORRECT:
    case pkcs11js.CKR_PIN_INVALID:
    case pkcs11js.CKR_PIN_LEN_RANGE:
      return new VaultError(
        VaultCode.WrongPin,
        `${what} failed: the token rejected the PIN (${name})`,
      );
    case pkcs11js.CKR_PIN_EXPIRED:
      return new VaultError(
        VaultCode.WrongPin,
        `${what} failed: the user PIN has expired; set a new one with the token's tools (${name})`,
      );
    case pkcs11js.CKR_PIN_LOCKED:
      return new VaultError(
        VaultCode.PinLocked,
        `${what} failed: the user PIN is locked; the security officer must reset it (${name})`,
      );
    case pkcs11js.CKR_USER_PIN_NOT_INITIALIZED:
      return new VaultError(
        VaultCode.Config,
        `${what} failed: the token has no user PIN yet; initialise it first (${name})`,
      );
    case pkcs11js.CKR_TOKEN_NOT_PRESENT:
    case pkcs11js.CKR_DEVICE_REMOVED:
    case pkcs11js.CKR_SLOT_ID_INVALID:
      return new VaultError(VaultCode.TokenNotFound, `${what} failed: the token is gone (${name})`);
    case pkcs11js.CKR_MECHANISM_INVALID:
      return new VaultError(
        VaultCode.MechanismMissing,
        `${what} failed: the token does not support a needed mechanism (${name})`,
      );
    default:
      return new VaultError(VaultCode.HardwareError, `${what} failed: ${name}`);
  }
}
