import pkcs11js, { type PKCS11 } from 'pkcs11js';
import { VaultCode, VaultError } from '../vault.ts';
import { ckrOf } from './errors.ts';
import {
  APPLICATION,
  LABELS,
  assertHardwareBound,
  counterLabel,
  counterMacTemplate,
  counterTemplate,
  findObjects,
  findVaultObject,
  readAttributes,
} from './objects.ts';
import type { VaultScope } from './vault-id.ts';

type Handle = Buffer;

/**
 * The anti-rollback counter of one vault, as CKO_DATA objects labelled `mte-counter-<vault id>`.
 * Each holds a 64-byte record:
 *
 *   "mte-ctr1" (8) ‖ vault id (16) ‖ value, u64 big-endian (8) ‖ HMAC-SHA256 of the first 32 (32)
 *
 * The MAC key (`mte-counter-mac`, CKA_ID = vault id ‖ 04) is generated inside the token and
 * never leaves it. Before every read and increment the vault checks every object under its
 * label: private, a token object, our application, our vault id, a MAC that verifies, and
 * together one value (or one unfinished increment: two consecutive values). Anything else is
 * VAULT_COUNTER_FOREIGN, never adopted and never "repaired".
 *
 * SoftHSM makes a data object's CKA_VALUE read-only once created, so an increment writes a new
 * object first and then destroys the old ones; a crash in between leaves two consecutive
 * values, and the higher wins.
 */
export const COUNTER_GUARANTEE =
  'weaker than a TPM NV counter: the PKCS#11 counter is an ordinary token data object, authenticated by an HMAC key that never leaves the token, so another vault or a stray object cannot pass for it; but anyone with the user PIN can use that key to write any value or delete the counter, and restoring a backup of the token rolls it back';

const MAX = 0xffff_ffff_ffff_ffffn;
const MAGIC = Buffer.from('mte-ctr1', 'ascii');
const BODY_BYTES = MAGIC.length + 16 + 8;
const TAG_BYTES = 32;
export const RECORD_BYTES = BODY_BYTES + TAG_BYTES;
const HMAC = { mechanism: pkcs11js.CKM_SHA256_HMAC };

interface CounterObject {
  handle: Handle;
  value: bigint;
}

function foreign(scope: VaultScope, why: string): VaultError {
  return new VaultError(
    VaultCode.CounterForeign,
    `the counter on the token is not the one vault ${scope.hex} created: ${why}; the vault will not use it (remove the stray objects, or provision a new vault)`,
  );
}

function body(scope: VaultScope, value: bigint): Buffer {
  const out = Buffer.alloc(BODY_BYTES);
  MAGIC.copy(out, 0);
  scope.id.copy(out, MAGIC.length);
  out.writeBigUInt64BE(value, MAGIC.length + 16);
  return out;
}

function record(p11: PKCS11, session: Handle, key: Handle, scope: VaultScope, value: bigint) {
  const data = body(scope, value);
  p11.C_SignInit(session, HMAC, key);
  const tag = p11.C_Sign(session, data, Buffer.alloc(TAG_BYTES));
  if (tag.length !== TAG_BYTES) {
    throw new VaultError(VaultCode.HardwareError, 'the token returned a short HMAC');
  }
  return Buffer.concat([data, tag]);
}

function macValid(p11: PKCS11, session: Handle, key: Handle, data: Buffer, tag: Buffer): boolean {
  p11.C_VerifyInit(session, HMAC, key);
  try {
    return p11.C_Verify(session, data, tag);
  } catch (e) {
    const code = ckrOf(e);
    if (code === pkcs11js.CKR_SIGNATURE_INVALID || code === pkcs11js.CKR_SIGNATURE_LEN_RANGE) {
      return false;
    }
    throw e;
  }
}

/** The vault's counter MAC key, checked to be an HMAC key generated inside the token. */
function findMacKey(p11: PKCS11, session: Handle, scope: VaultScope): Handle | undefined {
  let key: Handle | undefined;
  try {
    key = findVaultObject(p11, session, scope, pkcs11js.CKO_SECRET_KEY, 'counter-mac');
    if (key) {
      assertHardwareBound(p11, session, key, LABELS.counterMac, pkcs11js.CKK_GENERIC_SECRET);
    }
  } catch (e) {
    if (e instanceof VaultError && e.code === VaultCode.ForeignOrTampered) {
      throw foreign(scope, e.message);
    }
    throw e;
  }
  return key;
}

const isTrue = (b: Buffer | undefined): boolean => b?.[0] === 1;

