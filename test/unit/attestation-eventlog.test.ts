import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_LIMITS,
  EventLogCode,
  EventLogError,
  EventType,
  HASH_ALGORITHMS,
  buildEventLog,
  checkReferenceState,
  comparePcrs,
  parseEventLog,
  referenceStateSchema,
  replayEventLog,
  type BuildEvent,
  type EventLogErrorCode,
  type HashAlgorithm,
  type ReferenceStateInput,
} from '../../attestation/eventlog/index.ts';

const run = promisify(execFile);
const work = mkdtempSync(join(tmpdir(), 'eventlog-test-'));
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

const sha256 = (data: Uint8Array): Buffer => createHash('sha256').update(data).digest();
const ALL: HashAlgorithm[] = ['sha1', 'sha256', 'sha384', 'sha512'];

/** What a launcher would measure: code, manifest, policy, then a separator. */
const LAUNCH: BuildEvent[] = [
  { pcr: 0, type: EventType.EV_S_CRTM_VERSION, data: Buffer.from('crtm 1.0\0') },
  { pcr: 14, type: EventType.EV_IPL, data: Buffer.from('endpoint code digest') },
  { pcr: 14, type: EventType.EV_EVENT_TAG, data: Buffer.from('{"manifest":1}') },
  { pcr: 15, type: EventType.EV_IPL, data: Buffer.from('policy.json') },
  { pcr: 14, type: EventType.EV_SEPARATOR, data: Buffer.alloc(4) },
];

/** The error a parse throws, failing the test if it throws anything else or nothing. */
function parseError(bytes: Uint8Array, limits = {}): EventLogError {
  try {
    parseEventLog(bytes, limits);
  } catch (e) {
    if (e instanceof EventLogError) return e;
    throw new Error(`not an EventLogError: ${String(e)}`, { cause: e });
  }
  throw new Error('parsed without error');
}

function expectCode(bytes: Uint8Array, code: EventLogErrorCode, message?: RegExp): EventLogError {
  const error = parseError(bytes);
  expect(error.code).toBe(code);
  if (message) expect(error.message).toMatch(message);
  // Never a dump of the log's bytes: no long hex runs in the message.
  expect(error.message).not.toMatch(/[0-9a-f]{16}/i);
  return error;
}

/** Layout of a built log (builder: uintnSize 2, no vendor info), to patch fields in place. */
function headerSize(algorithms: number): number {
  return 32 + 16 + 4 + 4 + 4 + 4 * algorithms + 1;
}
function eventSize(algorithms: readonly HashAlgorithm[], dataLength: number): number {
  return 12 + algorithms.reduce((n, a) => n + 2 + HASH_ALGORITHMS[a].size, 0) + 4 + dataLength;
}
/** Offsets of the Spec ID's first algorithm entry and of the first TCG_PCR_EVENT2. */
const ALG0 = 60;

const hexMap = (m: ReadonlyMap<number, Buffer>): Record<number, string> =>
  Object.fromEntries([...m].map(([k, v]) => [k, v.toString('hex')]));

