import { readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

// The web UI's security rules, checked on its source: nothing parses HTML but sanitize.ts (and
// it only through DOMPurify, into a fragment), nothing evaluates strings, nothing styles
// inline, and the token goes nowhere but the Authorization header.

const WEB = new URL('../../endpoint/untrusted/web/', import.meta.url);
const SRC = new URL('src/', WEB);

function sources(dir: URL = SRC, prefix = ''): { name: string; text: string }[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    if (entry.isDirectory())
      return sources(new URL(`${entry.name}/`, dir), `${prefix}${entry.name}/`);
    if (!entry.name.endsWith('.ts')) return [];
    return [
      { name: `${prefix}${entry.name}`, text: readFileSync(new URL(entry.name, dir), 'utf8') },
    ];
  });
}

/** Source without comments, so that prose about what is forbidden does not count. */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:\\])\/\/.*$/gm, '$1');
}

const FORBIDDEN: [string, RegExp][] = [
  ['innerHTML', /\binnerHTML\b/],
  ['outerHTML', /\bouterHTML\b/],
  ['insertAdjacentHTML', /\binsertAdjacentHTML\b/],
  ['document.write', /\bdocument\s*\.\s*write(ln)?\b/],
  ['eval', /\beval\s*\(/],
  ['new Function', /\bnew\s+Function\b/],
  ['Function(', /(^|[^\w.])Function\s*\(/],
  ['setTimeout(string)', /\bset(Timeout|Interval)\s*\(\s*['"`]/],
  ['srcdoc', /\bsrcdoc\b/],
  ['createContextualFragment', /\bcreateContextualFragment\b/],
  ['DOMParser', /\bDOMParser\b/],
  ['parseHTMLUnsafe', /\bparseHTMLUnsafe\b|\bsetHTMLUnsafe\b/],
  ['inline style', /\.style\b|\.cssText\b|setAttribute\(\s*['"]style['"]/],
  ['cookies', /\bdocument\s*\.\s*cookie\b/],
  ['localStorage', /\blocalStorage\b/],
  ['console', /\bconsole\s*\./],
  ['EventSource', /\bnew\s+EventSource\b/],
  ['javascript: URLs', /javascript:/i],
  ['a token in a URL', /[?&](access_)?token=/],
  ['window.open', /\bwindow\s*\.\s*open\b/],
  ['postMessage', /\bpostMessage\b/],
];

describe('web UI source', () => {
  const files = sources();

  it('has the modules the rules live in', () => {
    const names = files.map((f) => f.name);
    for (const name of ['main.ts', 'sanitize.ts', 'names.ts', 'sse.ts', 'links.ts', 'api.ts']) {
      expect(names).toContain(name);
    }
  });

  it.each(FORBIDDEN)('never uses %s (sanitize.ts included)', (_what, pattern) => {
    for (const file of files) {
      const lines = code(file.text).split('\n');
      const hits = lines.map((l, i) => [i + 1, l] as const).filter(([, l]) => pattern.test(l));
      expect(hits, `${file.name}: ${hits.map(([n, l]) => `${n}: ${l.trim()}`).join('; ')}`).toEqual(
        [],
      );
    }
  });

  it('imports DOMPurify only in sanitize.ts, which asks it for a fragment', () => {
    for (const file of files) {
      const imports = /from\s+['"]dompurify['"]/.test(file.text);
      expect(imports, file.name).toBe(file.name === 'sanitize.ts');
    }
    const sanitize = code(files.find((f) => f.name === 'sanitize.ts')?.text ?? '');
    expect(sanitize).toMatch(/RETURN_DOM_FRAGMENT:\s*true/);
    expect(sanitize).toMatch(/ALLOWED_URI_REGEXP:\s*\/\^https:/);
    expect(sanitize).not.toMatch(/SAFE_FOR_TEMPLATES|RETURN_TRUSTED_TYPE|ADD_TAGS|ADD_ATTR\b/);
    expect(sanitize).toMatch(/addHook\(\s*'uponSanitizeElement'/);
    expect(sanitize).toMatch(/addHook\(\s*'afterSanitizeAttributes'/);
  });

  it('allows exactly the spec tags, and none of the dangerous ones', () => {
    const sanitize = files.find((f) => f.name === 'sanitize.ts')?.text ?? '';
    const list = /export const ALLOWED_TAGS = \[([^\]]*)\]/.exec(sanitize)?.[1] ?? '';
    const tags = [...list.matchAll(/'([a-z0-9-]+)'/g)].map((m) => m[1]);
    expect(new Set(tags)).toEqual(
      new Set(
        'font del h1 h2 h3 h4 h5 h6 blockquote p a ul ol sup sub li b i u strong em s code hr br div table thead tbody tr th td caption pre span details summary'.split(
          ' ',
        ),
      ),
    );
  });

  it('keeps the token in sessionStorage under mte.token, only in api.ts', () => {
    for (const file of files) {
      const text = code(file.text);
      expect(/\bsessionStorage\b/.test(text), file.name).toBe(file.name === 'api.ts');
      expect(text.includes("'mte.token'"), file.name).toBe(file.name === 'api.ts');
    }
    const api = code(files.find((f) => f.name === 'api.ts')?.text ?? '');
    expect(api).toMatch(/credentials:\s*'omit'/);
    expect(api).toMatch(/cache:\s*'no-store'/);
    expect(api).toMatch(/referrerPolicy:\s*'no-referrer'/);
    expect(api).toMatch(/authorization:\s*`Bearer \$\{token\}`/);
  });

  it('calls fetch only in api.ts', () => {
    for (const file of files) {
      expect(/\bfetch\s*\(/.test(code(file.text)), file.name).toBe(file.name === 'api.ts');
    }
  });
});

describe('web UI page', () => {
  const html = readFileSync(new URL('static/index.html', WEB), 'utf8');
  const css = readFileSync(new URL('static/app.css', WEB), 'utf8');

  it('loads one stylesheet and one module script, both from the same origin', () => {
    const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
    expect(scripts).toHaveLength(1);
    expect(scripts[0]?.[1]).toMatch(/type="module"/);
    expect(scripts[0]?.[1]).toMatch(/src="\/app\.js"/);
    expect(scripts[0]?.[2]?.trim()).toBe('');
    const links = [...html.matchAll(/<link\b[^>]*>/gi)].map((m) => m[0]);
    expect(links).toEqual(['<link rel="stylesheet" href="/app.css" />']);
  });

  it('has no inline styles, handlers, forms or external resources', () => {
    expect(html).not.toMatch(/<style\b/i);
    expect(html).not.toMatch(/\sstyle\s*=/i);
    expect(html).not.toMatch(/\son[a-z]+\s*=/i);
    expect(html).not.toMatch(/<form\b/i);
    expect(html).not.toMatch(/<(img|iframe|object|embed|base)\b/i);
    expect(html).not.toMatch(/https?:\/\//i);
  });

  it('has the selectors the browser tests use', () => {
    for (const id of [
      'token',
      'login',
      'whoami',
      'logout',
      'connection',
      'alert',
      'rooms',
      'timeline',
      'load-older',
      'composer',
      'send',
      'reply-target',
      'excluded',
      'identity-banner',
      'nav-rooms',
      'nav-contacts',
      'nav-verifications',
      'verifications',
      'contacts',
    ]) {
      expect(html, id).toMatch(new RegExp(`id="${id}"`));
    }
    expect(html).toMatch(/<input\s+id="token"\s+type="password"\s+autocomplete="off"/);
    expect(html).toMatch(/<div id="alert" role="alert">/);
    expect(html).toMatch(/<textarea id="composer"/);
    expect(html).toMatch(/<label for="token">/);
    expect(html).toMatch(/<label for="composer">/);
    expect(html).toMatch(/aria-live="polite"/);
  });

  it('uses system fonts only: no imports, fonts or URLs in the stylesheet', () => {
    expect(css).not.toMatch(/@import|@font-face|url\(|expression\(/i);
  });
});
