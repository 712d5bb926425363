import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  MAX_UPLOAD_BYTES,
  REACTION_KEYS,
  failedKindWord,
  isOfferedReaction,
  uploadContentType,
  uploadProblem,
  uploadQuery,
} from '../../endpoint/untrusted/web/src/actions.ts';
import { MAX_ATTACHMENT_BYTES, MAX_REACTION_CHARS } from '../../endpoint/contract.ts';
import { path } from '../../endpoint/untrusted/web/src/paths.ts';
import { contentType, fileName, sendKind } from '../../endpoint/contract-messages.ts';

// What the page's uploads, reactions and failed-send buttons send, worked out before a call:
// only what the contract takes, and the page's controls where the tests look for them.

describe('reactions', () => {
  it('offers a fixed, small set of keys the contract takes', () => {
    expect(REACTION_KEYS.map((r) => r.key)).toEqual(['👍', '❤️', '😂', '🎉', '😮', '😢']);
    for (const { key, name } of REACTION_KEYS) {
      expect(key.length).toBeLessThanOrEqual(MAX_REACTION_CHARS);
      expect(name).toMatch(/^[a-z ]+$/);
      expect(isOfferedReaction(key)).toBe(true);
    }
    expect(new Set(REACTION_KEYS.map((r) => r.key)).size).toBe(REACTION_KEYS.length);
    expect(isOfferedReaction('free text')).toBe(false);
  });
});

describe('uploadContentType', () => {
  it('keeps a media type the contract takes, without parameters, lower-cased', () => {
    expect(uploadContentType('image/png')).toBe('image/png');
    expect(uploadContentType('Text/Plain; charset=utf-8')).toBe('text/plain');
    expect(
      uploadContentType('application/vnd.openxmlformats-officedocument.wordprocessingml.document'),
    ).toBe('application/vnd.openxmlformats-officedocument.wordprocessingml.document');
  });

  it('falls back to application/octet-stream for none or a malformed one', () => {
    for (const t of [
      '',
      'png',
      'image/',
      '/png',
      'image/png\r\nx: y',
      'a/b c',
      `a/${'b'.repeat(80)}`,
    ]) {
      expect(uploadContentType(t)).toBe('application/octet-stream');
    }
  });

  it('only ever answers what the contract accepts', () => {
    for (const t of ['image/png', 'TEXT/HTML;q=1', '', 'x', 'a/b/c', 'image/svg+xml']) {
      expect(contentType.safeParse(uploadContentType(t)).success).toBe(true);
    }
  });
});

describe('uploadProblem', () => {
  it('accepts an ordinary file', () => {
    expect(uploadProblem({ name: 'photo.png', size: 1234 })).toBeUndefined();
    expect(uploadProblem({ name: 'x', size: MAX_UPLOAD_BYTES })).toBeUndefined();
  });

  it('refuses what the gateway would, with its code', () => {
    expect(MAX_UPLOAD_BYTES).toBe(MAX_ATTACHMENT_BYTES);
    expect(uploadProblem({ name: 'big.bin', size: MAX_UPLOAD_BYTES + 1 })).toMatchObject({
      status: 413,
      code: 'ATTACHMENT_TOO_LARGE',
    });
    expect(uploadProblem({ name: 'big.bin', size: MAX_UPLOAD_BYTES + 1 })?.message).toMatch(
      /8\.0 MiB/,
    );
    expect(uploadProblem({ name: 'empty', size: 0 })?.code).toBe('INVALID_REQUEST');
    for (const name of ['', 'a/b', 'a\\b', 'tab\there', 'nul\u0000', 'x'.repeat(256), '\ud800']) {
      expect(uploadProblem({ name, size: 1 })?.code, JSON.stringify(name)).toBe('INVALID_REQUEST');
    }
  });

  it('lets through exactly the names the contract takes', () => {
    for (const name of ['a.txt', 'résumé.pdf', '漢字.png', 'x'.repeat(255), 'a/b', '\u0007', '']) {
      const ok = uploadProblem({ name, size: 1 }) === undefined;
      expect(ok, JSON.stringify(name)).toBe(fileName.safeParse(name).success);
    }
  });
});

describe('uploadQuery', () => {
  it('percent-encodes the name, so it cannot add parameters', () => {
    expect(uploadQuery('a b&caption=x.png')).toBe('?name=a%20b%26caption%3Dx.png');
    const url = new URL(`http://h/v1/rooms/r/attachments${uploadQuery('a b&caption=x#y.png')}`);
    expect([...url.searchParams.keys()]).toEqual(['name']);
    expect(url.searchParams.get('name')).toBe('a b&caption=x#y.png');
  });
});

describe('failedKindWord', () => {
  it('has a word for every kind the outbox keeps', () => {
    for (const kind of sendKind.options) expect(failedKindWord(kind)).toMatch(/^[a-z]+$/);
    expect(failedKindWord('text')).toBe('message');
    expect(failedKindWord('attachment')).toBe('file');
    expect(failedKindWord('new-kind')).toBe('new-kind');
  });
});

describe('the page', () => {
  const html = readFileSync(
    new URL('../../endpoint/untrusted/web/static/index.html', import.meta.url),
    'utf8',
  );

  it('has a labelled file input, its button and the failed-sends list, inside the composer area and app', () => {
    expect(html).toMatch(/<label for="file">[^<]+<\/label>/);
    expect(html).toMatch(/<input id="file" type="file" \/>/);
    expect(html).toMatch(/<button id="send-file" type="button">Send file<\/button>/);
    expect(html).toMatch(/<ul id="failed-sends" class="failed-sends"><\/ul>/);
    const composer = html.indexOf('id="composer-area"');
    const composerEnd = html.indexOf('</section>', composer);
    expect(html.indexOf('id="file"')).toBeGreaterThan(composer);
    expect(html.indexOf('id="send-file"')).toBeLessThan(composerEnd);
    expect(html).not.toMatch(/<form\b|\sstyle=|\son[a-z]+=/i);
  });

  it('retries and discards at the path of the txnId, unchanged', () => {
    const txnId = 'mte.0123456789abcdef01234567';
    expect(path`/v1/outbox/failed/${txnId}/retry`).toBe(`/v1/outbox/failed/${txnId}/retry`);
    expect(path`/v1/outbox/failed/${txnId}/discard`).toBe(`/v1/outbox/failed/${txnId}/discard`);
  });
});
