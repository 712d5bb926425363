/**
 * A rename pass over a sender's HTML before DOMPurify parses it. Not a sanitizer and not a
 * parser: DOMPurify does all of that, on the DOM. This only keeps the browser's own parser from
 * meeting what the page's CSP would report while it builds the (inert) document DOMPurify
 * reads: `style` and `on*` attributes, `<style>` and `<base>` elements. They are renamed to
 * names no allow-list holds (`mte-x-onerror`, `<mte-x-style>`), so DOMPurify removes them like
 * any other unknown name and the CSP never has to step in. Whatever this pass misses, DOMPurify
 * still removes: the worst a miss does is a CSP report.
 *
 * A tag is a `<letter ...>` run (quoted values kept whole); in it, an attribute name `style`
 * or `on...` (after white space, `/` or a quote, as the HTML tokenizer allows) gets the prefix,
 * and so does a tag named `style` or `base`. Quoted values and all text outside tags are left
 * exactly as they were.
 */

export const RENAMED_PREFIX = 'mte-x-';

const TAG = /<(\/?)([a-zA-Z][^\s/>]*)((?:"[^"]*"|'[^']*'|[^>"'])*)(>?)/g;
const RENAMED_TAGS = /^(?:style|base)$/i;
const ATTRIBUTE = /("[^"]*"|'[^']*')|(?<=^|[\s/"'])(on[^\s/>="']*|style)(?=[\s/>="']|$)/gi;

export function renameForParse(html: string): string {
  return html.replace(TAG, (_tag, close: string, name: string, rest: string, end: string) => {
    const tagName = RENAMED_TAGS.test(name) ? `${RENAMED_PREFIX}${name}` : name;
    const attributes = rest.replace(ATTRIBUTE, (match: string, quoted: string | undefined) =>
      quoted === undefined ? `${RENAMED_PREFIX}${match}` : quoted,
    );
    return `<${close}${tagName}${attributes}${end}`;
  });
}
