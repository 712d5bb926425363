/**
 * The policy compartment's public surface, for the endpoint: load and hold the policy,
 * authorize each UI request, map room rules to the crypto engine's trust settings, and keep the
 * audit log. The CLI (`policy/main.ts`) manages tokens and verifies logs.
 */
export {
  AUDIT_ACTIONS,
  AUDIT_DECISIONS,
  AuditError,
  AuditLog,
  DEFAULT_REFUSALS,
  GENESIS_HASH,
  LOG_ACTIONS,
  auditEntrySchema,
  auditLogOptions,
  auditRecordFor,
  auditRecordSchema,
  canonicalJson,
  describeBroken,
  entryHash,
  refusalKey,
  segmentPath,
  verifyAuditLog,
} from './audit.ts';
export type {
  AuditAction,
  AuditBounds,
  AuditDecision,
  AuditEntry,
  AuditErrorCode,
  AuditLogOptions,
  AuditProblem,
  AuditRecord,
  BrokenEntry,
  RefusalOptions,
  VerifyResult,
} from './audit.ts';
export {
  AUTHENTICATED_ONLY,
  Authorizer,
  ROOM_SCOPED,
  UNAUTHENTICATED_LIMIT,
  decryptionTrustFor,
  hashToken,
  mayBackUpRoom,
  roomTrust,
  sharingStrategyFor,
} from './evaluate.ts';
export type {
  AuthorizeRequest,
  AuthorizedClient,
  AuthorizerOptions,
  Decision,
  Denied,
  DenyCode,
  RoomTrust,
} from './evaluate.ts';
export { PolicyError, PolicyHolder, loadPolicyFile, parsePolicy, validatePolicy } from './load.ts';
export type { ParseResult, PolicyProblem, ReloadResult } from './load.ts';
export { LockError } from '../keyvault/common/lock.ts';
export {
  BACKUP_MODES,
  BACKUP_ROOMS,
  CAPABILITIES,
  DEFAULT_AUDIT,
  DEFAULT_BACKUP,
  DEFAULT_RATE_LIMIT,
  DEFAULT_ROOM_RULES,
  EXAMPLE_POLICY,
  ROOM_KEY_RECIPIENTS,
  isCapability,
  policySchema,
} from './schema.ts';
export type {
  AuditSettings,
  BackupSettings,
  Capability,
  Policy,
  PolicyClient,
  PolicyInput,
  RoomKeyRecipients,
  RoomRules,
} from './schema.ts';
export {
  TokenError,
  createClient,
  generateToken,
  listClients,
  revokeClient,
  tokenSha256,
} from './tokens.ts';
export type {
  ClientSummary,
  CreateClientOptions,
  CreatedClient,
  TokenErrorCode,
} from './tokens.ts';
export type { DecryptionTrust, SharingStrategy, TrustSettings } from './trust.ts';
