import { describe, expect, it } from 'vitest';
import { ApiError } from '../../endpoint/untrusted/web/src/errors.ts';
import { UNSAFE_ID, path, seg } from '../../endpoint/untrusted/web/src/paths.ts';
import { renameForParse } from '../../endpoint/untrusted/web/src/prefilter.ts';
import {
  MAX_SSE_BUFFER_CHARS,
  SseParser,
  lastEventIdHeader,
} from '../../endpoint/untrusted/web/src/sse.ts';
import { linkTarget } from '../../endpoint/untrusted/web/src/links.ts';

// Security review: API paths built from hostile ids, the SSE framing, the prefilter's cost and
// the link rules. The ids that are not well-formed UTF-16 and the quadratic line search were
// found failing, and are fixed.

describe('paths from hostile ids', () => {
  it('refuses an id with a lone surrogate with UNSAFE_ID (the refusal callers skip), not a URIError', () => {
    // contacts-view.ts loadVerdicts() skips UNSAFE_ID ids but stops its worker on any other
    // error: were it a URIError, three devices with such ids (a hostile homeserver's
    // /keys/query) would stop every attestation verdict from loading.
    let thrown: unknown;
    try {
      seg('DEV\uD800');
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(ApiError);
    expect((thrown as ApiError).code).toBe(UNSAFE_ID);
    for (const id of ['\uDC00', 'a\uD800\uD800b', '\uDFFF\uD800']) {
      expect(() => path`/v1/contacts/${id}/devices`, JSON.stringify(id)).toThrow(ApiError);
    }
    expect(seg('\u{1F600}')).toBe('%F0%9F%98%80'); // a well-formed pair is fine
  });

  it('keeps every hostile id inside its one segment of its route', () => {
    const ids = [
      '..',
      '.',
      '%2e%2e',
      '.%2E',
      '../../v1/outbox/failed',
      '..%2f..%2f',
      'a/b',
      'a\\b',
      'a?x=1',
      'a#x',
      '%00',
      'a\u0000b',
      '\u2025',
      '\uFF0E\uFF0E',
      ' ..',
      '..\t',
      '@u:x/../../../status',
    ];
    for (const id of ids) {
      let built: string;
      try {
        built = path`/v1/contacts/${id}/devices/${id}/attestation`;
      } catch (e) {
        expect(e, JSON.stringify(id)).toBeInstanceOf(ApiError);
        continue;
      }
      const url = new URL(built, 'http://127.0.0.1:8008');
      const parts = url.pathname.split('/');
      expect(parts.length, JSON.stringify(id)).toBe(7);
      expect([parts[1], parts[2], parts[4], parts[6]]).toEqual([
        'v1',
        'contacts',
        'devices',
        'attestation',
      ]);
      expect(decodeURIComponent(parts[3] ?? '')).toBe(id);
      expect(url.search + url.hash).toBe('');
    }
  });
});

describe('SSE framing', () => {
  it('ends the stream on a line that never ends, or data that is never dispatched', () => {
    const p = new SseParser();
    expect(() => {
      for (let i = 0; i < 5; i++) p.push('x'.repeat(1024 * 1024));
    }).toThrow(/too large/);
    const q = new SseParser();
    expect(() => {
      for (let i = 0; i < 100_000; i++) q.push(`data: ${'z'.repeat(60)}\n`);
    }).toThrow(/too large/);
  });

  it('frames a long line in small chunks in time linear in its length', () => {
    // Searching the whole buffer again on each push, a MAX_SSE_BUFFER_CHARS line in 1 KiB
    // chunks would be ~4,000 scans of up to 4 MiB (seconds of a blocked UI thread). Only the new
    // chunk is searched.
    const p = new SseParser();
    const chunk = 'x'.repeat(1024);
    const started = performance.now();
    try {
      for (let sent = 0; sent <= MAX_SSE_BUFFER_CHARS; sent += chunk.length) p.push(chunk);
    } catch {
      // the cap: expected at the end
    }
    expect(performance.now() - started).toBeLessThan(1500);
  }, 60_000);

  it('still frames lines after a long one that arrived in pieces', () => {
    const p = new SseParser();
    const out = [
      ...p.push('data: '),
      ...p.push('a'.repeat(5000)),
      ...p.push('b\r'),
      ...p.push('\ndata: c'),
      ...p.push('d\n'),
      ...p.push('\n'),
    ];
    expect(out).toEqual([
      { kind: 'event', event: 'message', data: `${'a'.repeat(5000)}b\ncd`, id: undefined },
    ]);
  });

  it('frames CR, LF and CRLF, split anywhere, and never lets data forge a frame', () => {
    const frames = (chunks: string[]) => {
      const p = new SseParser();
      return chunks.flatMap((c) => p.push(c));
    };
    expect(frames(['data: a\r', '\ndata: b\r', '\r', '\n'])).toEqual([
      { kind: 'event', event: 'message', data: 'a\nb', id: undefined },
    ]);
    // The gateway writes JSON: a hostile body's newlines are escaped, and U+2028 is not a break.
    const hostile = JSON.stringify({ body: 'x\n\nevent: error\ndata: {}\r\n\u2028' });
    const out = frames([`id: 7\nevent: message\ndata: ${hostile}\n\n`]);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ event: 'message', data: hostile, id: '7' });
    expect(lastEventIdHeader('7\r\nx: y')).toBeUndefined();
    expect(lastEventIdHeader('1e3')).toBeUndefined();
  });
});

describe('prefilter and links', () => {
  it('is linear on hostile HTML (no catastrophic backtracking)', () => {
    const n = 256 * 1024;
    for (const html of [
      '<a "'.repeat(n / 4),
      `<a ${' on'.repeat(n / 3)}`,
      '<a x="'.repeat(n / 6),
      '<a \'"'.repeat(n / 5),
    ]) {
      const started = performance.now();
      renameForParse(html);
      expect(performance.now() - started).toBeLessThan(1000);
    }
  });

  it('renames what the parser would meet as style or on* (quoted values untouched)', () => {
    expect(renameForParse('<p/onclick=x style="a" title="onload=1">')).toBe(
      '<p/mte-x-onclick=x mte-x-style="a" title="onload=1">',
    );
    expect(renameForParse('<STYLE>x</STYLE><base href=y>')).toBe(
      '<mte-x-STYLE>x</mte-x-STYLE><mte-x-base href=y>',
    );
  });

  it('refuses schemes hidden by controls, white space or backslashes', () => {
    for (const href of [
      'java\tscript:alert(1)',
      'javascript:alert(1)',
      'https://x.example/\u0085',
      'https://x.example\\@evil.example/',
      'https://evil.example\u3000/',
      'https://user@evil.example/',
      'https:///evil.example',
      'http://x.example/',
    ]) {
      expect(linkTarget(href).kind, JSON.stringify(href)).toBe('none');
    }
    expect(linkTarget(' https://x.example ')).toEqual({
      kind: 'https',
      href: 'https://x.example/',
    });
  });
});
