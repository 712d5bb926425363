import {
  CollectStrategy,
  DecryptionSettings,
  EncryptionSettings,
  TrustRequirement,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import type { TrustSettings } from '../../policy/trust.ts';

export type { DecryptionTrust, SharingStrategy, TrustSettings } from '../../policy/trust.ts';

/**
 * Who gets room keys and whose messages we decrypt. The default is MSC4153 ("exclude insecure
 * devices"), as Element X ships it: room keys only to cross-signed devices of their owner's
 * identity, and messages only from cross-signed (or legacy, never cross-signed) senders.
 * Issue 5's policy replaces these per room; the strategy names are the policy's vocabulary.
 */
export const DEFAULT_TRUST: TrustSettings = {
  sharing: 'identity-based',
  decryption: 'cross-signed-or-legacy',
};

export function encryptionSettings(settings: TrustSettings): EncryptionSettings {
  const s = new EncryptionSettings();
  s.sharingStrategy = {
    'identity-based': () => CollectStrategy.identityBasedStrategy(),
    'verified-devices-only': () => CollectStrategy.onlyTrustedDevices(),
    'all-devices': () => CollectStrategy.allDevices(),
  }[settings.sharing]();
  return s;
}

export function decryptionSettings(settings: TrustSettings): DecryptionSettings {
  const requirement = {
    'cross-signed-or-legacy': TrustRequirement.CrossSignedOrLegacy,
    'cross-signed': TrustRequirement.CrossSigned,
    untrusted: TrustRequirement.Untrusted,
  }[settings.decryption];
  return new DecryptionSettings(requirement);
}
