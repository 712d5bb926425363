import { RpcCode, RpcError } from './errors.ts';

/**
 * Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. The length is
 * checked against the bound before any payload is buffered, so a peer cannot make us allocate
 * more than maxFrameBytes.
 */
export const HEADER_BYTES = 4;
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;

export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, HEADER_BYTES);
  return frame;
}

/** Incremental decoder for a byte stream. After an oversize header it refuses further input. */
export class FrameDecoder {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #failed = false;

  constructor(maxFrameBytes: number) {
    this.#max = maxFrameBytes;
  }

  /** Returns the complete frames in `chunk`; throws FRAME_TOO_LARGE once, then nothing more. */
  push(chunk: Buffer): Buffer[] {
    if (this.#failed) return [];
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Buffer[] = [];
    for (;;) {
      if (this.#buffered < HEADER_BYTES) break;
      const head = this.#peek(HEADER_BYTES);
      const length = head.readUInt32BE(0);
      if (length > this.#max) {
        this.#failed = true;
        this.#chunks = [];
        this.#buffered = 0;
        throw new RpcError(
          RpcCode.FrameTooLarge,
          `frame of ${length} bytes exceeds the limit of ${this.#max} bytes`,
        );
      }
      if (this.#buffered < HEADER_BYTES + length) break;
      const all = this.#take(HEADER_BYTES + length);
      frames.push(all.subarray(HEADER_BYTES));
    }
    return frames;
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0];
    if (first && first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.#chunks);
    this.#chunks = [joined];
    return joined.subarray(0, n);
  }

  #take(n: number): Buffer {
    const joined =
      this.#chunks.length === 1 ? (this.#chunks[0] as Buffer) : Buffer.concat(this.#chunks);
    const out = Buffer.from(joined.subarray(0, n));
    const rest = joined.subarray(n);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#buffered = rest.length;
    return out;
  }
}
