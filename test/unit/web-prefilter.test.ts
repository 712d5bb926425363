import { describe, expect, it } from 'vitest';
import { renameForParse } from '../../endpoint/untrusted/web/src/prefilter.ts';
import { revealInBody } from '../../endpoint/untrusted/web/src/names.ts';

// Before DOMPurify parses a sender's HTML, what the page's CSP would report is renamed away
// (DOMPurify then removes it as unknown); and message text shows its bidi and zero-width
// characters.

describe('renameForParse', () => {
  it('renames event handler and style attributes, in every spelling the tokenizer accepts', () => {
    expect(renameForParse('<img src=x onerror="a()">')).toBe('<img src=x mte-x-onerror="a()">');
    expect(renameForParse('<IMG SRC=x ONERROR=a()>')).toBe('<IMG SRC=x mte-x-ONERROR=a()>');
    expect(renameForParse('<img/onerror=a()>')).toBe('<img/mte-x-onerror=a()>');
    expect(renameForParse('<img src="x"onerror=a()>')).toBe('<img src="x"mte-x-onerror=a()>');
    expect(renameForParse('<p style="color:red" class=x>')).toBe(
      '<p mte-x-style="color:red" class=x>',
    );
    expect(renameForParse('<div\nonmouseover\n=\na()>')).toBe('<div\nmte-x-onmouseover\n=\na()>');
    expect(renameForParse('<details open ontoggle=a()>')).toBe('<details open mte-x-ontoggle=a()>');
    expect(renameForParse('<svg onload=a()>')).toBe('<svg mte-x-onload=a()>');
    expect(renameForParse('<input autofocus onfocus>')).toBe('<input autofocus mte-x-onfocus>');
  });

  it('renames <style> and <base> elements', () => {
    expect(renameForParse('<style>a{}</style>')).toBe('<mte-x-style>a{}</mte-x-style>');
    expect(renameForParse('<BASE href="https://evil.example/">')).toBe(
      '<mte-x-BASE href="https://evil.example/">',
    );
    expect(renameForParse('<styles>')).toBe('<styles>');
    expect(renameForParse('<basefont>')).toBe('<basefont>');
  });

  it('leaves text, quoted values and look-alike names alone', () => {
    const same = [
      'a onerror= b, style=x, 1 < 2 > 0',
      '<a href="https://example.org/?on=1" title="cat on a mat">x</a>',
      "<img alt='style onerror=x'>",
      '<code>x</code> &lt;img onerror=x&gt;',
      '<span data-mx-spoiler="on">s</span>',
      '<p contenteditable>x</p>',
      '<a href=x>ok</a>',
      '',
    ];
    for (const html of same) expect(renameForParse(html), html).toBe(html);
  });

  it('keeps an unterminated tag unterminated, and is linear on hostile input', () => {
    expect(renameForParse('<b onclick=x')).toBe('<b mte-x-onclick=x');
    expect(renameForParse('<a title="x>y" onclick=z>')).toBe('<a title="x>y" mte-x-onclick=z>');
    const started = performance.now();
    renameForParse(`<a ${'"'.repeat(50_000)}`);
    renameForParse(`<a${' x'.repeat(50_000)}`);
    renameForParse('<'.repeat(100_000));
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe('revealInBody', () => {
  const text = (segments: ReturnType<typeof revealInBody>) =>
    segments.map((s) => (s.kind === 'text' ? s.text : `[${s.code}]`)).join('');

  it('shows bidi controls and zero-width characters', () => {
    expect(text(revealInBody('hello \u202Eevil\u202C world'))).toBe(
      'hello [U+202E]evil[U+202C] world',
    );
    expect(text(revealInBody('pay\u200Bpal'))).toBe('pay[U+200B]pal');
    expect(text(revealInBody('a\u2066b\u2069'))).toBe('a[U+2066]b[U+2069]');
    expect(text(revealInBody('x\u0000y'))).toBe('x[U+0000]y');
  });

  it('keeps line breaks, tabs and emoji sequences', () => {
    expect(revealInBody('a\nb\tc\r\nd')).toEqual([{ kind: 'text', text: 'a\nb\tc\r\nd' }]);
    for (const emoji of ['👩‍💻', '👨‍👩‍👧', '🏳️‍🌈', '👍🏽', '🧑🏽‍🚀', '🏴󠁧󠁢󠁥󠁮󠁧󠁿']) {
      expect(revealInBody(emoji), emoji).toEqual([{ kind: 'text', text: emoji }]);
    }
  });

  it('shows a joiner or tag characters that are not part of an emoji', () => {
    expect(text(revealInBody('a\u200Db'))).toBe('a[U+200D]b');
    expect(text(revealInBody('👍\u200D'))).toBe('👍[U+200D]');
    expect(text(revealInBody('hi\u{E0041}\u{E0042}'))).toBe('hi[U+E0041][U+E0042]');
    expect(text(revealInBody('🏴\u{E0067}'))).toBe('🏴[U+E0067]');
  });
});
