/**
 * The hash-chained audit log (policy/audit/): what an entry is (entry.ts), the writer with its
 * segments, size bound and counting of refusal floods (log.ts, refusals.ts), and the verifier
 * of the whole set of segments (verify.ts).
 */
export {
  AUDIT_ACTIONS,
  AUDIT_DECISIONS,
  AuditError,
  GENESIS_HASH,
  LOG_ACTIONS,
  MAX_LINE_BYTES,
  auditEntrySchema,
  auditRecordFor,
  auditRecordSchema,
  canonicalJson,
  entryHash,
} from './audit/entry.ts';
export type {
  AuditAction,
  AuditDecision,
  AuditEntry,
  AuditErrorCode,
  AuditRecord,
} from './audit/entry.ts';
export { AuditLog } from './audit/log.ts';
export type { AuditBounds, AuditLogOptions } from './audit/log.ts';
export { auditLogOptions } from './audit/options.ts';
export { DEFAULT_REFUSALS, refusalKey } from './audit/refusals.ts';
export type { RefusalOptions } from './audit/refusals.ts';
export { segmentPath } from './audit/files.ts';
export { describeBroken, verifyAuditLog } from './audit/verify.ts';
export type { AuditProblem, BrokenEntry, VerifyResult } from './audit/verify.ts';
