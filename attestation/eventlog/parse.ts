import { EventLogCode, EventLogError, type EventLogErrorCode } from './errors.ts';

/**
 * The TCG crypto-agile event log (TCG PC Client Platform Firmware Profile, "binary_bios_
 * measurements"): one legacy TCG_PCR_EVENT carrying the TCG_EfiSpecIDEvent, then
 * TCG_PCR_EVENT2 records. All integers are little-endian, unlike TPM structures.
 *
 * The log is the attested machine's claim, so it is parsed as hostile input: every length is
 * bounded before it is used, every byte is consumed, and anything unexpected is an
 * `EventLogError`. Nothing here trusts the log; the replay against quoted PCRs does.
 */

/** The hash algorithms we can replay: TPM_ALG_ID and digest size. */
export const HASH_ALGORITHMS = {
  sha1: { id: 0x0004, size: 20 },
  sha256: { id: 0x000b, size: 32 },
  sha384: { id: 0x000c, size: 48 },
  sha512: { id: 0x000d, size: 64 },
} as const;
export type HashAlgorithm = keyof typeof HASH_ALGORITHMS;
export const HASH_ALGORITHM_NAMES = Object.keys(HASH_ALGORITHMS) as HashAlgorithm[];

function algorithmById(id: number): HashAlgorithm | undefined {
  return HASH_ALGORITHM_NAMES.find((name) => HASH_ALGORITHMS[name].id === id);
}

/** Event types (PC Client PFP §10.4.1); a log may use others, which are kept as numbers. */
export const EventType = {
  EV_PREBOOT_CERT: 0x0,
  EV_POST_CODE: 0x1,
  EV_NO_ACTION: 0x3,
  EV_SEPARATOR: 0x4,
  EV_ACTION: 0x5,
  EV_EVENT_TAG: 0x6,
  EV_S_CRTM_CONTENTS: 0x7,
  EV_S_CRTM_VERSION: 0x8,
  EV_CPU_MICROCODE: 0x9,
  EV_PLATFORM_CONFIG_FLAGS: 0xa,
  EV_TABLE_OF_DEVICES: 0xb,
  EV_COMPACT_HASH: 0xc,
  EV_IPL: 0xd,
  EV_IPL_PARTITION_DATA: 0xe,
  EV_NONHOST_CODE: 0xf,
  EV_NONHOST_CONFIG: 0x10,
  EV_NONHOST_INFO: 0x11,
  EV_OMIT_BOOT_DEVICE_EVENTS: 0x12,
  EV_EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EV_EFI_VARIABLE_BOOT: 0x80000002,
  EV_EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EV_EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EV_EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EV_EFI_GPT_EVENT: 0x80000006,
  EV_EFI_ACTION: 0x80000007,
  EV_EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EV_EFI_HANDOFF_TABLES: 0x80000009,
  EV_EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EV_EFI_HANDOFF_TABLES2: 0x8000000b,
  EV_EFI_VARIABLE_BOOT2: 0x8000000c,
  EV_EFI_HCRTM_EVENT: 0x80000010,
  EV_EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EV_EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EV_EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
} as const;
export type EventTypeName = keyof typeof EventType;
export const EVENT_TYPE_NAMES = Object.keys(EventType) as EventTypeName[];

/** Not extended into any PCR: informational records such as the Spec ID and StartupLocality. */
export const EV_NO_ACTION = EventType.EV_NO_ACTION;

export const SPEC_ID_SIGNATURE = Buffer.from('Spec ID Event03\0', 'latin1');
export const STARTUP_LOCALITY_SIGNATURE = Buffer.from('StartupLocality\0', 'latin1');

export interface EventLogLimits {
  /** The whole log, in bytes. Real firmware logs are tens of KiB; 4 MiB leaves ample room. */
  maxBytes: number;
  /** TCG_PCR_EVENT2 records (firmware logs have hundreds). */
  maxEvents: number;
  /** One event's data (a Secure Boot dbx variable is the largest common one, tens of KiB). */
  maxEventSize: number;
  /** PC Client TPMs have PCRs 0-23. */
  maxPcrIndex: number;
}
export const DEFAULT_LIMITS: Readonly<EventLogLimits> = Object.freeze({
  maxBytes: 4 * 1024 * 1024,
  maxEvents: 10_000,
  maxEventSize: 1024 * 1024,
  maxPcrIndex: 23,
});