describe('build → parse → replay', () => {
  it('round-trips every supported bank', () => {
    const built = buildEventLog({ algorithms: ALL, events: LAUNCH });
    const log = parseEventLog(built.bytes);
    expect(log.events).toHaveLength(LAUNCH.length);
    expect(log.specId.algorithms.map((a) => a.algorithm)).toEqual(ALL);
    expect(log.events[1]?.data.toString()).toBe('endpoint code digest');
    expect(log.events.map((e) => e.record)).toEqual([1, 2, 3, 4, 5]);
    for (const bank of ALL) {
      expect(hexMap(replayEventLog(log, bank))).toEqual(hexMap(built.pcrs[bank]));
    }
    expect([...built.pcrs.sha256.keys()].sort((a, b) => a - b)).toEqual([0, 14, 15]);
  });

  it('replays by hand: PCR = H(PCR || H(data)) from zeros', () => {
    const built = buildEventLog({
      algorithms: ['sha256'],
      events: [
        { pcr: 9, type: EventType.EV_IPL, data: Buffer.from('a') },
        { pcr: 9, type: EventType.EV_IPL, data: Buffer.from('b') },
      ],
    });
    const first = sha256(Buffer.concat([Buffer.alloc(32), sha256(Buffer.from('a'))]));
    const second = sha256(Buffer.concat([first, sha256(Buffer.from('b'))]));
    expect(replayEventLog(parseEventLog(built.bytes)).get(9)).toEqual(second);
    expect(built.events[1]?.digests.sha256).toEqual(sha256(Buffer.from('b')));
  });

  it('skips EV_NO_ACTION and starts PCR 0 at the StartupLocality', () => {
    const data = Buffer.from('crtm');
    const built = buildEventLog({
      algorithms: ['sha256'],
      startupLocality: 3,
      events: [
        { pcr: 0, type: EventType.EV_S_CRTM_VERSION, data },
        { pcr: 7, type: EventType.EV_NO_ACTION, data: Buffer.from('SP800-155 Event') },
      ],
    });
    const log = parseEventLog(built.bytes);
    expect(log.startupLocality).toBe(3);
    const start = Buffer.alloc(32);
    start[31] = 3;
    const replayed = replayEventLog(log);
    expect(replayed.get(0)).toEqual(sha256(Buffer.concat([start, sha256(data)])));
    expect(replayed.has(7)).toBe(false);
    expect(hexMap(replayed)).toEqual(hexMap(built.pcrs.sha256));
  });

  it('refuses to replay a bank the log does not declare', () => {
    const log = parseEventLog(buildEventLog({ algorithms: ['sha256'], events: LAUNCH }).bytes);
    expect(() => replayEventLog(log, 'sha384')).toThrow(
      expect.objectContaining({ code: EventLogCode.NoBank }),
    );
  });

  it('parses a declared algorithm it cannot replay (SM3) and replays the others', () => {
    const algorithms: HashAlgorithm[] = ['sha1', 'sha256'];
    const bytes = buildEventLog({ algorithms, events: LAUNCH.slice(0, 1) }).bytes;
    // Relabel the sha1 bank as SM3_256 (0x0012) in the header and in the event's digest.
    bytes.writeUInt16LE(0x0012, ALG0);
    bytes.writeUInt16LE(0x0012, headerSize(2) + 12);
    const log = parseEventLog(bytes);
    expect(log.specId.algorithms[0]).toEqual({
      algorithmId: 0x12,
      algorithm: undefined,
      digestSize: 20,
    });
    expect(replayEventLog(log, 'sha256').size).toBe(1);
    expect(() => replayEventLog(log, 'sha1')).toThrow(EventLogError);
  });

  it('refuses builder input it cannot encode', () => {
    expect(() => buildEventLog({ algorithms: [], events: [] })).toThrow(RangeError);
    expect(() => buildEventLog({ algorithms: ['sha256', 'sha256'], events: [] })).toThrow(
      RangeError,
    );
    const bad = { pcr: 24, type: 1, data: Buffer.alloc(0) };
    expect(() => buildEventLog({ algorithms: ['sha256'], events: [bad] })).toThrow(RangeError);
    const unnamed = { pcr: 1, type: 'EV_X' as 'EV_IPL', data: Buffer.alloc(0) };
    expect(() => buildEventLog({ algorithms: ['sha256'], events: [unnamed] })).toThrow(RangeError);
  });

  it('takes event types by name', () => {
    const data = Buffer.from('x');
    const byName = buildEventLog({
      algorithms: ['sha256'],
      events: [{ pcr: 8, type: 'EV_IPL', data }],
    });
    const byNumber = buildEventLog({
      algorithms: ['sha256'],
      events: [{ pcr: 8, type: EventType.EV_IPL, data }],
    });
    expect(byName.bytes).toEqual(byNumber.bytes);
    expect(byName.events[0]?.type).toBe(EventType.EV_IPL);
  });
});

