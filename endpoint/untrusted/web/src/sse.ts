/**
 * Server-Sent Events framing (the WHATWG "event stream interpretation"), for a stream read with
 * fetch: EventSource cannot send the Authorization header. Pure: stream.ts feeds it text.
 */

export interface SseEvent {
  kind: 'event';
  /** The `event:` field; `message` when there was none. */
  event: string;
  data: string;
  /** The last event id as of this event (`id:` of this frame or an earlier one), if any. */
  id: string | undefined;
}

export interface SseComment {
  kind: 'comment';
  text: string;
}

export type SseFrame = SseEvent | SseComment;

/** A line (or a frame's data) longer than this ends the stream: nothing legitimate is. */
export const MAX_SSE_BUFFER_CHARS = 4 * 1024 * 1024;

export class SseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SseError';
  }
}

export class SseParser {
  #buffer = '';
  #data = '';
  #hasData = false;
  #event = '';
  #lastId: string | undefined;
  #retry: number | undefined;
  #first = true;
  /** The previous chunk ended in CR: a LF starting this one belongs to it. */
  #skipLf = false;

  /** The last event id seen so far (what `Last-Event-ID` sends on reconnecting). */
  get lastEventId(): string | undefined {
    return this.#lastId;
  }

  /** The last `retry:` the server asked for, in ms. */
  get retry(): number | undefined {
    return this.#retry;
  }

  /** Feeds decoded text; returns the frames it completed. */
  push(text: string): SseFrame[] {
    let chunk = text;
    if (this.#first && chunk !== '') {
      if (chunk.startsWith('\uFEFF')) chunk = chunk.slice(1);
      this.#first = false;
    }
    if (chunk === '') return [];
    if (this.#skipLf && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.#skipLf = false;
    // What is left of the buffer holds no line break (each one ends a line, taken below): only
    // the new text needs searching, so a long line in small chunks costs time linear in its
    // length. A chunk without a break is only appended: searching the joined buffer would
    // make the engine copy it whole on every push. (The search starts one character back, in
    // case a CR and its LF were ever split across chunks.)
    let from = Math.max(0, this.#buffer.length - 1);
    this.#buffer += chunk;
    if (!chunk.includes('\r') && !chunk.includes('\n')) {
      this.#checkSize();
      return [];
    }
    const frames: SseFrame[] = [];
    let start = 0;
    for (;;) {
      const cr = this.#buffer.indexOf('\r', Math.max(start, from));
      const lf = this.#buffer.indexOf('\n', Math.max(start, from));
      if (cr === -1 && lf === -1) break;
      let end: number;
      let next: number;
      if (lf !== -1 && (cr === -1 || lf < cr)) {
        end = lf;
        next = lf + 1;
      } else {
        end = cr;
        if (cr + 1 < this.#buffer.length) {
          next = this.#buffer[cr + 1] === '\n' ? cr + 2 : cr + 1;
        } else {
          next = cr + 1;
          this.#skipLf = true;
        }
      }
      const frame = this.#line(this.#buffer.slice(start, end));
      if (frame) frames.push(frame);
      start = next;
      from = next;
    }
    this.#buffer = this.#buffer.slice(start);
    this.#checkSize();
    return frames;
  }

  #checkSize(): void {
    if (this.#buffer.length + this.#data.length > MAX_SSE_BUFFER_CHARS) {
      throw new SseError('an event stream frame is too large');
    }
  }

  #line(line: string): SseFrame | undefined {
    if (line === '') return this.#dispatch();
    if (line.startsWith(':')) return { kind: 'comment', text: line.slice(1).replace(/^ /, '') };
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.#event = value;
        break;
      case 'data':
        this.#data += this.#hasData ? `\n${value}` : value;
        this.#hasData = true;
        break;
      case 'id':
        if (!value.includes('\u0000')) this.#lastId = value === '' ? undefined : value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.#retry = Number(value);
        break;
      default:
        // unknown fields are ignored
        break;
    }
    return undefined;
  }

  #dispatch(): SseEvent | undefined {
    const hasData = this.#hasData;
    const event: SseEvent = {
      kind: 'event',
      event: this.#event === '' ? 'message' : this.#event,
      data: this.#data,
      id: this.#lastId,
    };
    this.#data = '';
    this.#hasData = false;
    this.#event = '';
    return hasData ? event : undefined;
  }
}

/** Reconnection delay after `attempt` failures in a row: 1 s, 2 s, 4 s ... at most 30 s. */
export function reconnectDelayMs(attempt: number): number {
  const n = Math.max(0, Math.min(attempt, 10));
  return Math.min(30_000, 1000 * 2 ** n);
}

/** The `Last-Event-ID` to send: only an id of the shape the gateway accepts. */
export function lastEventIdHeader(id: string | undefined): string | undefined {
  return id !== undefined && /^(?:-1|0|[1-9][0-9]{0,14})$/.test(id) ? id : undefined;
}
