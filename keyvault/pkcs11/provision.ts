import pkcs11js, { type PKCS11 } from 'pkcs11js';
import {
  SIGNING_PURPOSES,
  VaultCode,
  VaultError,
  type ProvisionReport,
  type SigningPurpose,
} from '../vault.ts';
import { counterMissing, createCounter, readCounter } from './counter.ts';
import { CKM_EC_EDWARDS_KEY_PAIR_GEN } from './mechanisms.ts';
import {
  LABELS,
  PURPOSE_KEY_TYPE,
  PURPOSE_LABEL,
  assertHardwareBound,
  findVaultObject,
  kekTemplate,
  keyPairTemplates,
} from './objects.ts';
import { kekMissing, orphanStoreKeyFile, sealNewStoreKey, unsealStoreKey } from './store-key.ts';
import { readStoreKeyFile, writeStoreKeyFile } from './store-key-file.ts';
import {
  VAULT_ID_BYTES,
  checkIdentityToken,
  readVaultIdentity,
  scopeOf,
  writeVaultIdentity,
  type VaultIdentity,
  type VaultScope,
} from './vault-id.ts';

type Handle = Buffer;

/** Finds the vault's KEK and checks it is an AES key that never left the token. */
export function findKek(p11: PKCS11, session: Handle, scope: VaultScope): Handle | undefined {
  const kek = findVaultObject(p11, session, scope, pkcs11js.CKO_SECRET_KEY, 'store-kek');
  if (kek) assertHardwareBound(p11, session, kek, LABELS.storeKek, pkcs11js.CKK_AES);
  return kek;
}

/** Whether a store-key file belongs to this token, by the serial it records. */
export function checkTokenSerial(recorded: string, actual: string): void {
  if (recorded !== actual) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the store-key file was made for the token with serial ${recorded}, but this token's serial is ${actual}: it belongs to another token`,
    );
  }
}

/**
 * Creates what is missing, keeps what exists, and never replaces anything: an existing key is
 * kept even when something else is missing, and a half-present pair or a store-key file without
 * its KEK stops provisioning rather than being "repaired" into a different key.
 *
 * Order: the vault's identity (a fresh random id, so nothing on the token can already carry
 * it), the counter, the KEK and the store key, the signing keys. The counter comes before the
 * store key, so a vault with a store-key file and no counter lost its counter, and provisioning
 * refuses to start a new one at 0.
 */
export async function provision(
  p11: PKCS11,
  session: Handle,
  tokenSerial: string,
  stateDir: string,
): Promise<{ report: ProvisionReport; identity: VaultIdentity }> {
  const report: ProvisionReport = { created: [], kept: [] };
  const file = await readStoreKeyFile(stateDir);
  if (file) checkTokenSerial(file.tokenSerial, tokenSerial);

  let identity = await readVaultIdentity(stateDir);
  if (identity) {
    checkIdentityToken(identity, stateDir, tokenSerial);
    report.kept.push('vault-id');
  } else {
    if (file) throw orphanStoreKeyFile(stateDir);
    const id = p11.C_GenerateRandom(session, Buffer.alloc(VAULT_ID_BYTES));
    const fresh = { ...scopeOf(id), tokenSerial };
    if (await writeVaultIdentity(stateDir, fresh)) {
      identity = fresh;
      report.created.push('vault-id');
    } else {
      // Another init got there first: use its identity, never overwrite it.
      identity = await readVaultIdentity(stateDir);
      if (!identity)
        throw new VaultError(VaultCode.Config, `cannot read the vault identity in ${stateDir}`);
      checkIdentityToken(identity, stateDir, tokenSerial);
      report.kept.push('vault-id');
    }
  }
  const scope: VaultScope = identity;

  if (readCounter(p11, session, scope) !== undefined) {
    report.kept.push('counter');
  } else if (file) {
    throw counterMissing(scope, true);
  } else {
    createCounter(p11, session, scope);
    report.created.push('counter');
  }

  let kek = findKek(p11, session, scope);
  if (kek) {
    report.kept.push('store-kek');
  } else if (file) {
    // Making a new KEK would strand the file; provisioning never overwrites it.
    throw kekMissing(stateDir);
  } else {
    kek = p11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, kekTemplate(scope));
    report.created.push('store-kek');
  }

  if (file) {
    // Kept only if it really opens here; the plaintext is wiped at once.
    unsealStoreKey(p11, session, kek, file, scope).fill(0);
    report.kept.push('store-key');
  } else {
    const sealed = sealNewStoreKey(p11, session, kek, tokenSerial, scope);
    const written = await writeStoreKeyFile(stateDir, sealed);
    (written ? report.created : report.kept).push('store-key');
  }

  for (const purpose of SIGNING_PURPOSES) {
    const created = await provisionKeyPair(p11, session, scope, purpose);
    (created ? report.created : report.kept).push(purpose);
  }
  return { report, identity };
}

/** Returns true when it generated the pair, false when a good one was there. */
async function provisionKeyPair(
  p11: PKCS11,
  session: Handle,
  scope: VaultScope,
  purpose: SigningPurpose,
): Promise<boolean> {
  const label = PURPOSE_LABEL[purpose];
  const priv = findVaultObject(p11, session, scope, pkcs11js.CKO_PRIVATE_KEY, purpose);
  const pub = findVaultObject(p11, session, scope, pkcs11js.CKO_PUBLIC_KEY, purpose);
  if (priv && pub) {
    assertHardwareBound(p11, session, priv, label, PURPOSE_KEY_TYPE[purpose]);
    return false;
  }
  if (priv || pub) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the token holds only the ${priv ? 'private' : 'public'} half of ${label} for this vault; remove it or restore the other half (provisioning will not replace it)`,
    );
  }
  const { pub: pubTemplate, priv: privTemplate } = keyPairTemplates(purpose, scope);
  const mechanism =
    purpose === 'cross-signing-master'
      ? CKM_EC_EDWARDS_KEY_PAIR_GEN
      : pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN;
  // The async variant runs in libuv's pool: RSA-3072 generation takes seconds.
  await p11.C_GenerateKeyPairAsync(session, { mechanism }, pubTemplate, privTemplate);
  return true;
}
