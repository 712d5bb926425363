/**
 * The only place HTML is parsed: a sender's `formatted_body`, through DOMPurify, held to the
 * Matrix spec's tags and a handful of attributes. Everything else in the UI is built with
 * createElement and textContent.
 *
 * DOMPurify parses into an inert document (no script runs, no image loads); the hooks below
 * enforce the rules the allow-list cannot say: images become text, the reply fallback goes,
 * links keep only https targets and show where they really go, nesting is bounded, `class` is a
 * code block's language only, spoilers are hidden until clicked.
 */
import DOMPurify from 'dompurify';
import { hrefDiffersFromText, linkTarget } from './links.ts';
import { revealInBody, revealInvisiblesText, truncateChars } from './names.ts';
import { RENAMED_PREFIX, renameForParse } from './prefilter.ts';
import { MAX_RENDERED_CHARS } from './text.ts';

/** The spec's tags (img is turned into text; mx-reply removed with its content). */
export const ALLOWED_TAGS = [
  'font',
  'del',
  'h1',
  'h2',
  'h3',
  'h4',
  'h5',
  'h6',
  'blockquote',
  'p',
  'a',
  'ul',
  'ol',
  'sup',
  'sub',
  'li',
  'b',
  'i',
  'u',
  'strong',
  'em',
  's',
  'code',
  'hr',
  'br',
  'div',
  'table',
  'thead',
  'tbody',
  'tr',
  'th',
  'td',
  'caption',
  'pre',
  'span',
  'details',
  'summary',
];

