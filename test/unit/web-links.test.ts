import { describe, expect, it } from 'vitest';
import { hrefDiffersFromText, linkTarget } from '../../endpoint/untrusted/web/src/links.ts';

// Which links in a sender's HTML stay links: absolute https only; mxc: as text; everything
// else unwrapped.

describe('linkTarget', () => {
  it('keeps https links, normalised', () => {
    expect(linkTarget('https://example.org/a?b#c')).toEqual({
      kind: 'https',
      href: 'https://example.org/a?b#c',
    });
    expect(linkTarget('HTTPS://Example.ORG')).toEqual({
      kind: 'https',
      href: 'https://example.org/',
    });
    expect(linkTarget('  https://example.org/x  ')).toEqual({
      kind: 'https',
      href: 'https://example.org/x',
    });
    expect(linkTarget('https://matrix.to/#/@alice:example.org')).toEqual({
      kind: 'https',
      href: 'https://matrix.to/#/@alice:example.org',
    });
  });

  it('shows an internationalised host as punycode', () => {
    const target = linkTarget('https://exаmple.org/'); // Cyrillic а
    expect(target.kind).toBe('https');
    expect(target.kind === 'https' && target.href.startsWith('https://xn--')).toBe(true);
  });

  it('refuses every other scheme', () => {
    for (const href of [
      'javascript:alert(1)',
      'JavaScript:alert(1)',
      ' javascript:alert(1)',
      'java\tscript:alert(1)',
      'java\nscript:alert(1)',
      '\u0001javascript:alert(1)',
      'data:text/html,<script>alert(1)</script>',
      'vbscript:msgbox(1)',
      'http://example.org/',
      'file:///etc/passwd',
      'blob:https://example.org/uuid',
      'ftp://example.org/',
      'mailto:a@example.org',
      'matrix:u/alice:example.org',
    ]) {
      expect(linkTarget(href), href).toEqual({ kind: 'none' });
    }
  });

  it('refuses relative, protocol-relative and malformed https', () => {
    for (const href of [
      '/v1/rooms',
      'rooms',
      '#x',
      '?x',
      '//evil.example/',
      '\\\\evil.example',
      'https:evil.example',
      'https:/evil.example',
      'https:\\\\evil.example',
      'https:///evil.example',
      'https://',
      'https://exa mple.org/',
      'https://example.org/\u00a0x',
      '',
      '   ',
    ]) {
      expect(linkTarget(href), href).toEqual({ kind: 'none' });
    }
    expect(linkTarget(null)).toEqual({ kind: 'none' });
    expect(linkTarget(undefined)).toEqual({ kind: 'none' });
  });

  it('refuses credentials in the URL (https://bank.example@evil.example)', () => {
    expect(linkTarget('https://bank.example@evil.example/')).toEqual({ kind: 'none' });
    expect(linkTarget('https://u:p@example.org/')).toEqual({ kind: 'none' });
  });

  it('refuses over-long links', () => {
    expect(linkTarget(`https://example.org/${'a'.repeat(3000)}`)).toEqual({ kind: 'none' });
  });

  it('recognises mxc: URIs (shown as text, never fetched)', () => {
    expect(linkTarget('mxc://example.org/abc')).toEqual({
      kind: 'mxc',
      uri: 'mxc://example.org/abc',
    });
    expect(linkTarget('mxc://')).toEqual({ kind: 'none' });
  });
});

describe('hrefDiffersFromText', () => {
  it('is false when the text is the target', () => {
    expect(hrefDiffersFromText('https://example.org/a', 'https://example.org/a')).toBe(false);
    expect(hrefDiffersFromText(' https://example.org/a ', 'https://example.org/a')).toBe(false);
    expect(hrefDiffersFromText('https://example.org', 'https://example.org/')).toBe(false);
  });

  it('is true when the text says anything else', () => {
    expect(hrefDiffersFromText('click here', 'https://example.org/')).toBe(true);
    expect(hrefDiffersFromText('https://bank.example/', 'https://evil.example/')).toBe(true);
    expect(hrefDiffersFromText('https://exаmple.org/', 'https://xn--exmple-4nf.org/')).toBe(true);
    expect(hrefDiffersFromText('https://example.org/?q=', 'https://example.org/?q=/')).toBe(true);
    expect(hrefDiffersFromText('https://example.org/a', 'https://example.org/a/')).toBe(true);
  });
});
