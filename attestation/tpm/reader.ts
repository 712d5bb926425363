/**
 * A bounds-checked big-endian reader for TPM structures that arrive from a peer. Evidence is
 * attacker-controlled: every read is checked against what is left, sizes are bounded before
 * anything is allocated, and a failure names the field, never the bytes.
 */
export class TpmParseError extends Error {
  readonly field: string;
  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'TpmParseError';
    this.field = field;
  }
}

export class Reader {
  readonly #buf: Buffer;
  #offset = 0;
  readonly #what: string;

  constructor(bytes: Uint8Array, what: string) {
    this.#buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#what = what;
  }

  get offset(): number {
    return this.#offset;
  }

  #take(n: number, field: string): Buffer {
    if (this.#offset + n > this.#buf.length) {
      throw new TpmParseError(`${this.#what}.${field}`, 'truncated');
    }
    const out = this.#buf.subarray(this.#offset, this.#offset + n);
    this.#offset += n;
    return out;
  }

  u8(field: string): number {
    return this.#take(1, field).readUInt8(0);
  }
  u16(field: string): number {
    return this.#take(2, field).readUInt16BE(0);
  }
  u32(field: string): number {
    return this.#take(4, field).readUInt32BE(0);
  }
  u64(field: string): bigint {
    return this.#take(8, field).readBigUInt64BE(0);
  }
  bytes(n: number, field: string): Buffer {
    return this.#take(n, field);
  }
  /** A TPM2B: u16 size, then that many bytes, at most `max`. */
  sized(field: string, max: number): Buffer {
    const n = this.u16(`${field}.size`);
    if (n > max) throw new TpmParseError(`${this.#what}.${field}`, `size ${n} exceeds ${max}`);
    return this.#take(n, field);
  }
  /** Everything must have been read: trailing bytes are a different structure, not ours. */
  end(): void {
    if (this.#offset !== this.#buf.length) {
      throw new TpmParseError(
        this.#what,
        `${this.#buf.length - this.#offset} unexpected trailing bytes`,
      );
    }
  }
}
