import type { CryptoEngine } from '../crypto/engine.ts';
import type { TrustSettings } from '../crypto/settings.ts';
import { identityOf } from '../verification/index.ts';

export type ExclusionReason =
  | 'no-cross-signing'
  | 'not-cross-signed'
  | 'not-verified'
  | 'no-devices'
  | 'device-list-unavailable';
export interface Exclusion {
  userId: string;
  deviceId?: string;
  reason: ExclusionReason;
}

/**
 * The members and devices a room key would not go to under `trust`, as the crypto store knows
 * them now: the same rule the core's sharing strategy applies (endpoint/crypto/settings.ts),
 * written out so a UI can say who cannot read a message. Our own sending device is left out.
 *
 * - identity-based (cross-signed, attested-only, tofu): a user with no cross-signing identity
 *   gets nothing (MSC4153); a device its owner did not sign gets nothing.
 * - verified-devices-only: only devices we verified.
 * - all-devices: nobody is left out.
 */
export async function exclusionsFor(
  engine: CryptoEngine,
  members: readonly string[],
  trust: TrustSettings,
  self: { userId: string; deviceId: string },
): Promise<Exclusion[]> {
  if (trust.sharing === 'all-devices') return [];
  const out: Exclusion[] = [];
  for (const userId of members) {
    const devices = (await engine.devices(userId).catch(() => [])).filter(
      (d) => !(userId === self.userId && d.deviceId === self.deviceId),
    );
    if (devices.length === 0) {
      if (userId !== self.userId) {
        const unavailable = engine.deviceListUnavailable(userId);
        out.push({ userId, reason: unavailable ? 'device-list-unavailable' : 'no-devices' });
      }
      continue;
    }
    if (trust.sharing === 'verified-devices-only') {
      for (const d of devices) {
        if (!d.verified) out.push({ userId, deviceId: d.deviceId, reason: 'not-verified' });
      }
      continue;
    }
    const identity = await identityOf(engine.machine, userId).catch(() => undefined);
    if (identity === undefined || identity.state === 'none') {
      out.push({ userId, reason: 'no-cross-signing' });
      continue;
    }
    for (const d of devices) {
      if (!d.crossSignedByOwner) {
        out.push({ userId, deviceId: d.deviceId, reason: 'not-cross-signed' });
      }
    }
  }
  return out;
}
