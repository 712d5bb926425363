/**
 * Measured boot for remote attestation: parse a TCG crypto-agile event log, replay it, compare
 * the replay with quoted PCRs, check it against a reference state, and build logs (tests, and a
 * launcher that measures what it starts). Pure: no I/O beyond the bytes a caller passes in.
 * README.md describes the format, the limits and what is not checked.
 */
export { EventLogCode, EventLogError, isEventLogError } from './errors.ts';
export type { EventLogErrorCode } from './errors.ts';
export {
  DEFAULT_LIMITS,
  EVENT_TYPE_NAMES,
  EV_NO_ACTION,
  EventType,
  HASH_ALGORITHMS,
  HASH_ALGORITHM_NAMES,
  eventDigest,
  parseEventLog,
} from './parse.ts';
export type {
  DeclaredAlgorithm,
  EventDigest,
  EventLogLimits,
  EventTypeName,
  HashAlgorithm,
  ParsedEvent,
  ParsedEventLog,
  SpecIdEvent,
} from './parse.ts';
export { comparePcrs, hasBank, initialPcrValue, replayEventLog } from './replay.ts';
export type { PcrComparison } from './replay.ts';
export { checkReferenceState, referenceStateSchema } from './reference.ts';
export type {
  ReferenceProblem,
  ReferenceProblemCode,
  ReferenceState,
  ReferenceStateInput,
} from './reference.ts';
export { buildEventLog } from './build.ts';
export type { BuildEvent, BuildSpec, BuiltEvent, BuiltEventLog } from './build.ts';
