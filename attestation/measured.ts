import { type AttestationFailure, AttestationCode as C } from './codes.ts';
import type { Evidence } from './evidence.ts';
import {
  type ReferenceState,
  checkReferenceState,
  comparePcrs,
  isEventLogError,
  parseEventLog,
} from './eventlog/index.ts';
import type { VerifierPolicy } from './policy.ts';

/**
 * Measured boot: an event log, when present, must replay to the quoted PCR values (else it is
 * not this TPM's history and proves nothing), and, when the policy names a reference state,
 * hold only the events and values it accepts. Only called with PCR values the quote's digest
 * covers (verify.ts checks the digest before believing them).
 */
export function checkEventLog(
  evidence: Evidence,
  quoted: ReadonlyMap<number, Uint8Array>,
  selection: readonly number[],
  policy: VerifierPolicy,
): { failures: AttestationFailure[]; replayed: boolean } {
  const failures: AttestationFailure[] = [];
  const reference: ReferenceState | undefined = policy.referenceState;
  if (!evidence.eventLog) {
    if (policy.requireEventLog || reference) {
      failures.push({ code: C.EventLogMissing, message: 'the policy requires an event log' });
    }
    return { failures, replayed: false };
  }
  const quotedOnly = new Map([...quoted].filter(([pcr]) => selection.includes(pcr)));
  try {
    const log = parseEventLog(evidence.eventLog);
    const comparison = comparePcrs(log, quotedOnly);
    if (comparison.mismatched.length > 0) {
      failures.push({
        code: C.EventLogMismatch,
        message: `the event log does not replay to the quoted PCR ${comparison.mismatched.join(', ')}`,
      });
    }
    if (reference) {
      for (const problem of checkReferenceState(reference, log, quotedOnly)) {
        if (problem.code === 'EVENTLOG_REPLAY_MISMATCH') continue; // reported above
        failures.push({ code: C.EventLogRejected, message: problem.message });
      }
    }
  } catch (e) {
    const detail = isEventLogError(e) ? e.message : 'it does not parse';
    failures.push({ code: C.EventLogMalformed, message: `the event log is malformed: ${detail}` });
    return { failures, replayed: false };
  }
  return { failures, replayed: failures.length === 0 };
}
