import {
  type OlmMachine,
  OtherUserIdentity,
  OwnUserIdentity,
  UserId,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import { masterKeyOf } from '../crypto/engine.ts';

/**
 * A contact's cross-signing identity as a UI should show it, in Element X's vocabulary:
 *
 * - `none`: no cross-signing identity (a legacy user, or not known yet);
 * - `pinned`: the first identity we saw, kept (trust on first use), not verified;
 * - `verified`: verified by us (SAS, or a trusted X.509 signature);
 * - `pin-violation`: the master key changed since we pinned it: a new identity, possibly the
 *   homeserver's; acknowledge (pin the new one) or verify it;
 * - `verification-violation`: it was verified and is not any more: the same, only worse.
 *
 * The two violation states block sending to rooms the contact is in (policy: every room rule
 * blocks on identity change) until a UI with the `verification` capability resolves them.
 */
export type IdentityState =
  'none' | 'pinned' | 'verified' | 'pin-violation' | 'verification-violation';

export interface IdentityView {
  state: IdentityState;
  /** The master key (unpadded base64 Ed25519), for out-of-band comparison. */
  masterKey: string | undefined;
  /** We verified this identity at some point (a latch, cleared by withdraw). */
  wasVerified: boolean;
}

export class IdentityError extends Error {
  readonly code: 'NOT_FOUND' | 'CONFLICT';
  constructor(code: IdentityError['code'], message: string) {
    super(message);
    this.code = code;
    this.name = 'IdentityError';
  }
}

export async function identityOf(machine: OlmMachine, userId: string): Promise<IdentityView> {
  const identity = await machine.getIdentity(new UserId(userId));
  if (!identity) return { state: 'none', masterKey: undefined, wasVerified: false };
  try {
    return {
      state: stateOf(identity),
      masterKey: masterKeyOf(identity.masterKey),
      wasVerified: identity.wasPreviouslyVerified(),
    };
  } finally {
    identity.free();
  }
}

export function isViolation(state: IdentityState): boolean {
  return state === 'pin-violation' || state === 'verification-violation';
}

/** The users among `userIds` whose identity changed and is not yet acknowledged. */
export async function changedIdentities(machine: OlmMachine, userIds: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const userId of userIds) {
    if (isViolation((await identityOf(machine, userId)).state)) out.push(userId);
  }
  return out;
}

/**
 * Acknowledges a changed identity: the new master key becomes the pinned one (only if it is
 * still the one the user was shown, when the caller says which). For a verified
 * contact whose identity changed, the requirement to stay verified is withdrawn as well (they
 * can be verified again afterwards). Refused when there is nothing to acknowledge, so a UI
 * cannot silently pre-approve.
 */
export async function acknowledgeIdentity(
  machine: OlmMachine,
  userId: string,
  expectedMasterKey?: string,
): Promise<void> {
  const identity = await otherIdentity(machine, userId);
  try {
    const state = stateOf(identity);
    if (!isViolation(state)) {
      throw new IdentityError('CONFLICT', `nothing to acknowledge: the identity is ${state}`);
    }
    if (expectedMasterKey !== undefined && masterKeyOf(identity.masterKey) !== expectedMasterKey) {
      throw new IdentityError(
        'CONFLICT',
        'the identity changed again since it was shown: look at the new master key first',
      );
    }
    if (identity.hasVerificationViolation()) await identity.withdrawVerification();
    await identity.pinCurrentMasterKey();
  } finally {
    identity.free();
  }
}

/**
 * Withdraws the requirement that this contact stay verified: a later change of their identity
 * is then a pin violation, not a verification violation. Their current keys keep the signature
 * we gave them (Matrix has no way to take a cross-signature back).
 */
export async function withdrawVerification(machine: OlmMachine, userId: string): Promise<void> {
  const identity = await otherIdentity(machine, userId);
  try {
    if (!identity.wasPreviouslyVerified()) {
      throw new IdentityError('CONFLICT', 'this identity was never verified');
    }
    await identity.withdrawVerification();
  } finally {
    identity.free();
  }
}

async function otherIdentity(machine: OlmMachine, userId: string): Promise<OtherUserIdentity> {
  const identity = await machine.getIdentity(new UserId(userId));
  if (identity instanceof OtherUserIdentity) return identity;
  identity?.free();
  throw new IdentityError(
    'NOT_FOUND',
    identity instanceof OwnUserIdentity
      ? 'this is our own identity'
      : 'no cross-signing identity is known for this user',
  );
}

function stateOf(identity: OtherUserIdentity | OwnUserIdentity): IdentityState {
  if (identity.hasVerificationViolation()) return 'verification-violation';
  if (identity instanceof OtherUserIdentity && identity.identityNeedsUserApproval()) {
    return 'pin-violation';
  }
  return identity.isVerified() ? 'verified' : 'pinned';
}