/** Each allowed attribute, and the one tag it may be on. */
const ATTRIBUTE_TAG: ReadonlyMap<string, string> = new Map([
  ['href', 'a'],
  ['start', 'ol'],
  ['class', 'code'],
  ['data-mx-spoiler', 'span'],
]);
const LANGUAGE_CLASS = /^language-[a-z0-9+#-]{1,32}$/;
/** The spec's limit on nesting. */
export const MAX_DEPTH = 100;
/** HTML longer than this is not parsed at all (the plain body is shown instead). */
export const MAX_HTML_CHARS = 256 * 1024;

const FORBID_TAGS = [
  'img',
  'image',
  'svg',
  'math',
  'script',
  'style',
  'link',
  'meta',
  'base',
  'form',
  'input',
  'button',
  'textarea',
  'select',
  'option',
  'iframe',
  'frame',
  'frameset',
  'object',
  'embed',
  'template',
  'audio',
  'video',
  'source',
  'picture',
  'canvas',
  'noscript',
  'dialog',
  'mx-reply',
];

const purify = DOMPurify(window);

/** Text the hooks add that the cut must drop whole rather than shorten. */
const wholeNotes = new WeakSet<Node>();

purify.addHook('uponSanitizeElement', (node, event) => {
  if (!(node instanceof Element)) return;
  const parent = node.parentNode;
  if (!parent) return;
  const tag = event.tagName;
  if (tag === 'mx-reply') {
    // The reply fallback: the replier's own account of what they reply to. Never shown.
    parent.removeChild(node);
    return;
  }
  if (tag === 'img') {
    const alt = node.getAttribute('alt') ?? '';
    parent.insertBefore(node.ownerDocument.createTextNode(`[image: ${alt}]`), node);
    parent.removeChild(node);
    return;
  }
  if (depthOf(node) > MAX_DEPTH) {
    // Too deep: its text stays, flat.
    parent.insertBefore(node.ownerDocument.createTextNode(node.textContent), node);
    parent.removeChild(node);
    return;
  }
  if (tag === 'a') {
    // Decided here, before DOMPurify drops any href that is not https.
    const target = linkTarget(node.getAttribute('href'));
    if (target.kind === 'https') return;
    if (target.kind === 'mxc' && hrefDiffersFromText(node.textContent, target.uri)) {
      // Media is never fetched: the URI is shown as text (whole or not at all: see capFragmentText).
      const note = node.ownerDocument.createTextNode(` (${target.uri})`);
      wholeNotes.add(note);
      node.appendChild(note);
    }
    unwrap(node);
  }
});

purify.addHook('afterSanitizeAttributes', (node) => {
  const tag = node.localName;
  for (const attr of Array.from(node.attributes)) {
    const name = attr.name;
    if (ATTRIBUTE_TAG.get(name) !== tag) {
      node.removeAttribute(name);
      continue;
    }
    if (name === 'class' && !LANGUAGE_CLASS.test(attr.value)) node.removeAttribute(name);
    if (name === 'start' && !/^-?[0-9]{1,9}$/.test(attr.value)) node.removeAttribute(name);
  }
  if (tag === 'a') {
    const target = linkTarget(node.getAttribute('href'));
    if (target.kind !== 'https') {
      node.removeAttribute('href');
      return;
    }
    node.setAttribute('href', target.href);
    node.setAttribute('rel', 'noopener noreferrer nofollow');
    node.setAttribute('target', '_blank');
    node.setAttribute('referrerpolicy', 'no-referrer');
  }
});

/** Replaces an element by its children, in place (DOMPurify's own way for disallowed tags). */
function unwrap(node: Element): void {
  const parent = node.parentNode;
  if (!parent) return;
  const next = node.nextSibling;
  while (node.firstChild) parent.insertBefore(node.firstChild, next);
  parent.removeChild(node);
}

/** How deep an element sits in the message (1: at its top), counted up to MAX_DEPTH + 1. */
function depthOf(node: Element): number {
  let depth = 0;
  for (let p: Element | null = node; p && p.localName !== 'body'; p = p.parentElement) {
    depth++;
    if (depth > MAX_DEPTH) break;
  }
  return depth;
}

const CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR: [...ATTRIBUTE_TAG.keys()],
  ALLOWED_NAMESPACES: ['http://www.w3.org/1999/xhtml'],
  ALLOWED_URI_REGEXP: /^https:\/\//i,
  // Not URIs: DOMPurify would test their values against ALLOWED_URI_REGEXP (the hook checks them).
  ADD_URI_SAFE_ATTR: ['start', 'data-mx-spoiler'],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ALLOW_UNKNOWN_PROTOCOLS: false,
  FORBID_TAGS,
  FORBID_ATTR: ['style', 'id', 'name', 'srcset', 'src', 'action', 'formaction', 'xlink:href'],
  ADD_FORBID_CONTENTS: ['mx-reply', 'textarea', `${RENAMED_PREFIX}style`, `${RENAMED_PREFIX}base`],
  KEEP_CONTENT: true,
  SANITIZE_DOM: true,
  SANITIZE_NAMED_PROPS: true,
  WHOLE_DOCUMENT: false,
  RETURN_DOM_FRAGMENT: true as const,
};

/**
 * A sender's HTML as a safe element (`div.html`), or undefined when it is too long to parse
 * or nothing is left of it.
 */
export function renderFormatted(html: string): HTMLElement | undefined {
  if (html.length > MAX_HTML_CHARS) return undefined;
  const fragment = purify.sanitize(renameForParse(html), CONFIG);
  dropBrokenLinks(fragment);
  markSpoilers(fragment);
  // Cut first, then say where links go: the cut must never remove a link's note nor shorten
  // the text of a link that stays (capFragmentText unwraps any link it cuts into or past).
  const truncated = capFragmentText(fragment, MAX_RENDERED_CHARS);
  finishLinks(fragment);
  revealTextNodes(fragment);
  const box = document.createElement('div');
  box.className = 'html';
  box.appendChild(fragment);
  if (truncated) {
    const note = document.createElement('span');
    note.className = 'truncated';
    note.textContent = ' (truncated)';
    box.appendChild(note);
  }
  if (box.textContent.trim() === '' && !box.querySelector('hr, br')) return undefined;
  return box;
}

/** After sanitizing: links inside links, and links left without an href, are unwrapped. */
function dropBrokenLinks(root: DocumentFragment): void {
  // Links inside links cannot come from the parser, but never trust that.
  for (const inner of Array.from(root.querySelectorAll('a a'))) unwrap(inner);
  for (const a of Array.from(root.querySelectorAll('a'))) {
    if (a.getAttribute('href') === null) unwrap(a);
  }
}