/** `tpm2_eventlog`'s replayed PCRs: the YAML tail `pcrs: <bank>: <n> : 0x<hex>`. */
function pcrsFromYaml(yaml: string): Record<string, Record<number, string>> {
  const lines = yaml.split('\n');
  const start = lines.indexOf('pcrs:');
  expect(start).toBeGreaterThan(0);
  const banks: Record<string, Record<number, string>> = {};
  let bank: Record<number, string> | undefined;
  for (const line of lines.slice(start + 1)) {
    const header = /^ {2}(\w+):$/.exec(line);
    const value = /^ {4}(\d+)\s*:\s*0x([0-9a-f]+)$/i.exec(line);
    if (header?.[1] !== undefined) banks[header[1]] = bank = {};
    else if (value?.[1] !== undefined && value[2] !== undefined && bank) {
      bank[Number(value[1])] = value[2].toLowerCase();
    }
  }
  return banks;
}

describe('tpm2_eventlog (tpm2-tools) as an independent parser', () => {
  // tpm2-tools 5.4 extends EV_NO_ACTION digests and ignores StartupLocality (README.md), so
  // these logs have neither; StartupLocality is checked by hand above.
  const cases: [string, HashAlgorithm[], BuildEvent[]][] = [
    ['the launcher log, sha256', ['sha256'], LAUNCH],
    ['the launcher log, sha1+sha256+sha384', ['sha1', 'sha256', 'sha384'], LAUNCH],
    [
      '300 events over PCRs 0-15, sha256',
      ['sha256'],
      Array.from({ length: 300 }, (_, i) => ({
        pcr: i % 16,
        type: i % 2 === 0 ? EventType.EV_IPL : EventType.EV_EFI_ACTION,
        data: Buffer.from(`event ${i}`),
      })),
    ],
  ];
  it.each(cases)('%s', async (name, algorithms, events) => {
    const built = buildEventLog({ algorithms, events });
    const file = join(work, `${name.replace(/\W+/g, '-')}.bin`);
    writeFileSync(file, built.bytes);
    const { stdout } = await run('tpm2_eventlog', [file], { maxBuffer: 16 * 1024 * 1024 });
    const theirs = pcrsFromYaml(stdout);
    const log = parseEventLog(built.bytes);
    for (const bank of algorithms) {
      expect(theirs[bank]).toEqual(hexMap(replayEventLog(log, bank)));
    }
  });
});

