/** Big-endian marshalling of TPM 2.0 structures (TPM 2.0 Part 2). */
export class Writer {
  #parts: Buffer[] = [];
  #length = 0;

  u8(v: number): this {
    return this.#push(Buffer.from([v & 0xff]));
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    return this.#push(b);
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    return this.#push(b);
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    return this.#push(b);
  }
  bytes(v: Uint8Array): this {
    return this.#push(Buffer.from(v));
  }
  /** A TPM2B: u16 size, then the bytes. */
  tpm2b(v: Uint8Array): this {
    if (v.length > 0xffff) throw new RangeError('TPM2B too large');
    return this.u16(v.length).bytes(v);
  }
  /** A TPM2B wrapping a marshalled structure (TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, ...). */
  sized(build: (w: Writer) => void): this {
    const inner = new Writer();
    build(inner);
    return this.tpm2b(inner.done());
  }
  get length(): number {
    return this.#length;
  }
  done(): Buffer {
    return Buffer.concat(this.#parts, this.#length);
  }
  #push(b: Buffer): this {
    this.#parts.push(b);
    this.#length += b.length;
    return this;
  }
}

export class Reader {
  readonly #buf: Buffer;
  #pos = 0;

  constructor(buf: Uint8Array) {
    this.#buf = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  get offset(): number {
    return this.#pos;
  }
  get remaining(): number {
    return this.#buf.length - this.#pos;
  }
  u8(): number {
    return this.#take(1).readUInt8(0);
  }
  u16(): number {
    return this.#take(2).readUInt16BE(0);
  }
  u32(): number {
    return this.#take(4).readUInt32BE(0);
  }
  u64(): bigint {
    return this.#take(8).readBigUInt64BE(0);
  }
  bytes(n: number): Buffer {
    return Buffer.from(this.#take(n));
  }
  tpm2b(): Buffer {
    return this.bytes(this.u16());
  }
  rest(): Buffer {
    return this.bytes(this.remaining);
  }
  #take(n: number): Buffer {
    if (n < 0 || this.#pos + n > this.#buf.length) {
      throw new RangeError(`TPM structure truncated: wanted ${n} bytes at offset ${this.#pos}`);
    }
    const out = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }
}
