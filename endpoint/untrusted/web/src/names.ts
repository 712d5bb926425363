/**
 * Names other users chose (display names, room names, file names, reaction keys) and the ids
 * they hide behind. Pure functions, no DOM: dom.ts renders what these decide.
 *
 * Two rules:
 * - nothing invisible or direction-changing is shown as itself: each such character becomes a
 *   visible `[U+XXXX]` badge, and every name is rendered inside a <bdi>;
 * - a display name that could pass for someone else is shown with the real user id: any name
 *   with a character outside printable ASCII (no table of look-alikes is ever complete), one
 *   the same as another member's name or localpart once folded, one shaped like a user id, one
 *   carrying invisibles, one too long to show whole.
 */

/** Characters listed by name (bidi controls, zero-width and filler characters). */
const LISTED =
  '\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C' + // bidi embeddings, overrides, isolates, marks
  '\u200B-\u200D\u2060-\u2064\uFEFF\u00AD\u180E\u034F' + // zero-width, joiners, soft hyphen, CGJ
  '\u115F\u1160\u3164\uFFA0\u2800'; // Hangul fillers, braille blank
/**
 * One invisible (or direction-changing) code point: the listed ones, every format (Cf) and
 * control (Cc) character, line and paragraph separators, lone surrogates and unassigned code
 * points (which render as nothing or as something a later font decides).
 */