/**
 * After the cut: an empty link shows its target as its text, and a link whose text differs
 * from its target gets the target after it, as text.
 */
function finishLinks(root: DocumentFragment): void {
  for (const a of Array.from(root.querySelectorAll('a'))) {
    const href = a.getAttribute('href');
    const parent = a.parentNode;
    if (!parent) continue;
    if (href === null) {
      unwrap(a);
      continue;
    }
    if (a.textContent.trim() === '') {
      // An empty link (the parser makes them of nested ones) shows where it goes.
      a.textContent = href;
      continue;
    }
    if (hrefDiffersFromText(a.textContent, href)) {
      const shown = document.createElement('span');
      shown.className = 'real-href';
      shown.textContent = ` (${href})`;
      parent.insertBefore(shown, a.nextSibling);
    }
  }
}

/** `<span data-mx-spoiler>`: hidden behind a button-like box until clicked. */
function markSpoilers(root: DocumentFragment): void {
  for (const span of Array.from(root.querySelectorAll<HTMLSpanElement>('span[data-mx-spoiler]'))) {
    const reason = span.getAttribute('data-mx-spoiler') ?? '';
    span.removeAttribute('data-mx-spoiler');
    span.className = 'spoiler';
    span.setAttribute('role', 'button');
    span.setAttribute('tabindex', '0');
    span.setAttribute('aria-expanded', 'false');
    // The reason is the sender's text too: invisibles shown, cut by code point.
    const shown = revealInvisiblesText(truncateChars(reason, 200).text);
    const label = shown === '' ? 'Spoiler' : `Spoiler: ${shown}`;
    span.setAttribute('aria-label', `${label} (press to reveal)`);
    span.setAttribute('title', label);
    const reveal = (e: Event): void => {
      if (span.classList.contains('revealed')) return;
      e.preventDefault();
      e.stopPropagation();
      span.classList.add('revealed');
      span.setAttribute('aria-expanded', 'true');
      span.removeAttribute('role');
      span.removeAttribute('tabindex');
      span.removeAttribute('aria-label');
    };
    span.addEventListener('click', reveal);
    span.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') reveal(e);
    });
  }
}

/** Bidi controls and invisible characters in the text shown as `[U+XXXX]` badges. */
function revealTextNodes(root: DocumentFragment): void {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const texts: Text[] = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) if (n instanceof Text) texts.push(n);
  for (const node of texts) {
    const segments = revealInBody(node.data);
    if (segments.every((s) => s.kind === 'text')) continue;
    const parts = segments.map((s) => {
      if (s.kind === 'text') return document.createTextNode(s.text);
      const badge = document.createElement('span');
      badge.className = 'invisible-char';
      badge.textContent = `[${s.code}]`;
      return badge;
    });
    node.replaceWith(...parts);
  }
}

/**
 * Cuts the text after `max` characters (dropping what follows). A note the hooks added is
 * dropped whole, and every link the cut falls in or comes before is unwrapped: a link never
 * stays with text other than its sender wrote. Returns whether it cut.
 */
function capFragmentText(root: DocumentFragment, max: number): boolean {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let total = 0;
  let cutAt: Node | undefined;
  const drop: Node[] = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const text = n.nodeValue ?? '';
    if (cutAt) {
      drop.push(n);
      continue;
    }
    if (total + text.length > max) {
      n.nodeValue = wholeNotes.has(n) ? '' : text.slice(0, Math.max(0, max - total));
      cutAt = n;
    }
    total += text.length;
  }
  if (!cutAt) return false;
  for (const a of Array.from(root.querySelectorAll('a'))) {
    const after = cutAt.compareDocumentPosition(a) & Node.DOCUMENT_POSITION_FOLLOWING;
    if (a.contains(cutAt) || after) unwrap(a);
  }
  for (const n of drop) n.parentNode?.removeChild(n);
  return true;
}
