import pkcs11js, { type PKCS11 } from 'pkcs11js';
import {
  SIGNING_PURPOSES,
  VaultCode,
  VaultError,
  type ProvisionReport,
  type SigningPurpose,
} from '../vault.ts';
import { createCounter, readCounter } from './counter.ts';
import { CKM_EC_EDWARDS_KEY_PAIR_GEN } from './mechanisms.ts';
import {
  LABELS,
  PURPOSE_KEY_TYPE,
  PURPOSE_LABEL,
  assertHardwareBound,
  findOne,
  kekTemplate,
  keyPairTemplates,
} from './objects.ts';
import { kekMissing, sealNewStoreKey, unsealStoreKey } from './store-key.ts';
import { readStoreKeyFile, writeStoreKeyFile } from './store-key-file.ts';

type Handle = Buffer;

/** Finds the KEK and checks it is an AES key that never left the token. */
export function findKek(p11: PKCS11, session: Handle): Handle | undefined {
  const kek = findOne(p11, session, pkcs11js.CKO_SECRET_KEY, LABELS.storeKek);
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
 */
export async function provision(
  p11: PKCS11,
  session: Handle,
  tokenSerial: string,
  stateDir: string,
): Promise<ProvisionReport> {
  const report: ProvisionReport = { created: [], kept: [] };
  const file = await readStoreKeyFile(stateDir);
  if (file) checkTokenSerial(file.tokenSerial, tokenSerial);

  let kek = findKek(p11, session);
  if (kek) {
    report.kept.push('store-kek');
  } else if (file) {
    // Making a new KEK would strand the file; provisioning never overwrites it.
    throw kekMissing(stateDir);
  } else {
    kek = p11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, kekTemplate());
    report.created.push('store-kek');
  }

  if (file) {
    // Kept only if it really opens here; the plaintext is wiped at once.
    unsealStoreKey(p11, session, kek, file).fill(0);
    report.kept.push('store-key');
  } else {
    const sealed = sealNewStoreKey(p11, session, kek, tokenSerial);
    const written = await writeStoreKeyFile(stateDir, sealed);
    (written ? report.created : report.kept).push('store-key');
  }

  for (const purpose of SIGNING_PURPOSES) {
    const created = await provisionKeyPair(p11, session, purpose);
    (created ? report.created : report.kept).push(purpose);
  }

  if (readCounter(p11, session) === undefined) {
    createCounter(p11, session);
    report.created.push('counter');
  } else {
    report.kept.push('counter');
  }
  return report;
}

/** Returns true when it generated the pair, false when a good one was there. */
async function provisionKeyPair(
  p11: PKCS11,
  session: Handle,
  purpose: SigningPurpose,
): Promise<boolean> {
  const label = PURPOSE_LABEL[purpose];
  const priv = findOne(p11, session, pkcs11js.CKO_PRIVATE_KEY, label);
  const pub = findOne(p11, session, pkcs11js.CKO_PUBLIC_KEY, label);
  if (priv && pub) {
    assertHardwareBound(p11, session, priv, label, PURPOSE_KEY_TYPE[purpose]);
    return false;
  }
  if (priv || pub) {
    throw new VaultError(
      VaultCode.ForeignOrTampered,
      `the token holds only the ${priv ? 'private' : 'public'} half of ${label}; remove it or restore the other half (provisioning will not replace it)`,
    );
  }
  const { pub: pubTemplate, priv: privTemplate } = keyPairTemplates(purpose);
  const mechanism =
    purpose === 'cross-signing-master'
      ? CKM_EC_EDWARDS_KEY_PAIR_GEN
      : pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN;
  // The async variant runs in libuv's pool: RSA-3072 generation takes seconds.
  await p11.C_GenerateKeyPairAsync(session, { mechanism }, pubTemplate, privTemplate);
  return true;
}