describe('hostile logs fail with EventLogError', () => {
  const algorithms: HashAlgorithm[] = ['sha1', 'sha256'];
  const small = buildEventLog({ algorithms, startupLocality: 0, events: LAUNCH.slice(0, 3) });

  it('truncated at every byte: TRUNCATED, except at record boundaries', () => {
    const boundaries = new Map<number, number>();
    let end = headerSize(2);
    boundaries.set(end, 0);
    const sizes = [17, ...LAUNCH.slice(0, 3).map((e) => e.data.length)];
    sizes.forEach((size, i) => {
      end += eventSize(algorithms, size);
      boundaries.set(end, i + 1);
    });
    expect(end).toBe(small.bytes.length);
    for (let k = 0; k < small.bytes.length; k++) {
      const prefix = small.bytes.subarray(0, k);
      const events = boundaries.get(k);
      if (events === undefined) {
        expect(parseError(prefix).code, `prefix of ${k} bytes`).toBe(EventLogCode.Truncated);
      } else {
        expect(parseEventLog(prefix).events).toHaveLength(events);
      }
    }
  });

  it('a log cut at a record boundary parses, and the quote comparison catches it', () => {
    const full = parseEventLog(small.bytes);
    const cut = small.bytes.subarray(0, small.bytes.length - eventSize(algorithms, 14));
    const comparison = comparePcrs(parseEventLog(cut), replayEventLog(full));
    expect(comparison.mismatched).toEqual([14]);
  });

  it('a Spec ID digest size that disagrees with the algorithm', () => {
    const bytes = Buffer.from(small.bytes);
    bytes.writeUInt16LE(20, ALG0 + 6); // sha256 (the second entry) claims 20 bytes
    const error = expectCode(bytes, EventLogCode.DigestSize, /^record 0, algorithm 1 digestSize/);
    expect(error.record).toBe(0);
  });

  it('a digest for an algorithm the header does not declare', () => {
    const bytes = buildEventLog({ algorithms: ['sha256'], events: LAUNCH }).bytes;
    bytes.writeUInt16LE(HASH_ALGORITHMS.sha1.id, headerSize(1) + 12);
    const error = expectCode(bytes, EventLogCode.UnknownAlgorithm, /^record 1, digest 0 hashAlg/);
    expect(error.field).toBe('digest 0 hashAlg');
  });

  it('an event larger than the limit', () => {
    const big = {
      pcr: 14,
      type: EventType.EV_IPL,
      data: Buffer.alloc(DEFAULT_LIMITS.maxEventSize),
    };
    const ok = buildEventLog({ algorithms: ['sha256'], events: [big] }).bytes;
    expect(parseEventLog(ok).events[0]?.data.length).toBe(DEFAULT_LIMITS.maxEventSize);
    const tooBig = { ...big, data: Buffer.alloc(DEFAULT_LIMITS.maxEventSize + 1) };
    const bytes = buildEventLog({ algorithms: ['sha256'], events: [tooBig] }).bytes;
    expectCode(bytes, EventLogCode.TooLarge, /^record 1, eventSize/);
    expect(parseError(ok, { maxEventSize: 1024 }).code).toBe(EventLogCode.TooLarge);
  });

  it('an event size of 4 GiB - 1 is refused before it is read', () => {
    const bytes = buildEventLog({ algorithms: ['sha256'], events: LAUNCH.slice(0, 1) }).bytes;
    bytes.writeUInt32LE(0xffffffff, headerSize(1) + eventSize(['sha256'], 0) - 4);
    expectCode(bytes, EventLogCode.TooLarge, /eventSize/);
  });

  it('a huge digest count, a huge algorithm count', () => {
    const bytes = Buffer.from(small.bytes);
    bytes.writeUInt32LE(0xffffffff, headerSize(2) + 8);
    expectCode(bytes, EventLogCode.Malformed, /^record 1, digests count: 4294967295/);
    const header = Buffer.from(small.bytes);
    header.writeUInt32LE(0xffffffff, ALG0 - 4);
    expectCode(header, EventLogCode.TooLarge, /^record 0, numberOfAlgorithms/);
  });

  it('too many bytes, too many events', () => {
    expect(parseError(Buffer.alloc(DEFAULT_LIMITS.maxBytes + 1)).code).toBe(EventLogCode.TooLarge);
    const error = parseError(small.bytes, { maxEvents: 2 });
    expect(error.code).toBe(EventLogCode.TooLarge);
    expect(error.record).toBe(3);
  });

  it('structural lies: signature, header type, Spec ID size, PCR index, StartupLocality', () => {
    const patched = (offset: number, write: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(small.bytes);
      write(b.subarray(offset));
      return b;
    };
    expectCode(
      patched(32 + 14, (b) => b.write('2', 'latin1')),
      EventLogCode.Malformed,
      /Spec ID signature/,
    );
    expectCode(
      patched(4, (b) => b.writeUInt32LE(1)),
      EventLogCode.Malformed,
      /eventType/,
    );
    expectCode(
      patched(8, (b) => b.writeUInt8(1)),
      EventLogCode.Malformed,
      /digest: is not all zero/,
    );
    // A Spec ID event whose size is too small for its content is malformed, not truncated.
    expectCode(
      patched(28, (b) => b.writeUInt32LE(20)),
      EventLogCode.Malformed,
      /^record 0, /,
    );
    expectCode(
      patched(headerSize(2), (b) => b.writeUInt32LE(24)),
      EventLogCode.Malformed,
      /^record 1, pcrIndex: 24/,
    );
    // The StartupLocality event moved to PCR 1.
    expectCode(
      patched(headerSize(2), (b) => b.writeUInt32LE(1)),
      EventLogCode.Malformed,
      /StartupLocality/,
    );
    // Trailing garbage is the start of a record that is not there.
    expectCode(Buffer.concat([small.bytes, Buffer.of(0)]), EventLogCode.Truncated);
  });

  it('a StartupLocality after a PCR 0 measurement, or twice', () => {
    const marker = Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.of(3)]);
    const late = buildEventLog({
      algorithms: ['sha256'],
      events: [
        { pcr: 0, type: EventType.EV_S_CRTM_VERSION, data: Buffer.from('crtm') },
        { pcr: 0, type: EventType.EV_NO_ACTION, data: marker },
      ],
    });
    expectCode(late.bytes, EventLogCode.Malformed, /^record 2, StartupLocality: follows/);
    const twice = buildEventLog({
      algorithms: ['sha256'],
      startupLocality: 3,
      events: [{ pcr: 0, type: EventType.EV_NO_ACTION, data: marker }],
    });
    expectCode(twice.bytes, EventLogCode.Malformed, /appears twice/);
  });

  it('random corruption never escapes as anything but EventLogError', () => {
    let seed = 0x2545f491;
    const next = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return seed >>> 0;
    };
    for (let i = 0; i < 3000; i++) {
      const bytes = Buffer.from(small.bytes);
      for (let j = 0; j <= next() % 4; j++) bytes[next() % bytes.length] = next() & 0xff;
      try {
        const log = parseEventLog(bytes);
        replayEventLog(log, 'sha256');
      } catch (e) {
        expect(e).toBeInstanceOf(EventLogError);
      }
    }
  });
});

