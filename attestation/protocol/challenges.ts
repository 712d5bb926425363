import { randomBytes } from 'node:crypto';

/**
 * Outstanding challenges: one per peer device, single use, expiring. A new request to the same
 * device replaces the old one (its nonce can no longer be answered), so a peer cannot bank
 * nonces, and an answer is accepted once at most.
 */
export interface Challenge {
  requestId: string;
  nonce: Buffer;
  userId: string;
  deviceId: string;
  pcrs: number[];
  issuedAt: number;
  /** The enrolment credential, when this request carries one (never sent in clear). */
  activation?: { challengeId: string; credential: Buffer; akName: string; ekSha256: string };
}

export type TakeResult =
  | { ok: true; challenge: Challenge }
  | { ok: false; code: 'NONCE_UNKNOWN' | 'NONCE_EXPIRED' | 'WRONG_SUBJECT'; message: string };

export class ChallengeBook {
  readonly #byDevice = new Map<string, Challenge>();
  readonly #ttlMs: number;

  constructor(ttlMs: number) {
    this.#ttlMs = ttlMs;
  }

  issue(
    userId: string,
    deviceId: string,
    pcrs: number[],
    now: number,
    activation?: Challenge['activation'],
  ): Challenge {
    this.#sweep(now);
    const previous = this.#byDevice.get(key(userId, deviceId));
    previous?.activation?.credential.fill(0);
    const challenge: Challenge = {
      requestId: randomBytes(18).toString('base64url'),
      nonce: randomBytes(32),
      userId,
      deviceId,
      pcrs: [...pcrs],
      issuedAt: now,
      ...(activation ? { activation } : {}),
    };
    this.#byDevice.set(key(userId, deviceId), challenge);
    return challenge;
  }

  /** The challenge `requestId` answered by this sender's device, removed: single use. */
  take(requestId: string, sender: { userId: string; deviceId: string }, now: number): TakeResult {
    const mine = this.#byDevice.get(key(sender.userId, sender.deviceId));
    if (mine?.requestId !== requestId) {
      const elsewhere = [...this.#byDevice.values()].some((c) => c.requestId === requestId);
      return elsewhere
        ? {
            ok: false,
            code: 'WRONG_SUBJECT',
            message: 'the answer came from a device other than the one asked',
          }
        : { ok: false, code: 'NONCE_UNKNOWN', message: 'no outstanding challenge with this id' };
    }
    this.#byDevice.delete(key(sender.userId, sender.deviceId));
    if (now - mine.issuedAt > this.#ttlMs) {
      mine.activation?.credential.fill(0);
      return { ok: false, code: 'NONCE_EXPIRED', message: 'the challenge expired' };
    }
    return { ok: true, challenge: mine };
  }

  pending(userId: string, deviceId: string): Challenge | undefined {
    return this.#byDevice.get(key(userId, deviceId));
  }

  #sweep(now: number): void {
    for (const [k, c] of this.#byDevice) {
      if (now - c.issuedAt > this.#ttlMs) {
        c.activation?.credential.fill(0);
        this.#byDevice.delete(k);
      }
    }
  }
}

function key(userId: string, deviceId: string): string {
  return `${userId}\u0000${deviceId}`;
}
