import type { AuditSettings } from '../schema.ts';
import type { AuditLogOptions } from './log.ts';

/** The AuditLog options the policy file's `audit` section asks for. */
export function auditLogOptions(settings: AuditSettings): AuditLogOptions {
  return {
    bounds: { maxBytes: settings.maxBytes, segmentBytes: settings.segmentBytes },
    refusals: {
      windowMs: settings.refusals.windowSeconds * 1000,
      individualPerWindow: settings.refusals.individualPerWindow,
    },
  };
}
