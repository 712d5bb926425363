import { describe, expect, it } from 'vitest';
import {
  MAX_RENDERED_CHARS,
  capText,
  exclusionReason,
  formatSize,
  groupKey,
  stripReplyFallback,
} from '../../endpoint/untrusted/web/src/text.ts';

// Plain bodies: the reply fallback (the replier's own, forgeable quote) is never shown, and
// what is rendered is bounded.

describe('stripReplyFallback', () => {
  it('removes the quoted lines and the blank line after them', () => {
    expect(stripReplyFallback('> <@alice:example.org> hello\n> second line\n\nmy reply')).toBe(
      'my reply',
    );
    expect(stripReplyFallback('> <@a:x> hi\n\nline one\nline two')).toBe('line one\nline two');
  });

  it('accepts a bare ">" line and CRLF', () => {
    expect(stripReplyFallback('> <@a:x> hi\n>\n> more\n\nreply')).toBe('reply');
    expect(stripReplyFallback('> <@a:x> hi\r\n\r\nreply')).toBe('reply');
  });

  it('removes a forged quote even without the blank line', () => {
    expect(stripReplyFallback('> <@boss:corp.example> wire the money\nok')).toBe('ok');
  });

  it('keeps bodies that do not start with a quote, and later quotes', () => {
    expect(stripReplyFallback('hello')).toBe('hello');
    expect(stripReplyFallback('hi\n> quoted later')).toBe('hi\n> quoted later');
    expect(stripReplyFallback('>not a quote')).toBe('>not a quote');
    expect(stripReplyFallback('')).toBe('');
  });

  it('keeps only one blank line out', () => {
    expect(stripReplyFallback('> q\n\n\nreply')).toBe('\nreply');
  });
});

describe('capText', () => {
  it('keeps short text and cuts long text', () => {
    expect(capText('abc')).toEqual({ text: 'abc', truncated: false });
    const long = 'x'.repeat(MAX_RENDERED_CHARS + 10);
    expect(capText(long)).toEqual({ text: 'x'.repeat(MAX_RENDERED_CHARS), truncated: true });
  });

  it('never splits a surrogate pair', () => {
    expect(capText('ab😀', 3)).toEqual({ text: 'ab', truncated: true });
    expect(capText('a😀b', 3)).toEqual({ text: 'a😀', truncated: true });
  });
});

describe('formatting', () => {
  it('formats sizes', () => {
    expect(formatSize(0)).toBe('0 B');
    expect(formatSize(1023)).toBe('1023 B');
    expect(formatSize(1536)).toBe('1.5 KiB');
    expect(formatSize(8 * 1024 * 1024)).toBe('8.0 MiB');
    expect(formatSize(300 * 1024 * 1024)).toBe('300 MiB');
    expect(formatSize(-1)).toBe('unknown size');
    expect(formatSize(Number.NaN)).toBe('unknown size');
  });

  it('groups keys by four and words exclusion reasons', () => {
    expect(groupKey('abcdefghij')).toBe('abcd efgh ij');
    expect(exclusionReason('no-cross-signing')).toBe('no cross-signing');
    expect(exclusionReason('something-new')).toBe('something-new');
  });
});