/** More algorithms than the TPM spec defines hashes for is not a real log. */
const MAX_ALGORITHMS = 16;
/** No TPM hash is longer than 64 bytes (SHA-512, SHA3-512). */
const MAX_DIGEST_SIZE = 64;

export interface DeclaredAlgorithm {
  /** TPM_ALG_ID. */
  algorithmId: number;
  /** Our name for it, or undefined for one we cannot replay (e.g. SM3): still parsed. */
  algorithm: HashAlgorithm | undefined;
  digestSize: number;
}

export interface SpecIdEvent {
  platformClass: number;
  specVersion: { major: number; minor: number; errata: number };
  /** 1: UINTN is 32 bits, 2: 64 bits. */
  uintnSize: number;
  algorithms: readonly DeclaredAlgorithm[];
  vendorInfo: Buffer;
}

export interface EventDigest {
  algorithmId: number;
  algorithm: HashAlgorithm | undefined;
  digest: Buffer;
}

export interface ParsedEvent {
  /** Position in the log: 1 is the first TCG_PCR_EVENT2 (0 is the Spec ID header). */
  record: number;
  pcr: number;
  type: number;
  /** One per declared algorithm, in the order the log lists them. */
  digests: readonly EventDigest[];
  /** Not interpreted (beyond StartupLocality): what a digest covers is event-type specific. */
  data: Buffer;
}

export interface ParsedEventLog {
  specId: SpecIdEvent;
  events: readonly ParsedEvent[];
  /** From a StartupLocality EV_NO_ACTION event: PCR 0's initial value ends in this byte. */
  startupLocality: number | undefined;
}

/** The digest an event carries for one bank, if the log declares that bank. */
export function eventDigest(event: ParsedEvent, algorithm: HashAlgorithm): Buffer | undefined {
  return event.digests.find((d) => d.algorithm === algorithm)?.digest;
}

/**
 * A bounds-checked cursor. `overrun` is the code for reading past the end: TRUNCATED for the
 * input itself, MALFORMED inside an event whose declared size is too small for its content.
 */
class Reader {
  private offset = 0;
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly overrun: EventLogErrorCode;
  record = 0;

  constructor(bytes: Uint8Array, overrun: EventLogErrorCode) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.overrun = overrun;
  }

  get remaining(): number {
    return this.bytes.byteLength - this.offset;
  }

  fail(code: EventLogErrorCode, field: string, detail: string): never {
    throw new EventLogError(code, detail, { record: this.record, field });
  }

  private take(field: string, size: number): number {
    if (size > this.remaining) {
      this.fail(
        this.overrun,
        field,
        this.overrun === EventLogCode.Truncated
          ? `needs ${size} bytes, the input has ${this.remaining} left`
          : `needs ${size} bytes, the event's size leaves ${this.remaining}`,
      );
    }
    const at = this.offset;
    this.offset += size;
    return at;
  }

  u8(field: string): number {
    return this.view.getUint8(this.take(field, 1));
  }
  u16(field: string): number {
    return this.view.getUint16(this.take(field, 2), true);
  }
  u32(field: string): number {
    return this.view.getUint32(this.take(field, 4), true);
  }
  /** A copy, so the parsed log does not alias (or pin) the caller's buffer. */
  bytesOf(field: string, size: number): Buffer {
    const at = this.take(field, size);
    return Buffer.from(this.bytes.subarray(at, at + size));
  }
}

