import { existsSync } from 'node:fs';
import { build } from 'esbuild';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestBrowser, chromiumPath, startBrowser } from '../fixtures/browser.ts';

// Security review of sanitize.ts (DOMPurify + hooks + prefilter), run where it runs: the real
// module, bundled as the UI bundles it, in Chromium. The page carries the UI's own ids, so DOM
// clobbering would show. The link notes lost to the 64 KiB cut were found failing, and are
// fixed (the cut comes first, then the notes).

const SANITIZE = new URL('../../endpoint/untrusted/web/src/sanitize.ts', import.meta.url).pathname;
const MAX = 64 * 1024; // MAX_RENDERED_CHARS

/** Browser-side code (bundled with sanitize.ts): renders one message and reports what is left. */
const PAGE_PROBE = `
window.ran = 0;
window.probe = (html) => {
  const box = renderFormatted(html);
  if (!box) return { html: null, text: '', elements: [], links: [], realHrefs: [] };
  document.getElementById('out').appendChild(box);
  return {
    html: box.outerHTML,
    text: box.textContent,
    elements: Array.from(box.querySelectorAll('*')).map((e) => ({
      tag: e.localName,
      attrs: Array.from(e.attributes).map((a) => a.name),
    })),
    links: Array.from(box.querySelectorAll('a')).map((a) => ({
      href: a.getAttribute('href'),
      rel: a.getAttribute('rel'),
      target: a.getAttribute('target'),
      text: a.textContent,
    })),
    realHrefs: Array.from(box.querySelectorAll('.real-href')).map((s) => s.textContent),
  };
};
window.uiIntact = () => {
  const token = document.getElementById('token');
  return document.getElementById('timeline').localName === 'ol' && token.localName === 'input' && token.value === 'secret';
};
`;

interface Rendered {
  html: string | null;
  text: string;
  /** Every element's tag and attribute names. */
  elements: { tag: string; attrs: string[] }[];
  links: { href: string | null; rel: string | null; target: string | null; text: string }[];
  realHrefs: string[];
}

