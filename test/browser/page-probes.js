/* global document, fetch, XMLHttpRequest, Response */
// Browser-side probes for the web UI tests, injected into each page by the test (as an init
// script, which the browser runs before the page's own scripts and outside its CSP). Plain
// JavaScript: it runs in Chromium, not in Node. The tests call it by name, e.g.
// page.evaluate('__mteProbe.timelineReport()').
(() => {
  const csp = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    csp.push(`${e.violatedDirective} ${e.blockedURI}`);
  });

  const BANNED =
    /^(script|iframe|object|embed|form|input|textarea|meta|base|link|style|svg|math|img|video|audio|picture|source|template|noscript|body|frame|frameset|applet)$/i;
  const BANNED_ATTR = /^(on.*|style|srcset|background|formaction|xlink:href|poster)$/i;

  globalThis.__mteProbe = {
    cspSeen: () => [...csp],

    pwned: () => globalThis.__pwned,

    /** The 7 SAS emoji the page shows, as [symbol, name]. */
    sasEmoji: () =>
      [...document.querySelectorAll('.flow .sas-emoji')].map((e) => [
        e.querySelector('.symbol')?.textContent ?? '',
        e.querySelector('.name')?.textContent ?? '',
      ]),

    /** What the timeline holds that it never should. */
    timelineReport: () => {
      const timeline = document.querySelector('#timeline');
      const all = timeline ? [...timeline.querySelectorAll('*')] : [];
      return {
        pwned: globalThis.__pwned ?? null,
        banned: all.filter((e) => BANNED.test(e.tagName)).map((e) => e.tagName),
        attrs: all.flatMap((e) =>
          [...e.attributes]
            .filter((a) => BANNED_ATTR.test(a.name))
            .map((a) => `${e.tagName}[${a.name}]`),
        ),
        hrefs: all
          .filter((e) => e.hasAttribute('href'))
          .map((e) => ({ href: e.getAttribute('href') ?? '', rel: e.getAttribute('rel') ?? '' })),
        composer: document.querySelector('#composer')?.tagName ?? null,
        send: document.querySelector('#send')?.tagName ?? null,
      };
    },

    /** Inputs without a label, and buttons or links without an accessible name. */
    a11yReport: () => {
      const named = (e) =>
        (e.getAttribute('aria-label') ?? '').trim() !== '' ||
        (e.getAttribute('aria-labelledby') ?? '') !== '' ||
        (e.labels !== undefined && e.labels !== null && e.labels.length > 0);
      const controls = [...document.querySelectorAll('input, textarea, select')];
      const buttons = [...document.querySelectorAll('button, a[href]')];
      const describe = (e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}.${e.className}`;
      return {
        unlabelled: controls.filter((e) => e.type !== 'hidden' && !named(e)).map(describe),
        nameless: buttons
          .filter((e) => (e.textContent ?? '').trim() === '' && !named(e))
          .map(describe),
      };
    },

    /** From a foreign page: every way a page can make a browser send a request elsewhere. */
    attack: async ({ target, base, token }) => {
      const out = {};
      const attempt = async (name, f) => {
        try {
          const r = await f();
          out[name] = r instanceof Response ? `status ${r.status} ${r.type}` : String(r);
        } catch (e) {
          out[name] = `blocked ${e.name}`;
        }
      };
      // In this order: the audit log writes the first five refusals of a minute one by one.
      await attempt('no-cors read', () => fetch(`${base}/v1/status`, { mode: 'no-cors' }));
      await attempt('cors read with token', () =>
        fetch(`${base}/v1/rooms`, { headers: { authorization: `Bearer ${token}` } }),
      );
      await attempt('no-cors post', () =>
        fetch(target, {
          method: 'POST',
          mode: 'no-cors',
          headers: { 'content-type': 'text/plain' },
          body: JSON.stringify({ body: 'csrf by fetch' }),
        }),
      );
      // Even with the token (leaked somehow): the preflight is refused, nothing follows.
      await attempt('cors post with token', () =>
        fetch(target, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ body: 'csrf with token' }),
        }),
      );
      await attempt(
        'xhr post',
        () =>
          new Promise((resolve) => {
            const x = new XMLHttpRequest();
            x.open('POST', target);
            x.setRequestHeader('content-type', 'text/plain');
            x.onloadend = () => resolve(`xhr ${x.status}`);
            x.send(JSON.stringify({ body: 'csrf by xhr' }));
          }),
      );
      await attempt(
        'form post',
        () =>
          new Promise((resolve) => {
            const frame = document.createElement('iframe');
            frame.name = 'sink';
            document.body.append(frame);
            const form = document.createElement('form');
            form.method = 'POST';
            form.action = target;
            form.enctype = 'text/plain';
            form.target = 'sink';
            const input = document.createElement('input');
            input.name = '{"body":"csrf by form","x":"';
            input.value = '"}';
            form.append(input);
            document.body.append(form);
            frame.onload = () => resolve('form submitted');
            form.submit();
          }),
      );
      return out;
    },

    /** A same-origin POST from whatever origin the page is on (a rebound name). */
    post: async (url) => (await fetch(url, { method: 'POST', body: '{"body":"csrf"}' })).status,
  };
})();