function parseSpecId(data: Buffer, record: number): SpecIdEvent {
  const r: Reader = new Reader(data, EventLogCode.Malformed);
  r.record = record;
  const signature = r.bytesOf('Spec ID signature', SPEC_ID_SIGNATURE.length);
  if (!signature.equals(SPEC_ID_SIGNATURE)) {
    r.fail(
      EventLogCode.Malformed,
      'Spec ID signature',
      "not 'Spec ID Event03' (only the crypto-agile log format is accepted)",
    );
  }
  const platformClass = r.u32('platformClass');
  const minor = r.u8('specVersionMinor');
  const major = r.u8('specVersionMajor');
  const errata = r.u8('specErrata');
  if (major !== 2) r.fail(EventLogCode.Malformed, 'specVersionMajor', `${major}, expected 2`);
  const uintnSize = r.u8('uintnSize');
  if (uintnSize !== 1 && uintnSize !== 2) {
    r.fail(EventLogCode.Malformed, 'uintnSize', `${uintnSize}, expected 1 or 2`);
  }
  const count = r.u32('numberOfAlgorithms');
  if (count === 0) r.fail(EventLogCode.Malformed, 'numberOfAlgorithms', 'is 0');
  if (count > MAX_ALGORITHMS) {
    r.fail(EventLogCode.TooLarge, 'numberOfAlgorithms', `${count} exceeds ${MAX_ALGORITHMS}`);
  }
  const algorithms: DeclaredAlgorithm[] = [];
  for (let i = 0; i < count; i++) {
    const field = `algorithm ${i}`;
    const algorithmId = r.u16(`${field} algorithmId`);
    const digestSize = r.u16(`${field} digestSize`);
    if (algorithms.some((a) => a.algorithmId === algorithmId)) {
      r.fail(EventLogCode.Malformed, `${field} algorithmId`, `0x${hex4(algorithmId)} is repeated`);
    }
    const algorithm = algorithmById(algorithmId);
    if (algorithm !== undefined && HASH_ALGORITHMS[algorithm].size !== digestSize) {
      r.fail(
        EventLogCode.DigestSize,
        `${field} digestSize`,
        `${digestSize} for ${algorithm}, whose digests are ${HASH_ALGORITHMS[algorithm].size} bytes`,
      );
    }
    if (digestSize === 0 || digestSize > MAX_DIGEST_SIZE) {
      r.fail(EventLogCode.Malformed, `${field} digestSize`, `${digestSize} is not 1-64`);
    }
    algorithms.push({ algorithmId, algorithm, digestSize });
  }
  const vendorInfoSize = r.u8('vendorInfoSize');
  const vendorInfo = r.bytesOf('vendorInfo', vendorInfoSize);
  if (r.remaining !== 0) {
    r.fail(EventLogCode.Malformed, 'eventSize', `${r.remaining} bytes after the Spec ID event`);
  }
  return {
    platformClass,
    specVersion: { major, minor, errata },
    uintnSize,
    algorithms,
    vendorInfo,
  };
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

function eventSize(r: Reader, limits: EventLogLimits): number {
  const size = r.u32('eventSize');
  if (size > limits.maxEventSize) {
    r.fail(EventLogCode.TooLarge, 'eventSize', `${size} exceeds ${limits.maxEventSize} bytes`);
  }
  return size;
}

/** The legacy TCG_PCR_EVENT that opens every crypto-agile log. */
function parseHeader(r: Reader, limits: EventLogLimits): SpecIdEvent {
  const pcr = r.u32('pcrIndex');
  const type = r.u32('eventType');
  const digest = r.bytesOf('digest', 20);
  const data = r.bytesOf('event', eventSize(r, limits));
  // Checked after reading so a short input reports truncation, whatever its first bytes are.
  if (pcr !== 0) r.fail(EventLogCode.Malformed, 'pcrIndex', `${pcr}, expected 0`);
  if (type !== EV_NO_ACTION) {
    r.fail(EventLogCode.Malformed, 'eventType', `${type}, expected EV_NO_ACTION (3)`);
  }
  if (digest.some((b) => b !== 0)) r.fail(EventLogCode.Malformed, 'digest', 'is not all zero');
  return parseSpecId(data, r.record);
}

function parseEvent(r: Reader, specId: SpecIdEvent, limits: EventLogLimits): ParsedEvent {
  const pcr = r.u32('pcrIndex');
  if (pcr > limits.maxPcrIndex) {
    r.fail(EventLogCode.Malformed, 'pcrIndex', `${pcr} exceeds ${limits.maxPcrIndex}`);
  }
  const type = r.u32('eventType');
  const count = r.u32('digests count');
  // Every event carries one digest per declared bank, or a bank could not be replayed; this
  // also stops a huge count before any loop runs.
  if (count !== specId.algorithms.length) {
    r.fail(
      EventLogCode.Malformed,
      'digests count',
      `${count}, but the Spec ID event declares ${specId.algorithms.length} algorithm(s)`,
    );
  }
  const digests: EventDigest[] = [];
  for (let i = 0; i < count; i++) {
    const algorithmId = r.u16(`digest ${i} hashAlg`);
    const declared = specId.algorithms.find((a) => a.algorithmId === algorithmId);
    if (declared === undefined) {
      r.fail(
        EventLogCode.UnknownAlgorithm,
        `digest ${i} hashAlg`,
        `0x${hex4(algorithmId)} is not declared in the Spec ID event`,
      );
    }
    if (digests.some((d) => d.algorithmId === algorithmId)) {
      r.fail(EventLogCode.Malformed, `digest ${i} hashAlg`, `0x${hex4(algorithmId)} is repeated`);
    }
    const digest = r.bytesOf(`digest ${i}`, declared.digestSize);
    digests.push({ algorithmId, algorithm: declared.algorithm, digest });
  }
  const data = r.bytesOf('event', eventSize(r, limits));
  return { record: r.record, pcr, type, digests, data };
}

/** StartupLocality (PFP §10.4.5.3): "StartupLocality\0" then one byte, in PCR 0's log. */
function startupLocalityOf(event: ParsedEvent, r: Reader): number | undefined {
  const signature = STARTUP_LOCALITY_SIGNATURE;
  if (event.type !== EV_NO_ACTION || event.data.length < signature.length) return undefined;
  if (!event.data.subarray(0, signature.length).equals(signature)) return undefined;
  if (event.data.length !== signature.length + 1) {
    r.fail(
      EventLogCode.Malformed,
      'StartupLocality',
      `event is ${event.data.length} bytes, not 17`,
    );
  }
  if (event.pcr !== 0) r.fail(EventLogCode.Malformed, 'StartupLocality', `in PCR ${event.pcr}`);
  const locality = event.data[signature.length] ?? 0;
  if (locality > 4) r.fail(EventLogCode.Malformed, 'StartupLocality', `locality ${locality}`);
  return locality;
}

export function parseEventLog(
  bytes: Uint8Array,
  limits: Partial<EventLogLimits> = {},
): ParsedEventLog {
  const bounds: EventLogLimits = { ...DEFAULT_LIMITS, ...limits };
  if (bytes.byteLength > bounds.maxBytes) {
    throw new EventLogError(
      EventLogCode.TooLarge,
      `the log is ${bytes.byteLength} bytes, more than ${bounds.maxBytes}`,
    );
  }
  const r: Reader = new Reader(bytes, EventLogCode.Truncated);
  const specId = parseHeader(r, bounds);
  const events: ParsedEvent[] = [];
  let startupLocality: number | undefined;
  while (r.remaining > 0) {
    r.record = events.length + 1;
    if (events.length >= bounds.maxEvents) {
      r.fail(EventLogCode.TooLarge, 'event count', `more than ${bounds.maxEvents} events`);
    }
    const event = parseEvent(r, specId, bounds);
    const locality = startupLocalityOf(event, r);
    if (locality !== undefined) {
      // It sets PCR 0's starting value, so it means nothing once PCR 0 has been extended.
      if (startupLocality !== undefined) {
        r.fail(EventLogCode.Malformed, 'StartupLocality', 'appears twice');
      }
      if (events.some((e) => e.pcr === 0 && e.type !== EV_NO_ACTION)) {
        r.fail(EventLogCode.Malformed, 'StartupLocality', 'follows a measurement into PCR 0');
      }
      startupLocality = locality;
    }
    events.push(event);
  }
  return { specId, events, startupLocality };
}
