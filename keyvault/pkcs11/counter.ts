import pkcs11js, { type PKCS11 } from 'pkcs11js';
import { VaultCode, VaultError } from '../vault.ts';
import { APPLICATION, LABELS, counterTemplate, findObjects, readAttributes } from './objects.ts';

type Handle = Buffer;

/**
 * The anti-rollback counter as CKO_DATA objects holding a u64 (big-endian). SoftHSM makes a data
 * object's CKA_VALUE read-only once created, so an increment writes a new object first and then
 * destroys the old ones; a crash in between leaves two, and the highest wins. Strictly
 * increasing as seen by this process; nothing stops a PIN holder or a token restore from
 * rolling it back (see COUNTER_GUARANTEE).
 */
export const COUNTER_GUARANTEE =
  'weaker than a TPM NV counter: the PKCS#11 counter is an ordinary token data object, so anyone with the user PIN can rewrite it, and restoring a backup of the token rolls it back';

const MAX = 0xffff_ffff_ffff_ffffn;

function counterObjects(p11: PKCS11, session: Handle): { handle: Handle; value: bigint }[] {
  const handles = findObjects(p11, session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_LABEL, value: LABELS.counter },
    { type: pkcs11js.CKA_APPLICATION, value: APPLICATION },
  ]);
  return handles.map((handle) => {
    const [value] = readAttributes(p11, session, handle, [pkcs11js.CKA_VALUE]);
    if (value?.length !== 8) {
      throw new VaultError(
        VaultCode.ForeignOrTampered,
        `the ${LABELS.counter} object does not hold an 8-byte value`,
      );
    }
    return { handle, value: value.readBigUInt64BE() };
  });
}

/** The counter's value, or undefined when it was never provisioned. */
export function readCounter(p11: PKCS11, session: Handle): bigint | undefined {
  const values = counterObjects(p11, session).map((o) => o.value);
  return values.length === 0 ? undefined : values.reduce((a, b) => (a > b ? a : b));
}

export function createCounter(p11: PKCS11, session: Handle): void {
  p11.C_CreateObject(session, counterTemplate(0n));
}

export function incrementCounter(p11: PKCS11, session: Handle): bigint {
  const objects = counterObjects(p11, session);
  if (objects.length === 0) {
    throw new VaultError(VaultCode.NotProvisioned, 'the counter does not exist; run "vault init"');
  }
  const current = objects.map((o) => o.value).reduce((a, b) => (a > b ? a : b));
  if (current === MAX) throw new VaultError(VaultCode.HardwareError, 'the counter is exhausted');
  const next = current + 1n;
  p11.C_CreateObject(session, counterTemplate(next));
  // The new object is durable before any old one goes, so a crash never loses the increment.
  for (const old of objects) p11.C_DestroyObject(session, old.handle);
  return next;
}
