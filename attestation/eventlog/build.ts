import { createHash } from 'node:crypto';
import {
  EV_NO_ACTION,
  EventType,
  HASH_ALGORITHMS,
  SPEC_ID_SIGNATURE,
  STARTUP_LOCALITY_SIGNATURE,
  type EventTypeName,
  type HashAlgorithm,
} from './parse.ts';

/**
 * Writes a crypto-agile event log, for tests and for a launcher that measures what it starts
 * (it extends each event's digest into the TPM and keeps this log beside it). The expected
 * PCR values are computed here on their own rather than by replay.ts, so a round trip tests
 * the parser and the replay against an independent computation.
 */

export interface BuildEvent {
  pcr: number;
  /** An `EventType` value or name. EV_NO_ACTION events get zero digests and extend nothing. */
  type: number | EventTypeName;
  /** Measured as is: each digest is H(data). */
  data: Uint8Array;
}

export interface BuildSpec<A extends HashAlgorithm> {
  algorithms: readonly A[];
  events: readonly BuildEvent[];
  /** Emit a StartupLocality event first (PCR 0 then starts at this locality). */
  startupLocality?: number;
}

export interface BuiltEvent<A extends HashAlgorithm> {
  pcr: number;
  type: number;
  /** What to extend into the TPM's PCR `pcr` in each bank. */
  digests: Record<A, Buffer>;
}

export interface BuiltEventLog<A extends HashAlgorithm> {
  bytes: Buffer;
  /** Per bank, the final value of every PCR the events extend. */
  pcrs: Record<A, Map<number, Buffer>>;
  /** The caller's events in order (not the StartupLocality event), with their digests. */
  events: BuiltEvent<A>[];
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}
function u8(n: number): Buffer {
  return Buffer.of(n);
}

function specIdEvent(algorithms: readonly HashAlgorithm[]): Buffer {
  const event = Buffer.concat([
    SPEC_ID_SIGNATURE,
    u32(0), // platformClass: client
    u8(0), // specVersionMinor
    u8(2), // specVersionMajor
    u8(0), // specErrata
    u8(2), // uintnSize: 64-bit UINTN
    u32(algorithms.length),
    ...algorithms.flatMap((a) => [u16(HASH_ALGORITHMS[a].id), u16(HASH_ALGORITHMS[a].size)]),
    u8(0), // vendorInfoSize
  ]);
  // The legacy header: PCR 0, EV_NO_ACTION, a zero SHA-1 digest.
  return Buffer.concat([u32(0), u32(EV_NO_ACTION), Buffer.alloc(20), u32(event.length), event]);
}

function event2(
  pcr: number,
  type: number,
  digests: readonly [HashAlgorithm, Buffer][],
  data: Uint8Array,
): Buffer {
  return Buffer.concat([
    u32(pcr),
    u32(type),
    u32(digests.length),
    ...digests.flatMap(([a, digest]) => [u16(HASH_ALGORITHMS[a].id), digest]),
    u32(data.length),
    data,
  ]);
}

function check(spec: BuildSpec<HashAlgorithm>): void {
  if (spec.algorithms.length === 0 || new Set(spec.algorithms).size !== spec.algorithms.length) {
    throw new RangeError('buildEventLog: algorithms must be non-empty and distinct');
  }
  for (const e of spec.events) {
    if (typeof e.type === 'string' && !Object.hasOwn(EventType, e.type)) {
      throw new RangeError(`buildEventLog: unknown event type ${e.type}`);
    }
    if (!Number.isInteger(e.pcr) || e.pcr < 0 || e.pcr > 23) {
      throw new RangeError(`buildEventLog: PCR ${e.pcr} is not 0-23`);
    }
    const type = typeof e.type === 'string' ? 0 : e.type;
    if (!Number.isInteger(type) || type < 0 || type > 0xffffffff) {
      throw new RangeError(`buildEventLog: event type ${e.type} is not a u32`);
    }
  }
  const locality = spec.startupLocality;
  if (locality !== undefined && (!Number.isInteger(locality) || locality < 0 || locality > 4)) {
    throw new RangeError(`buildEventLog: startup locality ${locality} is not 0-4`);
  }
}

export function buildEventLog<A extends HashAlgorithm>(spec: BuildSpec<A>): BuiltEventLog<A> {
  check(spec);
  const { algorithms } = spec;
  const zeroDigests = algorithms.map((a): [A, Buffer] => [
    a,
    Buffer.alloc(HASH_ALGORITHMS[a].size),
  ]);
  const records = [specIdEvent(algorithms)];
  if (spec.startupLocality !== undefined) {
    const data = Buffer.concat([STARTUP_LOCALITY_SIGNATURE, u8(spec.startupLocality)]);
    records.push(event2(0, EV_NO_ACTION, zeroDigests, data));
  }

  const pcrs = Object.fromEntries(algorithms.map((a) => [a, new Map<number, Buffer>()])) as Record<
    A,
    Map<number, Buffer>
  >;
  const events: BuiltEvent<A>[] = [];
  for (const e of spec.events) {
    const type = typeof e.type === 'string' ? EventType[e.type] : e.type;
    const measured = type !== EV_NO_ACTION;
    const digests = algorithms.map((a): [A, Buffer] => [
      a,
      measured ? createHash(a).update(e.data).digest() : Buffer.alloc(HASH_ALGORITHMS[a].size),
    ]);
    records.push(event2(e.pcr, type, digests, e.data));
    events.push({
      pcr: e.pcr,
      type,
      digests: Object.fromEntries(digests) as Record<A, Buffer>,
    });
    if (!measured) continue;
    for (const [a, digest] of digests) {
      const bank = pcrs[a];
      let before = bank.get(e.pcr);
      if (before === undefined) {
        before = Buffer.alloc(HASH_ALGORITHMS[a].size);
        if (e.pcr === 0 && spec.startupLocality !== undefined) {
          before[before.length - 1] = spec.startupLocality;
        }
      }
      bank.set(e.pcr, createHash(a).update(before).update(digest).digest());
    }
  }
  return { bytes: Buffer.concat(records), pcrs, events };
}