describe('replay against quoted PCRs', () => {
  const built = buildEventLog({ algorithms: ['sha256'], events: LAUNCH });
  const log = parseEventLog(built.bytes);

  it('matches a quote of the PCRs it covers', () => {
    const comparison = comparePcrs(log, built.pcrs.sha256);
    expect(comparison).toEqual({
      matched: [0, 14, 15],
      mismatched: [],
      notCovered: [],
      notQuoted: [],
    });
  });

  it('reports a quoted PCR that differs, one it does not cover, one not quoted', () => {
    const quoted = new Map([
      [0, built.pcrs.sha256.get(0) ?? Buffer.alloc(0)],
      [14, sha256(Buffer.from('something else'))],
      [7, Buffer.alloc(32)],
    ]);
    expect(comparePcrs(log, quoted)).toEqual({
      matched: [0],
      mismatched: [14],
      notCovered: [7],
      notQuoted: [15],
    });
  });

  it('a bit flip anywhere in a measured digest changes that PCR', () => {
    const offsets: { offset: number; pcr: number }[] = [];
    let at = headerSize(1);
    for (const e of LAUNCH) {
      offsets.push({ offset: at + 14, pcr: e.pcr }); // after pcrIndex, eventType, count, hashAlg
      at += eventSize(['sha256'], e.data.length);
    }
    for (const { offset, pcr } of offsets) {
      for (let bit = 0; bit < 32 * 8; bit++) {
        const bytes = Buffer.from(built.bytes);
        bytes[offset + (bit >> 3)] = (bytes[offset + (bit >> 3)] ?? 0) ^ (1 << (bit & 7));
        const comparison = comparePcrs(parseEventLog(bytes), built.pcrs.sha256);
        expect(comparison.mismatched).toEqual([pcr]);
      }
    }
  });
});