// eslint-disable-next-line no-misleading-character-class -- each code point is matched alone, by design
const INVISIBLE = new RegExp(`[${LISTED}\\p{Cf}\\p{Cc}\\p{Zl}\\p{Zp}\\p{Cs}\\p{Cn}]`, 'u');
// eslint-disable-next-line no-misleading-character-class -- as INVISIBLE
const INVISIBLE_ALL = new RegExp(INVISIBLE.source, 'gu');
/** The bidi controls alone (a subset of INVISIBLE). */
const BIDI = /[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/u;

/** Display names longer than this many code points are cut (and shown with the user id). */
export const MAX_NAME_CHARS = 64;

export type Segment = { kind: 'text'; text: string } | { kind: 'invisible'; code: string };

export function isInvisible(char: string): boolean {
  return INVISIBLE.test(char);
}

export function hasInvisibles(text: string): boolean {
  return INVISIBLE.test(text);
}

export function hasBidiControls(text: string): boolean {
  return BIDI.test(text);
}

/** Printable ASCII only (U+0020 to U+007E): the one alphabet whose look-alikes are known. */
export function isPrintableAscii(text: string): boolean {
  return /^[\x20-\x7E]*$/.test(text);
}

/** `U+202E` for a code point. */
export function codeLabel(char: string): string {
  const cp = char.codePointAt(0) ?? 0;
  return `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Splits text into visible runs and the invisible characters between them, one by one. */
export function revealInvisibles(text: string): Segment[] {
  const out: Segment[] = [];
  let run = '';
  for (const char of text) {
    if (isInvisible(char)) {
      if (run !== '') out.push({ kind: 'text', text: run });
      run = '';
      out.push({ kind: 'invisible', code: codeLabel(char) });
    } else {
      run += char;
    }
  }
  if (run !== '') out.push({ kind: 'text', text: run });
  return out;
}

const LINE_BREAKS_AND_TABS = new Set(['\n', '\r', '\t']);
const ZWJ = '\u200D';
const BLACK_FLAG = '\u{1F3F4}';
const isTag = (c: string | undefined) => c !== undefined && /^[\u{E0020}-\u{E007E}]$/u.test(c);
const isPictographic = (c: string | undefined) =>
  c !== undefined && /\p{Extended_Pictographic}/u.test(c);
/** Marks that may sit between a pictograph and a joiner (variation selector, skin tones). */
const isEmojiMark = (c: string | undefined) => {
  const cp = c?.codePointAt(0) ?? 0;
  return cp === 0xfe0f || (cp >= 0x1f3fb && cp <= 0x1f3ff);
};

/**
 * Message bodies: as revealInvisibles, but text keeps what it needs: line breaks and tabs, the
 * joiner inside an emoji sequence (👩‍💻) and the tags of a subdivision flag (🏴 England).
 * Bidi controls and zero-width characters anywhere else are shown.
 */
export function revealInBody(text: string): Segment[] {
  const chars = Array.from(text);
  const keep = new Set<number>();
  chars.forEach((c, i) => {
    if (c === ZWJ && isPictographic(chars[i + 1])) {
      let j = i - 1;
      while (j >= 0 && isEmojiMark(chars[j])) j--;
      if (isPictographic(chars[j])) keep.add(i);
    }
    if (c === BLACK_FLAG) {
      let j = i + 1;
      while (isTag(chars[j])) j++;
      if (j > i + 1 && chars[j] === '\u{E007F}') for (let k = i + 1; k <= j; k++) keep.add(k);
    }
  });
  const out: Segment[] = [];
  let run = '';
  chars.forEach((c, i) => {
    if (!isInvisible(c) || LINE_BREAKS_AND_TABS.has(c) || keep.has(i)) {
      run += c;
      return;
    }
    if (run !== '') out.push({ kind: 'text', text: run });
    run = '';
    out.push({ kind: 'invisible', code: codeLabel(c) });
  });
  if (run !== '') out.push({ kind: 'text', text: run });
  return out;
}

/** The same as plain text: `ab[U+202E]cd` (for labels and file names). */
export function revealInvisiblesText(text: string): string {
  return revealInvisibles(text)
    .map((s) => (s.kind === 'text' ? s.text : `[${s.code}]`))
    .join('');
}

export function stripInvisibles(text: string): string {
  return text.replace(INVISIBLE_ALL, '');
}

/** At most `max` code points, and whether anything was cut. */
export function truncateChars(text: string, max: number): { text: string; truncated: boolean } {
  const chars = Array.from(text);
  if (chars.length <= max) return { text, truncated: false };
  return { text: chars.slice(0, max).join(''), truncated: true };
}

/**
 * Letters of other scripts that look like Latin ones (lower case: folding lower-cases first),
 * and Latin characters that pass for others. A small table, not Unicode's full confusables,
 * and not what catches impersonation: a name with anything outside printable ASCII always
 * shows the user id. The table makes the name it imitates show the id too (a Cyrillic "а" in
 * "Alice" marks both Alices); the ASCII entries fold ASCII look-alikes ("A1ice", "B0b").
 */
const CONFUSABLES: Readonly<Record<string, string>> = {
  // Cyrillic
  а: 'a',
  в: 'b',
  г: 'r',
  е: 'e',
  һ: 'h',
  і: 'l',
  ј: 'j',
  к: 'k',
  ӏ: 'l',
  м: 'm',
  н: 'h',
  о: 'o',
  п: 'n',
  р: 'p',
  с: 'c',
  т: 't',
  у: 'y',
  х: 'x',
  ѕ: 's',
  ԁ: 'd',
  ԛ: 'q',
  ԝ: 'w',
  ь: 'b',
  // Greek
  α: 'a',
  β: 'b',
  ε: 'e',
  ζ: 'z',
  η: 'h',
  ι: 'l',
  κ: 'k',
  μ: 'm',
  ν: 'v',
  ο: 'o',
  ρ: 'p',
  τ: 't',
  υ: 'u',
  χ: 'x',
  ω: 'w',
  ϲ: 'c',
  ϳ: 'j',
  // Armenian
  օ: 'o',
  ս: 'u',
  հ: 'h',
  // Latin look-alikes and digits
  i: 'l',
  ı: 'l',
  ɩ: 'l',
  ɡ: 'g',
  '0': 'o',
  '1': 'l',
  '|': 'l',
};

/**
 * A name reduced to what it looks like: NFKC, invisibles removed, accents dropped, lower-cased,
 * look-alike letters mapped to Latin (i, l, 1 and | all to l: "AIice" and "ALICE" are "Alice"),
 * "rn" read as "m", runs of white space as one space. A key to compare, not a name to show.
 */
export function foldName(name: string): string {
  let s = stripInvisibles(name.normalize('NFKC'));
  s = s.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();
  let mapped = '';
  for (const char of s) mapped += CONFUSABLES[char] ?? char;
  return mapped.replace(/rn/g, 'm').replace(/vv/g, 'w').replace(/\s+/gu, ' ').trim();
}

/** `alice` for `@alice:example.org` (the whole id when it is not one). */
export function localpart(userId: string): string {
  const colon = userId.indexOf(':');
  return userId.startsWith('@') && colon > 1 ? userId.slice(1, colon) : userId;
}

/** Characters that read as a colon (`:` and look-alikes: ratio, modifier colons, full-width...). */
const COLONS = ':\u2236\uA789\u02D0\uFE55\uFF1A\u16EC\uFE13\u05C3';

/**
 * Shaped like a Matrix id with one of `sigils`: starting with one (white space and invisibles
 * aside), or one followed by two parts that any colon-like character separates. Checked as
 * written and after NFKC (full-width `＠` and `：` included). Conservative by design.
 */
function looksLikeId(name: string, sigils: string): boolean {
  const shaped = new RegExp(`^[${sigils}]|[${sigils}][^\\s${COLONS}]*[${COLONS}]\\S`, 'u');
  const raw = stripInvisibles(name).trim();
  return shaped.test(raw) || shaped.test(stripInvisibles(raw.normalize('NFKC')).trim());
}

/** Looks like a Matrix user id: starts with `@`, or has `@x:y` in it (any colon look-alike). */
export function looksLikeUserId(name: string): boolean {
  return looksLikeId(name, '@');
}

/** Looks like a room id, alias or user id: starts with `!`, `#` or `@`, or has `!x:y` in it. */
export function looksLikeRoomId(name: string): boolean {
  return looksLikeId(name, '!#@');
}

/**
 * Latin letters side by side with Cyrillic, Greek, Armenian or Cherokee ones (a flag shown
 * beside contacts' names; names themselves show the id for any non-ASCII character).
 */
export function mixesScripts(name: string): boolean {
  const s = name.normalize('NFKC');
  return (
    /\p{Script=Latin}/u.test(s) &&
    /[\p{Script=Cyrillic}\p{Script=Greek}\p{Script=Armenian}\p{Script=Cherokee}]/u.test(s)
  );
}

/** Reasons a name needs the user id beside it, whoever else is in the room. */
function suspiciousAlone(name: string): boolean {
  return (
    hasInvisibles(name) ||
    !isPrintableAscii(name) ||
    looksLikeUserId(name) ||
    foldName(name) === '' ||
    Array.from(name).length > MAX_NAME_CHARS
  );
}

function foldedOther(other: string): string {
  return foldName(other.startsWith('@') && other.includes(':') ? localpart(other) : other);
}

/**
 * Whether `name` (the display name of `userId`) must be shown with the user id: it folds to
 * the same as another member's display name or user id localpart (`otherNames` holds both:
 * user ids are recognised by their `@x:y` shape), has any character outside printable ASCII,
 * looks like a user id, carries invisible or bidi characters, is empty once folded, or is cut.
 */
export function needsUserId(name: string, userId: string, otherNames: Iterable<string>): boolean {
  if (suspiciousAlone(name)) return true;
  const folded = foldName(name);
  for (const other of otherNames) {
    if (other === userId) continue;
    if (foldedOther(other) === folded) return true;
  }
  return false;
}

/** How to show one member: the name (if they set one) and whether the user id goes with it. */
export interface MemberLabel {
  /** The display name as set (possibly cut); absent: show the user id alone. */
  name: string | undefined;
  /** The name was cut to MAX_NAME_CHARS. */
  truncated: boolean;
  /** Show the user id (always true without a name). */
  showUserId: boolean;
}

/**
 * A member as plain text, as userLabel shows them (for a live region or a label): the name
 * with invisibles spelled out as `[U+XXXX]`, and the user id whenever the name shows it.
 */
export function labelText(userId: string, label: MemberLabel): string {
  const id = revealInvisiblesText(userId);
  if (label.name === undefined) return id;
  const name = revealInvisiblesText(label.name) + (label.truncated ? '…' : '');
  return label.showUserId ? `${name} (${id})` : name;
}

/**
 * The names of one room, folded once: which users each folded name or localpart belongs to,
 * so labelling every sender of a timeline costs one lookup each.
 */
export class NameIndex {
  readonly #names: ReadonlyMap<string, string>;
  readonly #owners = new Map<string, Set<string>>();

  constructor(
    displayNames: Readonly<Record<string, string>> | undefined,
    members: Iterable<string>,
  ) {
    this.#names = new Map(Object.entries(displayNames ?? {}));
    const users = new Set<string>(members);
    for (const userId of this.#names.keys()) users.add(userId);
    for (const userId of users) {
      this.#own(foldedOther(userId), userId);
      const name = this.#names.get(userId);
      if (name !== undefined) this.#own(foldName(name), userId);
    }
  }

  #own(folded: string, userId: string): void {
    const owners = this.#owners.get(folded);
    if (owners) owners.add(userId);
    else this.#owners.set(folded, new Set([userId]));
  }

  displayName(userId: string): string | undefined {
    return this.#names.get(userId);
  }

  label(userId: string): MemberLabel {
    const name = this.#names.get(userId);
    if (name === undefined || name === '') {
      return { name: undefined, truncated: false, showUserId: true };
    }
    const cut = truncateChars(name, MAX_NAME_CHARS);
    let showUserId = suspiciousAlone(name);
    if (!showUserId) {
      const owners = this.#owners.get(foldName(name));
      showUserId = owners !== undefined && [...owners].some((owner) => owner !== userId);
    }
    return { name: cut.text, truncated: cut.truncated, showUserId };
  }
}

/**
 * A file name fit for `<a download>`: invisibles shown as `[U+XXXX]` (so "invoice[U+202E]fdp.exe"
 * cannot pass for a PDF), path separators and characters file systems refuse replaced, leading
 * dots removed, at most 200 characters; "download" when nothing is left.
 */
export function safeFileName(name: string): string {
  let s = revealInvisiblesText(name.normalize('NFC'));
  s = s.replace(/[/\\:*?"<>|]/g, '_').replace(/^[.\s]+/, '');
  s = truncateChars(s, 200).text.trim();
  return s === '' ? 'download' : s;
}

/**
 * Whether a room's name must be shown with its room id: it carries invisibles, has any
 * character outside printable ASCII, looks like a room or user id, is empty once folded or too
 * long, or folds to another room's name.
 */
export function roomNeedsId(name: string, otherRoomNames: Iterable<string>): boolean {
  if (hasInvisibles(name) || !isPrintableAscii(name) || looksLikeRoomId(name)) return true;
  const folded = foldName(name);
  if (folded === '' || Array.from(name).length > 255) return true;
  for (const other of otherRoomNames) if (foldName(other) === folded) return true;
  return false;
}
