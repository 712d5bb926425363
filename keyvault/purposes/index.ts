import type { VaultOwner } from '../config.ts';
import {
  type DoctorCheck,
  SIGNING_PURPOSES,
  type SigningPurpose,
  type VaultBackend,
  VaultCode,
  VaultError,
} from '../vault.ts';
import { crossSigningMasterInput } from './cross-signing.ts';
import type { PurposeContext } from './key-object.ts';
import { x509IdentityInput } from './x509.ts';

/**
 * Purpose-bound signing: each signing key signs only the inputs its purpose names,
 * checked here, in the vault, before the backend is asked. A compromised endpoint holding the
 * vault's channel can still ask for the signatures the Matrix flows need, and nothing else: not
 * a new self-signing key for another user, not a master key the homeserver made up, not
 * arbitrary bytes. Refusals are VAULT_SIGN_REFUSED and name the rule broken, never the bytes.
 * What each purpose accepts, and why: README.md beside this file.
 *
 * Applied once for every backend, at the end of openVault (keyvault/open.ts): the vault
 * command's `serve` opens its vault there, so every sign request that arrives over the RPC
 * passes through `purposeBound`. The backends' own open functions return unchecked vaults for
 * their tests and for provisioning; nothing serves those.
 */
export type PurposeCheck = (message: Uint8Array, ctx: PurposeContext) => Promise<Uint8Array>;

/** Every purpose's check. A purpose without one signs nothing. */
export const PURPOSE_CHECKS = {
  'cross-signing-master': crossSigningMasterInput,
  'x509-identity': x509IdentityInput,
} as const satisfies Record<SigningPurpose, PurposeCheck>;

export const OWNER_MISSING =
  'set owner.userId in the vault config (the Matrix user whose keys this vault signs): without it the vault signs nothing';

const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function ed25519Base64(spki: Uint8Array): string {
  const der = Buffer.from(spki);
  if (der.length !== 44 || !der.subarray(0, 12).equals(ED25519_SPKI_PREFIX)) {
    throw new VaultError(
      VaultCode.HardwareError,
      'the cross-signing-master public key is not an Ed25519 SubjectPublicKeyInfo',
    );
  }
  return der.subarray(12).toString('base64').replace(/=+$/, '');
}

/**
 * The bytes to sign for `purpose`, or VAULT_SIGN_REFUSED (VAULT_CONFIG when the config names no
 * owner). Returns the vault's own re-serialisation, so what is signed is what was checked even
 * if the caller's buffer changes meanwhile.
 */
export async function checkSignRequest(
  purpose: SigningPurpose,
  message: Uint8Array,
  owner: VaultOwner | undefined,
  masterPublic: () => Promise<string>,
): Promise<Uint8Array> {
  // A copy before the first await: an in-process caller cannot change it under the check.
  const bytes = Uint8Array.from(message);
  if (!(SIGNING_PURPOSES as readonly string[]).includes(purpose)) {
    throw new VaultError(VaultCode.SignRefused, 'refused to sign: not a signing purpose');
  }
  if (!owner) throw new VaultError(VaultCode.Config, `refused to sign: ${OWNER_MISSING}`);
  // `purpose` is one of SIGNING_PURPOSES (checked above), and each has its check.
  const check: PurposeCheck = PURPOSE_CHECKS[purpose];
  return check(bytes, { owner: owner.userId, masterPublic });
}

/**
 * `inner` with purpose-bound `sign`; every other operation passes through unchanged, but for a
 * status warning and a doctor check when the config names no owner.
 */
export function purposeBound(inner: VaultBackend, owner: VaultOwner | undefined): VaultBackend {
  // Keys are never replaced (provisioning keeps what exists), so one answer holds for the
  // vault's lifetime; a failure (not provisioned yet) is asked again next time.
  let master: Promise<string> | undefined;
  const masterPublic = (): Promise<string> => {
    master ??= inner.publicKey('cross-signing-master').then(
      (info) => ed25519Base64(info.spki),
      (e: unknown) => {
        master = undefined;
        throw e;
      },
    );
    return master;
  };
  const ownerCheck: DoctorCheck = {
    check: 'the vault config names its owner (owner.userId)',
    ok: owner !== undefined,
    detail: owner ? '' : OWNER_MISSING,
  };
  return {
    backend: inner.backend,
    storeKey: () => inner.storeKey(),
    counterRead: () => inner.counterRead(),
    counterIncrement: () => inner.counterIncrement(),
    publicKey: (purpose) => inner.publicKey(purpose),
    sign: async (purpose, message) =>
      inner.sign(purpose, await checkSignRequest(purpose, message, owner, masterPublic)),
    quote: (data, selection) => inner.quote(data, selection),
    attestationIdentity: () => inner.attestationIdentity(),
    activateCredential: (request) => inner.activateCredential(request),
    random: (n) => inner.random(n),
    backupKey: () => inner.backupKey(),
    backupDecrypt: (publicKey, sessions) => inner.backupDecrypt(publicKey, sessions),
    sealSecret: (secret) => inner.sealSecret(secret),
    unsealSecret: (sealed) => inner.unsealSecret(sealed),
    status: async () => {
      const status = await inner.status();
      return owner ? status : { ...status, warnings: [...status.warnings, OWNER_MISSING] };
    },
    provision: () => inner.provision(),
    doctor: async () => [...(await inner.doctor()), ownerCheck],
    close: () => inner.close(),
  };
}
