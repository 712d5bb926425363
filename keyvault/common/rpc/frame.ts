import { RpcCode, RpcError } from './errors.ts';

/**
 * Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. The length is
 * checked against the bound as soon as its 4 bytes are in, before anything is allocated for
 * the payload, so a peer announcing 64 MiB or 4 GiB costs us 4 bytes and a refusal.
 */
export const HEADER_BYTES = 4;
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;

export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, HEADER_BYTES);
  return frame;
}

/**
 * Incremental decoder for a byte stream. After an oversize header it refuses further input.
 *
 * A frame's payload is copied into one buffer of the announced (and already bounded) size as
 * it arrives. Keeping the chunks and joining them at the end would cost an object per chunk: a
 * peer trickling a 1 MiB frame a byte at a time would then hold about a million of them.
 */
export class FrameDecoder {
  readonly #max: number;
  readonly #header = Buffer.alloc(HEADER_BYTES);
  #headerFill = 0;
  #body: Buffer | undefined;
  #bodyFill = 0;
  #failed = false;

  constructor(maxFrameBytes: number) {
    this.#max = maxFrameBytes;
  }

  /** Bytes held for a frame not yet complete (at most the bound plus the header). */
  get pendingBytes(): number {
    return this.#headerFill + this.#bodyFill;
  }

  /** Returns the complete frames in `chunk`; throws FRAME_TOO_LARGE once, then nothing more. */
  push(chunk: Buffer): Buffer[] {
    if (this.#failed) return [];
    const frames: Buffer[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.#body === undefined) {
        const n = Math.min(HEADER_BYTES - this.#headerFill, chunk.length - at);
        chunk.copy(this.#header, this.#headerFill, at, at + n);
        this.#headerFill += n;
        at += n;
        if (this.#headerFill < HEADER_BYTES) break;
        this.#headerFill = 0;
        const length = this.#header.readUInt32BE(0);
        if (length > this.#max) {
          this.#failed = true;
          throw new RpcError(
            RpcCode.FrameTooLarge,
            `frame of ${length} bytes exceeds the limit of ${this.#max} bytes`,
          );
        }
        if (chunk.length - at >= length) {
          // The whole payload is here: one copy, so the frame does not pin the chunk.
          frames.push(Buffer.from(chunk.subarray(at, at + length)));
          at += length;
          continue;
        }
        this.#body = Buffer.allocUnsafe(length);
        this.#bodyFill = 0;
      }
      const body = this.#body;
      const n = Math.min(body.length - this.#bodyFill, chunk.length - at);
      chunk.copy(body, this.#bodyFill, at, at + n);
      this.#bodyFill += n;
      at += n;
      if (this.#bodyFill === body.length) {
        frames.push(body);
        this.#body = undefined;
        this.#bodyFill = 0;
      }
    }
    return frames;
  }
}