describe('reference state', () => {
  const built = buildEventLog({ algorithms: ['sha1', 'sha256'], events: LAUNCH });
  const log = parseEventLog(built.bytes);
  const quoted = built.pcrs.sha256;
  const hex = (data: Uint8Array): string => sha256(data).toString('hex');
  const pcr14 = LAUNCH.filter((e) => e.pcr === 14).map((e) => ({
    type: e.type,
    digest: hex(e.data),
  }));
  const good: ReferenceStateInput = {
    version: 1,
    pcrs: {
      '0': { values: [(quoted.get(0) ?? Buffer.alloc(0)).toString('hex')] },
      '14': { events: pcr14 },
    },
  };
  const check = (input: ReferenceStateInput, q: ReadonlyMap<number, Buffer> = quoted) =>
    checkReferenceState(referenceStateSchema.parse(input), log, q);

  it('accepts a log that matches', () => {
    expect(check(good)).toEqual([]);
    expect(referenceStateSchema.parse(good).bank).toBe('sha256');
  });

  it('accepts event types by name and the README example validates', () => {
    const named: ReferenceStateInput = {
      version: 1,
      pcrs: { '15': { events: [{ type: 'EV_IPL', digest: hex(Buffer.from('policy.json')) }] } },
    };
    expect(check(named)).toEqual([]);
    const readme = readFileSync(
      new URL('../../attestation/eventlog/README.md', import.meta.url),
      'utf8',
    );
    const example = /```json\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
    expect(referenceStateSchema.safeParse(JSON.parse(example)).success).toBe(true);
  });

  it('refuses an event not in the accepted list, naming the PCR and the record', () => {
    const partial: ReferenceStateInput = { version: 1, pcrs: { '14': { events: pcr14.slice(1) } } };
    expect(check(partial)).toEqual([
      expect.objectContaining({
        code: 'REFERENCE_UNKNOWN_EVENT',
        pcr: 14,
        index: 2,
        eventType: EventType.EV_IPL,
      }),
    ]);
    // Same digest, other type: still unknown.
    const retyped = pcr14.map((e) => ({ ...e, type: EventType.EV_ACTION }));
    expect(check({ version: 1, pcrs: { '14': { events: retyped } } })).toHaveLength(3);
  });

  it('refuses a wrong final value', () => {
    const wrong: ReferenceStateInput = { version: 1, pcrs: { '0': { values: ['00'.repeat(32)] } } };
    expect(check(wrong)).toEqual([
      expect.objectContaining({ code: 'REFERENCE_PCR_VALUE', pcr: 0 }),
    ]);
  });

  it('refuses a log that does not replay to the quote, and unquoted or unmeasured PCRs', () => {
    const tampered = new Map(quoted);
    tampered.set(14, Buffer.alloc(32, 1));
    tampered.delete(0);
    tampered.set(9, Buffer.alloc(32));
    const problems = check(
      { version: 1, pcrs: { ...good.pcrs, '9': { events: pcr14 } } },
      tampered,
    );
    expect(problems.map((p) => [p.code, 'pcr' in p ? p.pcr : undefined])).toEqual([
      ['EVENTLOG_REPLAY_MISMATCH', 14],
      ['REFERENCE_PCR_NOT_QUOTED', 0],
      ['REFERENCE_PCR_NOT_MEASURED', 9],
    ]);
  });

  it('reports a bank the log lacks', () => {
    const sha384: ReferenceStateInput = {
      version: 1,
      bank: 'sha384',
      pcrs: { '0': { values: ['00'.repeat(48)] } },
    };
    expect(check(sha384)).toEqual([expect.objectContaining({ code: 'REFERENCE_BANK_ABSENT' })]);
  });

  it.each<[string, unknown]>([
    ['version 2', { ...good, version: 2 }],
    ['no PCRs', { version: 1, pcrs: {} }],
    ['PCR 24', { version: 1, pcrs: { '24': { values: ['00'.repeat(32)] } } }],
    ['both forms', { version: 1, pcrs: { '0': { values: ['00'.repeat(32)], events: pcr14 } } }],
    [
      'an event without a digest (no wildcard)',
      { version: 1, pcrs: { '14': { events: [{ type: 13 }] } } },
    ],
    ['a wildcard digest', { version: 1, pcrs: { '14': { events: [{ type: 13, digest: '*' }] } } }],
    ['a short digest', { version: 1, pcrs: { '14': { values: ['00'.repeat(20)] } } }],
    ['uppercase hex', { version: 1, pcrs: { '0': { values: ['AA'.repeat(32)] } } }],
    [
      'EV_NO_ACTION',
      { version: 1, pcrs: { '0': { events: [{ type: 3, digest: '00'.repeat(32) }] } } },
    ],
    [
      'an unknown type name',
      { version: 1, pcrs: { '0': { events: [{ type: 'EV_X', digest: '00'.repeat(32) }] } } },
    ],
    ['an unknown field', { ...good, extra: true }],
  ])('the schema refuses %s', (_, input) => {
    expect(referenceStateSchema.safeParse(input).success).toBe(false);
  });
});
