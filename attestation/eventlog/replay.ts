import { createHash } from 'node:crypto';
import { EventLogCode, EventLogError } from './errors.ts';
import {
  EV_NO_ACTION,
  HASH_ALGORITHMS,
  eventDigest,
  type HashAlgorithm,
  type ParsedEventLog,
} from './parse.ts';

/**
 * Replaying a log computes the PCR values it claims: PCR = H(PCR || digest) for each event in
 * order. The log is only evidence once its replay equals PCRs the TPM signed in a quote; the
 * comparison below is what makes an edited, reordered or truncated log fail.
 */

/**
 * A PCR's value after TPM2_Startup: zeros, except that a StartupLocality event says PCR 0
 * started at the locality the CRTM ran from (its last byte), which the TPM does for locality 3
 * and 4 starts.
 */
export function initialPcrValue(
  pcr: number,
  bank: HashAlgorithm,
  startupLocality: number | undefined,
): Buffer {
  const value = Buffer.alloc(HASH_ALGORITHMS[bank].size);
  if (pcr === 0 && startupLocality !== undefined) value[value.length - 1] = startupLocality;
  return value;
}

/** Whether the log declares this bank (every event then carries a digest for it). */
export function hasBank(log: ParsedEventLog, bank: HashAlgorithm): boolean {
  return log.specId.algorithms.some((a) => a.algorithm === bank);
}

/**
 * The replayed value of every PCR the log extends (a PCR with no measured event is absent:
 * the log says nothing about it). Throws EVENTLOG_NO_BANK for a bank the log does not declare.
 */
export function replayEventLog(
  log: ParsedEventLog,
  bank: HashAlgorithm = 'sha256',
): Map<number, Buffer> {
  if (!hasBank(log, bank)) {
    throw new EventLogError(EventLogCode.NoBank, `the log has no ${bank} bank`);
  }
  const pcrs = new Map<number, Buffer>();
  for (const event of log.events) {
    if (event.type === EV_NO_ACTION) continue;
    const digest = eventDigest(event, bank);
    // parseEventLog guarantees one digest per declared bank; this only satisfies the types.
    if (digest === undefined) {
      throw new EventLogError(EventLogCode.Malformed, `no ${bank} digest`, {
        record: event.record,
        field: 'digests',
      });
    }
    const before = pcrs.get(event.pcr) ?? initialPcrValue(event.pcr, bank, log.startupLocality);
    pcrs.set(event.pcr, createHash(bank).update(before).update(digest).digest());
  }
  return pcrs;
}

export interface PcrComparison {
  /** Quoted and covered by the log, and the replay equals the quote. */
  matched: number[];
  /** Quoted and covered by the log, and the replay differs: the log is not the TPM's history. */
  mismatched: number[];
  /** Quoted, but the log has no event for them: their value is not explained by this log. */
  notCovered: number[];
  /** Covered by the log but not in the quote: the log's claims about them are unverified. */
  notQuoted: number[];
}

/**
 * Compares a log's replay with PCR values from a verified quote (same bank). A verifier must
 * refuse the log when `mismatched` is not empty; what it does with `notCovered` and
 * `notQuoted` is policy (checkReferenceState refuses both for the PCRs it names).
 */
export function comparePcrs(
  log: ParsedEventLog,
  quoted: ReadonlyMap<number, Uint8Array>,
  bank: HashAlgorithm = 'sha256',
): PcrComparison {
  const replayed = replayEventLog(log, bank);
  const result: PcrComparison = { matched: [], mismatched: [], notCovered: [], notQuoted: [] };
  for (const [pcr, value] of [...quoted].sort(([a], [b]) => a - b)) {
    const ours = replayed.get(pcr);
    if (ours === undefined) result.notCovered.push(pcr);
    else if (ours.equals(value)) result.matched.push(pcr);
    else result.mismatched.push(pcr);
  }
  result.notQuoted = [...replayed.keys()].filter((pcr) => !quoted.has(pcr)).sort((a, b) => a - b);
  return result;
}
