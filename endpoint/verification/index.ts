/** Contact verification: SAS flows, and contacts' identities and their changes. */
export { type FlowPhase, type FlowView, VerificationError, Verifications } from './flows.ts';
export {
  IdentityError,
  type IdentityState,
  type IdentityView,
  acknowledgeIdentity,
  changedIdentities,
  identityOf,
  isViolation,
  withdrawVerification,
} from './identity.ts';