/** Every counter object of the vault, each checked, and its MAC key; throws CounterForeign. */
function counterObjects(
  p11: PKCS11,
  session: Handle,
  scope: VaultScope,
): { objects: CounterObject[]; macKey: Handle | undefined } {
  const macKey = findMacKey(p11, session, scope);
  const handles = findObjects(p11, session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_LABEL, value: counterLabel(scope) },
  ]);
  if (handles.length === 0) return { objects: [], macKey };
  if (!macKey) {
    throw foreign(
      scope,
      `${handles.length === 1 ? 'an object carries' : `${handles.length} objects carry`} its label, but its ${LABELS.counterMac} key is not on the token`,
    );
  }
  const objects = handles.map((handle) => {
    const [value, application, isPrivate, isToken] = readAttributes(p11, session, handle, [
      pkcs11js.CKA_VALUE,
      pkcs11js.CKA_APPLICATION,
      pkcs11js.CKA_PRIVATE,
      pkcs11js.CKA_TOKEN,
    ]);
    if (application?.toString('utf8') !== APPLICATION || !isTrue(isPrivate) || !isTrue(isToken)) {
      throw foreign(
        scope,
        'an object under its label is public, a session object, or of another application',
      );
    }
    if (
      value?.length !== RECORD_BYTES ||
      !value.subarray(0, MAGIC.length).equals(MAGIC) ||
      !value.subarray(MAGIC.length, MAGIC.length + 16).equals(scope.id)
    ) {
      throw foreign(
        scope,
        'an object under its label does not hold a counter record of this vault',
      );
    }
    if (
      !macValid(p11, session, macKey, value.subarray(0, BODY_BYTES), value.subarray(BODY_BYTES))
    ) {
      throw foreign(
        scope,
        "an object under its label does not carry this vault's MAC (someone else wrote it)",
      );
    }
    return { handle, value: value.readBigUInt64BE(MAGIC.length + 16) };
  });
  const values = objects.map((o) => o.value).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const [low, high] = values;
  const oneChain =
    values.length === 1 || (values.length === 2 && low !== undefined && high === low + 1n);
  if (!oneChain) {
    throw foreign(
      scope,
      `the token holds ${values.length} counter objects for it (values ${values.join(', ')}), not one value or one unfinished increment: some were copied or restored`,
    );
  }
  return { objects, macKey };
}

function highest(objects: CounterObject[]): bigint {
  return objects.map((o) => o.value).reduce((a, b) => (a > b ? a : b));
}

/** The counter's value, or undefined when there is no counter object (yet, or any more). */
export function readCounter(p11: PKCS11, session: Handle, scope: VaultScope): bigint | undefined {
  const { objects } = counterObjects(p11, session, scope);
  return objects.length === 0 ? undefined : highest(objects);
}

/**
 * Creates the counter at 0, and its MAC key first unless a good one is there (an init that
 * crashed in between). Returns false, creating nothing, when the counter exists.
 */
export function createCounter(p11: PKCS11, session: Handle, scope: VaultScope): boolean {
  const { objects, macKey } = counterObjects(p11, session, scope);
  if (objects.length > 0) return false;
  const key =
    macKey ??
    p11.C_GenerateKey(
      session,
      { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN },
      counterMacTemplate(scope),
    );
  p11.C_CreateObject(session, counterTemplate(scope, record(p11, session, key, scope, 0n)));
  return true;
}

/** Increments; undefined when there is no counter (the caller says why). */
export function incrementCounter(
  p11: PKCS11,
  session: Handle,
  scope: VaultScope,
): bigint | undefined {
  const { objects, macKey } = counterObjects(p11, session, scope);
  if (objects.length === 0 || !macKey) return undefined;
  const current = highest(objects);
  if (current === MAX) throw new VaultError(VaultCode.HardwareError, 'the counter is exhausted');
  const next = current + 1n;
  p11.C_CreateObject(session, counterTemplate(scope, record(p11, session, macKey, scope, next)));
  // The new object is durable before any old one goes, so a crash never loses the increment.
  for (const old of objects) p11.C_DestroyObject(session, old.handle);
  return next;
}

/**
 * No counter object. Before the store key exists that is an unfinished `vault init`; after, the
 * counter this vault made was deleted or the token restored from an older backup, and a new one
 * at 0 would be a rollback, so provisioning will not make one.
 */
export function counterMissing(scope: VaultScope, storeKeyExists: boolean): VaultError {
  return storeKeyExists
    ? foreign(
        scope,
        'the counter it created is no longer on the token (deleted, or the token was restored from an older backup), and a new one would roll it back',
      )
    : new VaultError(VaultCode.NotProvisioned, 'the counter does not exist; run "vault init"');
}
