/**
 * Why an event log was refused. The log comes from the machine being attested, so every
 * message names where parsing stopped (record index and field) and the numbers involved, never
 * the bytes themselves: a verifier may log the message, and the log's content is the peer's.
 */
export const EventLogCode = {
  /** The input ends inside a record (or is empty). */
  Truncated: 'EVENTLOG_TRUNCATED',
  /** A field holds a value the format does not allow (wrong signature, bad count, ...). */
  Malformed: 'EVENTLOG_MALFORMED',
  /** The input, an event, or a count exceeds a limit (see `EventLogLimits`). */
  TooLarge: 'EVENTLOG_TOO_LARGE',
  /** An event carries a digest for an algorithm the Spec ID event did not declare. */
  UnknownAlgorithm: 'EVENTLOG_UNKNOWN_ALGORITHM',
  /** The Spec ID event declares a known algorithm with a digest size that is not its own. */
  DigestSize: 'EVENTLOG_DIGEST_SIZE',
  /** A replay was asked for a PCR bank the log does not declare. */
  NoBank: 'EVENTLOG_NO_BANK',
} as const;
export type EventLogErrorCode = (typeof EventLogCode)[keyof typeof EventLogCode];

export class EventLogError extends Error {
  override name = 'EventLogError';
  readonly code: EventLogErrorCode;
  /** Index of the record being read: 0 is the TCG_PCR_EVENT header, 1.. the TCG_PCR_EVENT2s. */
  readonly record: number | undefined;
  readonly field: string | undefined;

  constructor(
    code: EventLogErrorCode,
    detail: string,
    where: { record?: number; field?: string } = {},
  ) {
    const prefix = [
      where.record === undefined ? undefined : `record ${where.record}`,
      where.field,
    ].filter((part) => part !== undefined);
    super(prefix.length === 0 ? detail : `${prefix.join(', ')}: ${detail}`);
    this.code = code;
    this.record = where.record;
    this.field = where.field;
  }
}

export function isEventLogError(e: unknown, code?: EventLogErrorCode): e is EventLogError {
  return e instanceof EventLogError && (code === undefined || e.code === code);
}