describe.skipIf(!existsSync(chromiumPath()))('renderFormatted() in Chromium', () => {
  let browser: TestBrowser;
  let page: Page;
  const requests: string[] = [];

  beforeAll(async () => {
    const bundle = await build({
      stdin: {
        contents: `import { renderFormatted } from ${JSON.stringify(SANITIZE)};\n${PAGE_PROBE}`,
        resolveDir: process.cwd(),
        loader: 'ts',
      },
      bundle: true,
      format: 'iife',
      platform: 'browser',
      target: 'chrome120',
      write: false,
      logLevel: 'silent',
    });
    browser = await startBrowser();
    ({ page } = await browser.newPage());
    page.on('request', (r) => {
      if (!r.url().startsWith('about:')) requests.push(r.url());
    });
    await page.setContent(
      '<!doctype html><body><ol id="timeline"></ol><input id="token" value="secret">' +
        '<div id="out"></div></body>',
    );
    await page.addScriptTag({ content: bundle.outputFiles[0]?.text ?? '' });
  }, 60_000);
  afterAll(async () => {
    await browser.stop();
  });

  /** Renders one message in the page (PAGE_PROBE's probe()). */
  async function render(html: string): Promise<Rendered> {
    return page.evaluate<Rendered>(`probe(${JSON.stringify(html)})`);
  }

  describe('the "where the link really goes" note survives the 64 KiB cut', () => {
    it('a link reading https://bank.example/ that goes elsewhere keeps its real-target note', async () => {
      // White space collapses when rendered: the message looks short, ends in the lying link.
      const text = 'https://bank.example/';
      const html = `<p>Please log in again:${' '.repeat(MAX - 'Please log in again:'.length - text.length)}<a href="https://evil.example/">${text}</a></p>`;
      const out = await render(html);
      const link = out.links.find((l) => l.href === 'https://evil.example/');
      // Either the link is gone, or its real target is shown beside it.
      if (link) expect(out.text.replace(/\s+/g, ' ')).toContain('(https://evil.example/)');
    });

    it('a link whose text the cut would shorten is no link at all', async () => {
      const target = 'https://bank.example.evil.example/';
      const html = `${' '.repeat(MAX - 'https://bank.example'.length)}<a href="${target}">${target}</a>`;
      const out = await render(html);
      const link = out.links.find((l) => l.href === target);
      if (link) expect(out.text.replace(/\s+/g, ' ')).toContain(target);
      expect(out.links).toEqual([]);
    });

    it('a link after the cut is not left behind with its target as its text', async () => {
      const html = `<p>${'x'.repeat(MAX + 10)}</p><p><a href="https://evil.example/">https://bank.example/</a></p><a href="https://b.example/"></a>`;
      const out = await render(html);
      expect(out.links).toEqual([]);
      expect(out.realHrefs).toEqual([]);
      expect(out.text).not.toContain('example');
    });

    it('links before the cut keep their notes, past the limit', async () => {
      const html = `<a href="https://evil.example/">https://bank.example/</a>${'x'.repeat(MAX)}`;
      const out = await render(html);
      expect(out.links.map((l) => l.text)).toEqual(['https://bank.example/']);
      expect(out.realHrefs).toEqual([' (https://evil.example/)']);
    });

    it('an mxc link is shown whole or not at all', async () => {
      const pad = 'x'.repeat(MAX - 'pic'.length - 4);
      const out = await render(`${pad}<a href="mxc://srv/abcdef">pic</a>`);
      expect(out.text).toBe(`${pad}pic (truncated)`);
    });
  });

  it('shows invisibles in a spoiler reason, in its title and label', async () => {
    const out = await render('<span data-mx-spoiler="ok\u202Eevil">s</span>');
    expect(out.html).toContain('title="Spoiler: ok[U+202E]evil"');
    expect(out.html).toContain('aria-label="Spoiler: ok[U+202E]evil (press to reveal)"');
    expect(out.html).not.toContain('\u202E');
  });

  it('keeps no script, no handler, no style, no id/name, no foreign namespace, no form', async () => {
    const hostile = [
      '<img src=x onerror="window.ran=1" alt="a">',
      '<svg><a xlink:href="javascript:window.ran=2"><text>t</text></a></svg>',
      '<form id="login"><button formaction="javascript:window.ran=3">b</button><input name="token"></form>',
      '<math><mtext><table><mglyph><style><img src=x onerror=window.ran=4></style></mglyph></table></mtext></math>',
      '<svg></p><style><a id="</style><img src=1 onerror=window.ran=5>">',
      '<form><math><mtext></form><form><mglyph><style></math><img src onerror=window.ran=6>',
      '<noscript><p title="</noscript><img src=x onerror=window.ran=7>"></noscript>',
      '<template><img src=x onerror=window.ran=8></template>',
      '<p/onclick=window.ran=9>q</p><p\nonclick=window.ran=10 style="position:fixed">s</p>',
      '<details open ontoggle="window.ran=11"><summary>s</summary>d</details>',
      '<iframe srcdoc="<script>parent.ran=12</script>"></iframe><object data="x"></object>',
      '<div id="timeline" name="token" class="spoiler real-href">clobber</div>',
      '<a id="token" name="timeline" href="https://ok.example/">a</a>',
      '<style>@import "https://evil.example/x.css";</style><link rel=stylesheet href="https://evil.example/y.css">',
      '<base href="https://evil.example/"><a href="/x">rel</a>',
      '<span data-mx-spoiler="r" data-x="1" style="color:red">s</span><code class="language-js evil">c</code>',
      '<ol start="5" reversed type="i"><li value="3">a</li></ol><font color="red" data-mx-color="#f00">f</font>',
      '<a href="https://ok.example/" target="_self" rel="opener" ping="https://evil.example/" download>k</a>',
      '<div dir="rtl" lang="x" hidden aria-hidden="true" tabindex="1">t</div>',
    ];
    const allowed: Record<string, string[]> = {
      a: ['href', 'rel', 'target', 'referrerpolicy'],
      ol: ['start'],
      code: ['class'],
      span: ['class', 'role', 'tabindex', 'aria-expanded', 'aria-label', 'title'],
    };
    for (const html of hostile) {
      const out = await render(html);
      for (const e of out.elements) {
        expect(
          e.attrs.filter((a) => !(allowed[e.tag] ?? []).includes(a)),
          `${html}: ${e.tag}`,
        ).toEqual([]);
        expect([
          'img',
          'svg',
          'math',
          'form',
          'input',
          'button',
          'style',
          'link',
          'base',
          'iframe',
          'object',
          'template',
        ]).not.toContain(e.tag);
      }
    }
    await page.waitForTimeout(200);
    expect(await page.evaluate<number>('window.ran')).toBe(0);
    expect(requests).toEqual([]);
    // The UI's own elements are still what their ids name.
    expect(await page.evaluate<boolean>('window.uiIntact()')).toBe(true);
  });

  it('keeps only https links with a host and no user info, shown as the URL parser reads them', async () => {
    const refused = [
      'javascript:window.ran=1',
      'java&#x09;script:window.ran=1',
      '&#106;avascript:window.ran=1',
      ' javascript:window.ran=1',
      'data:text/html,<script>1</script>',
      'vbscript:x',
      'http://evil.example/',
      '//evil.example/',
      '/relative',
      'https:evil.example',
      'https:/\\evil.example',
      'https://u:p@evil.example/',
      'https://evil.example/\u2028x',
      'https://evil.example/\u00a0x',
      'https://ok.example/&#x0A;x',
      'blob:https://x/1',
      'file:///etc/passwd',
    ];
    for (const href of refused) {
      const out = await render(`<a href="${href}">link</a>`);
      expect(out.links, href).toEqual([]);
    }
    const kept = await render(
      '<a href="&#104;ttps://xn--pple-43d.com/">https://apple.com/</a> <a href="HTTPS://OK.example">HTTPS://OK.example</a>',
    );
    expect(kept.links.map((l) => [l.href, l.rel, l.target])).toEqual([
      ['https://xn--pple-43d.com/', 'noopener noreferrer nofollow', '_blank'],
      ['https://ok.example/', 'noopener noreferrer nofollow', '_blank'],
    ]);
    expect(kept.realHrefs).toEqual([' (https://xn--pple-43d.com/)', ' (https://ok.example/)']);
    const idn = await render('<a href="https://\u0430pple.com/">https://\u0430pple.com/</a>');
    expect(idn.links[0]?.href).toBe('https://xn--pple-43d.com/');
    expect(idn.realHrefs).toEqual([' (https://xn--pple-43d.com/)']);
    // A link without text, or nested ones, still say where they go.
    const nested = await render(
      '<a href="https://a.example/"><a href="https://b.example/">b</a></a>',
    );
    expect(nested.links.map((l) => l.text)).toEqual(['https://a.example/', 'b']);
    expect(nested.realHrefs).toEqual([' (https://b.example/)']);
  });

  it('removes the reply fallback with its content, and turns images and mxc links into text', async () => {
    const out = await render(
      '<mx-reply><blockquote>fake quote <a href="https://x.example/">x</a></blockquote></mx-reply>' +
        'after <img src="mxc://a/b" alt="cat"> <a href="mxc://srv/abc">pic</a>',
    );
    expect(out.text).toBe('after [image: cat] pic (mxc://srv/abc)');
    expect(out.links).toEqual([]);
  });

  it('shows bidi controls and zero-width characters in HTML text as badges', async () => {
    const out = await render('<b>invoice\u202Efdp.exe</b> a\u200Bb');
    expect(out.text).toBe('invoice[U+202E]fdp.exe a[U+200B]b');
  });
});
