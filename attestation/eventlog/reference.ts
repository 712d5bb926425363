import { z } from 'zod';
import {
  EV_NO_ACTION,
  EVENT_TYPE_NAMES,
  EventType,
  HASH_ALGORITHMS,
  HASH_ALGORITHM_NAMES,
  eventDigest,
  type HashAlgorithm,
  type ParsedEventLog,
} from './parse.ts';
import { comparePcrs, hasBank } from './replay.ts';

/**
 * The reference state: what a verifier accepts as a good measured boot, per PCR (modelled
 * loosely on Keylime's measured-boot policy and IMA allowlist). Version 1, JSON:
 *
 *   { "version": 1, "bank": "sha256",
 *     "pcrs": { "0":  { "values": ["<hex>", ...] },
 *               "14": { "events": [{ "type": "EV_IPL", "digest": "<hex>" }, ...] } } }
 *
 * `values`: the PCR's quoted value must be one of these (pins the exact event sequence).
 * `events`: an allowlist; every measured event in the log for this PCR must be one of these
 * (type and digest both; there is deliberately no "any digest" wildcard). Order and
 * repetition are not checked: use `values` for that. PCRs the file does not name are not
 * constrained, but every log must still replay to the quote. README.md has the details.
 */

const MAX_ENTRIES = 10_000;

const hex = z.string().regex(/^(?:[0-9a-f]{2})+$/, 'expected lowercase hex');

const eventType = z
  .union([
    z.number().int().min(0).max(0xffffffff),
    z.enum(EVENT_TYPE_NAMES, { error: () => 'expected an EV_* name or a u32' }),
  ])
  .transform((t) => (typeof t === 'number' ? t : EventType[t]))
  .refine((t) => t !== EV_NO_ACTION, 'EV_NO_ACTION events are never extended into a PCR');

const acceptedEvent = z.strictObject({ type: eventType, digest: hex });

const pcrReference = z.union([
  z.strictObject({
    /** Accepted final values of the PCR (as quoted). */
    values: z.array(hex).min(1).max(MAX_ENTRIES),
  }),
  z.strictObject({
    /** Accepted events: every measured event in this PCR must be one of them. */
    events: z.array(acceptedEvent).min(1).max(MAX_ENTRIES),
  }),
]);

const PCR_KEY = /^(?:[0-9]|1[0-9]|2[0-3])$/;

export const referenceStateSchema = z
  .strictObject({
    version: z.literal(1),
    /** The PCR bank the digests are in, and the bank of the quoted PCRs. */
    bank: z.enum(HASH_ALGORITHM_NAMES).default('sha256'),
    /** Free text for operators (where the values came from); not interpreted. */
    description: z.string().max(1000).optional(),
    pcrs: z
      .record(z.string().regex(PCR_KEY, 'expected a PCR number 0-23'), pcrReference)
      .refine((pcrs) => Object.keys(pcrs).length > 0, 'a reference state names at least one PCR'),
  })
  .superRefine((state, ctx) => {
    const size = HASH_ALGORITHMS[state.bank].size * 2;
    const wrong = (path: (string | number)[]): void => {
      ctx.addIssue({
        code: 'custom',
        path,
        message: `expected ${size} hex digits (${state.bank})`,
      });
    };
    for (const [pcr, ref] of Object.entries(state.pcrs)) {
      if ('values' in ref) {
        ref.values.forEach((v, i) => {
          if (v.length !== size) wrong(['pcrs', pcr, 'values', i]);
        });
      } else {
        ref.events.forEach((e, i) => {
          if (e.digest.length !== size) wrong(['pcrs', pcr, 'events', i, 'digest']);
        });
      }
    }
  });

export type ReferenceState = z.output<typeof referenceStateSchema>;
/** What a reference-state file may contain (before defaults and event type names resolve). */
export type ReferenceStateInput = z.input<typeof referenceStateSchema>;

export type ReferenceProblem =
  /** The log does not declare the reference state's bank. */
  | { code: 'REFERENCE_BANK_ABSENT'; bank: HashAlgorithm; message: string }
  /** The log's replay differs from the quote: the log is not this TPM's history. */
  | { code: 'EVENTLOG_REPLAY_MISMATCH'; pcr: number; message: string }
  /** The reference state names a PCR the quote does not include. */
  | { code: 'REFERENCE_PCR_NOT_QUOTED'; pcr: number; message: string }
  /** The reference state lists events for a PCR the log has no event for. */
  | { code: 'REFERENCE_PCR_NOT_MEASURED'; pcr: number; message: string }
  /** A measured event that is not in the PCR's accepted events. */
  | {
      code: 'REFERENCE_UNKNOWN_EVENT';
      pcr: number;
      /** The event's record index in the log (1 is the first TCG_PCR_EVENT2). */
      index: number;
      eventType: number;
      message: string;
    }
  /** The quoted PCR value is not among the accepted values. */
  | { code: 'REFERENCE_PCR_VALUE'; pcr: number; message: string };
export type ReferenceProblemCode = ReferenceProblem['code'];

/**
 * Checks a parsed log and the PCR values of a verified quote (in the reference's bank, 0-23)
 * against a reference state. It replays the log itself, so it cannot be used on a log that
 * was never compared with the quote. An empty list means accepted.
 */
export function checkReferenceState(
  reference: ReferenceState,
  log: ParsedEventLog,
  quoted: ReadonlyMap<number, Uint8Array>,
): ReferenceProblem[] {
  const { bank } = reference;
  if (!hasBank(log, bank)) {
    return [{ code: 'REFERENCE_BANK_ABSENT', bank, message: `the log has no ${bank} bank` }];
  }
  const problems: ReferenceProblem[] = comparePcrs(log, quoted, bank).mismatched.map((pcr) => ({
    code: 'EVENTLOG_REPLAY_MISMATCH',
    pcr,
    message: `PCR ${pcr}: the event log does not replay to the quoted value`,
  }));

  const entries = Object.entries(reference.pcrs)
    .map(([key, ref]) => [Number(key), ref] as const)
    .sort(([a], [b]) => a - b);
  for (const [pcr, ref] of entries) {
    const value = quoted.get(pcr);
    if (value === undefined) {
      problems.push({
        code: 'REFERENCE_PCR_NOT_QUOTED',
        pcr,
        message: `PCR ${pcr} is in the reference state but not in the quote`,
      });
      continue;
    }
    if ('values' in ref) {
      if (!ref.values.includes(Buffer.from(value).toString('hex'))) {
        problems.push({
          code: 'REFERENCE_PCR_VALUE',
          pcr,
          message: `PCR ${pcr}: the quoted value is not an accepted value`,
        });
      }
      continue;
    }
    const accepted = new Set(ref.events.map((e) => `${e.type}:${e.digest}`));
    const measured = log.events.filter((e) => e.pcr === pcr && e.type !== EV_NO_ACTION);
    if (measured.length === 0) {
      problems.push({
        code: 'REFERENCE_PCR_NOT_MEASURED',
        pcr,
        message: `PCR ${pcr}: the log has no event for it`,
      });
    }
    for (const event of measured) {
      const digest = eventDigest(event, bank)?.toString('hex');
      if (!accepted.has(`${event.type}:${digest ?? ''}`)) {
        problems.push({
          code: 'REFERENCE_UNKNOWN_EVENT',
          pcr,
          index: event.record,
          eventType: event.type,
          message: `PCR ${pcr}: event ${event.record} (type 0x${event.type.toString(16)}) is not accepted`,
        });
      }
    }
  }
  return problems;
}
