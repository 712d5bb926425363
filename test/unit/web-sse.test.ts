import { describe, expect, it } from 'vitest';
import { SSE_HEARTBEAT, sseFrame } from '../../endpoint/untrusted/gateway/sse.ts';
import {
  MAX_SSE_BUFFER_CHARS,
  SseError,
  type SseFrame,
  SseParser,
  lastEventIdHeader,
  reconnectDelayMs,
} from '../../endpoint/untrusted/web/src/sse.ts';

// The web UI reads the event stream with fetch (EventSource cannot send the Authorization
// header), so it frames Server-Sent Events itself, as the WHATWG spec does.

function parseAll(text: string): SseFrame[] {
  return new SseParser().push(text);
}

/** The same text fed one character at a time: the framing must not depend on chunking. */
function parseByChar(text: string): SseFrame[] {
  const parser = new SseParser();
  const frames: SseFrame[] = [];
  for (const ch of text) frames.push(...parser.push(ch));
  return frames;
}

describe('SseParser', () => {
  it('reads id, event and data, and a blank line ends the frame', () => {
    expect(parseAll('id: 7\nevent: message\ndata: {"a":1}\n\n')).toEqual([
      { kind: 'event', event: 'message', data: '{"a":1}', id: '7' },
    ]);
  });

  it('reads the gateway’s own frames and heartbeats', () => {
    const text =
      ': connected\n\n' +
      sseFrame('message', { seq: 3, type: 'message' }, 3) +
      SSE_HEARTBEAT +
      sseFrame('gap', { after: 1, cursor: 9 }) +
      sseFrame('error', { error: { code: 'SLOW_READER', message: 'm' }, lastEventId: 3 }, 3);
    const frames = parseAll(text);
    expect(frames).toEqual([
      { kind: 'comment', text: 'connected' },
      { kind: 'event', event: 'message', data: '{"seq":3,"type":"message"}', id: '3' },
      { kind: 'comment', text: 'heartbeat' },
      { kind: 'event', event: 'gap', data: '{"after":1,"cursor":9}', id: '3' },
      {
        kind: 'event',
        event: 'error',
        data: '{"error":{"code":"SLOW_READER","message":"m"},"lastEventId":3}',
        id: '3',
      },
    ]);
    expect(parseByChar(text)).toEqual(frames);
  });

  it('joins several data lines with newlines', () => {
    expect(parseAll('data: a\ndata: b\ndata:c\n\n')).toEqual([
      { kind: 'event', event: 'message', data: 'a\nb\nc', id: undefined },
    ]);
  });

  it('accepts CRLF, CR and LF line ends, even split between chunks', () => {
    const expected = [{ kind: 'event', event: 'x', data: 'y', id: '1' }];
    for (const text of [
      'id: 1\r\nevent: x\r\ndata: y\r\n\r\n',
      'id: 1\revent: x\rdata: y\r\r',
      'id: 1\nevent: x\ndata: y\n\n',
    ]) {
      expect(parseAll(text)).toEqual(expected);
      expect(parseByChar(text)).toEqual(expected);
    }
    const parser = new SseParser();
    expect(parser.push('data: y\r')).toEqual([]);
    expect(parser.push('')).toEqual([]);
    expect(parser.push('\n\r\n')).toEqual([
      { kind: 'event', event: 'message', data: 'y', id: undefined },
    ]);
  });

  it('keeps multi-byte text and a value without the leading space', () => {
    expect(parseAll('data:{"k":"é🙂"}\n\n')).toEqual([
      { kind: 'event', event: 'message', data: '{"k":"é🙂"}', id: undefined },
    ]);
    expect(parseAll('data:  two spaces\n\n')[0]).toMatchObject({ data: ' two spaces' });
  });

  it('dispatches nothing for a frame without data, but remembers its id', () => {
    const parser = new SseParser();
    expect(parser.push('id: 5\nevent: nothing\n\n')).toEqual([]);
    expect(parser.lastEventId).toBe('5');
    expect(parser.push('data: x\n\n')).toEqual([
      { kind: 'event', event: 'message', data: 'x', id: '5' },
    ]);
  });

  it('dispatches an empty data field', () => {
    expect(parseAll('data\n\n')).toEqual([
      { kind: 'event', event: 'message', data: '', id: undefined },
    ]);
  });

  it('ignores ids with NUL, unknown fields and a BOM, and reads retry', () => {
    const parser = new SseParser();
    expect(
      parser.push('\uFEFFid: 1\nid: 2\u0000\nfoo: bar\nretry: 2500\nretry: x\ndata: d\n\n'),
    ).toEqual([{ kind: 'event', event: 'message', data: 'd', id: '1' }]);
    expect(parser.retry).toBe(2500);
  });

  it('resets the event type after each frame; an empty id clears it', () => {
    const parser = new SseParser();
    expect(
      parser.push('event: a\ndata: 1\n\ndata: 2\n\n').map((f) => f.kind === 'event' && f.event),
    ).toEqual(['a', 'message']);
    parser.push('id: 9\ndata: 3\n\n');
    expect(parser.lastEventId).toBe('9');
    parser.push('id\ndata: 4\n\n');
    expect(parser.lastEventId).toBeUndefined();
  });

  it('holds an unfinished frame until its blank line', () => {
    const parser = new SseParser();
    expect(parser.push('id: 1\nevent: message\ndata: {"a"')).toEqual([]);
    expect(parser.push(':1}\n')).toEqual([]);
    expect(parser.push('\n')).toEqual([
      { kind: 'event', event: 'message', data: '{"a":1}', id: '1' },
    ]);
  });

  it('refuses a frame too large to be ours', () => {
    const parser = new SseParser();
    expect(() => parser.push(`data: ${'x'.repeat(MAX_SSE_BUFFER_CHARS)}`)).toThrow(SseError);
    const lines = new SseParser();
    const line = `data: ${'y'.repeat(1024 * 1024)}\n`;
    expect(() => {
      for (let i = 0; i < 5; i++) lines.push(line);
    }).toThrow(SseError);
  });
});

describe('reconnecting', () => {
  it('backs off exponentially from 1 s to at most 30 s', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 50].map(reconnectDelayMs)).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]);
    expect(reconnectDelayMs(-3)).toBe(1000);
  });

  it('sends Last-Event-ID only in the shape the gateway accepts', () => {
    expect(lastEventIdHeader('42')).toBe('42');
    expect(lastEventIdHeader('0')).toBe('0');
    expect(lastEventIdHeader('-1')).toBe('-1');
    expect(lastEventIdHeader(undefined)).toBeUndefined();
    expect(lastEventIdHeader('007')).toBeUndefined();
    expect(lastEventIdHeader('1\r\nx: y')).toBeUndefined();
    expect(lastEventIdHeader('1'.repeat(16))).toBeUndefined();
  });
});
