import { describe, expect, it } from 'vitest';
import {
  MAX_NAME_CHARS,
  NameIndex,
  foldName,
  hasInvisibles,
  isInvisible,
  isPrintableAscii,
  labelText,
  localpart,
  looksLikeRoomId,
  looksLikeUserId,
  mixesScripts,
  needsUserId,
  revealInvisibles,
  revealInvisiblesText,
  roomNeedsId,
  safeFileName,
} from '../../endpoint/untrusted/web/src/names.ts';

// The web UI's rules for names other users chose: nothing invisible shows as itself, and a
// name that could pass for someone else's comes with the real user id.

const LISTED = [
  ...range(0x202a, 0x202e),
  ...range(0x2066, 0x2069),
  0x200e,
  0x200f,
  0x061c,
  ...range(0x200b, 0x200d),
  ...range(0x2060, 0x2064),
  0xfeff,
  0x00ad,
  0x180e,
  0x034f,
  0x115f,
  0x1160,
  0x3164,
  0xffa0,
];

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

const hex = (cp: number) => `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;

describe('revealing invisible characters', () => {
  it('shows every listed bidi, zero-width and filler character as a badge', () => {
    for (const cp of LISTED) {
      const ch = String.fromCodePoint(cp);
      expect(isInvisible(ch), hex(cp)).toBe(true);
      expect(revealInvisibles(`a${ch}b`)).toEqual([
        { kind: 'text', text: 'a' },
        { kind: 'invisible', code: hex(cp) },
        { kind: 'text', text: 'b' },
      ]);
    }
  });

  it('also every other format or control character, separators, surrogates, unassigned', () => {
    for (const cp of [0x0000, 0x0007, 0x001b, 0x007f, 0x0085, 0x2028, 0x2029, 0x206f, 0xe0041]) {
      expect(isInvisible(String.fromCodePoint(cp)), hex(cp)).toBe(true);
    }
    expect(isInvisible('\uD800')).toBe(true);
    expect(isInvisible(String.fromCodePoint(0x0378))).toBe(true); // unassigned
  });

  it('leaves ordinary text, other scripts and emoji alone', () => {
    for (const text of ['Alice', 'Zoë', 'Ålesund', 'Алиса', 'أليس', '愛麗絲', '🎉', 'a b']) {
      expect(hasInvisibles(text), text).toBe(false);
      expect(revealInvisibles(text)).toEqual([{ kind: 'text', text }]);
    }
  });

  it('shows the classic right-to-left override file name trick', () => {
    expect(revealInvisiblesText('invoice\u202Efdp.exe')).toBe('invoice[U+202E]fdp.exe');
    expect(revealInvisibles('\u202E\u202E')).toEqual([
      { kind: 'invisible', code: 'U+202E' },
      { kind: 'invisible', code: 'U+202E' },
    ]);
    expect(revealInvisibles('')).toEqual([]);
  });

  it('names astral code points by their full value', () => {
    expect(revealInvisiblesText('x\u{E0020}')).toBe('x[U+E0020]');
  });
});

describe('folding names', () => {
  const same = (a: string, b: string) => foldName(a) === foldName(b);

  it('maps Cyrillic and Greek look-alikes to Latin', () => {
    expect(same('Аlice', 'Alice')).toBe(true); // Cyrillic А
    expect(same('аlісе', 'alice')).toBe(true); // Cyrillic а, і, с, е
    expect(same('Αlice', 'Alice')).toBe(true); // Greek Α
    expect(foldName('рayраl')).toBe('paypal');
    expect(foldName('ѕсоtt')).toBe('scott');
  });

  it('applies NFKC, drops accents and invisibles, lower-cases, collapses spaces', () => {
    expect(same('Ａｌｉｃｅ', 'alice')).toBe(true); // full-width
    expect(same('Alicé', 'Alice')).toBe(true);
    expect(same('Al\u200Bice', 'Alice')).toBe(true);
    expect(same('  Alice   Smith ', 'alice smith')).toBe(true);
    expect(same('ALICE', 'Alice')).toBe(true);
    expect(foldName('  Bob   Jones ')).toBe('bob jones');
  });

  it('reads capital I, i, 1 and | alike, 0 as o, rn as m', () => {
    expect(same('AIice', 'Alice')).toBe(true);
    expect(same('A1ice', 'Alice')).toBe(true);
    expect(same('A|ice', 'ALICE')).toBe(true);
    expect(same('B0b', 'Bob')).toBe(true);
    expect(same('rnallory', 'mallory')).toBe(true);
  });

  it('tells apart names that only look different', () => {
    expect(same('Alice', 'Alicia')).toBe(false);
    expect(same('Bob', 'Rob')).toBe(false);
  });
});

describe('needsUserId', () => {
  const others = ['@bob:example.org', 'Bob', '@carol:example.org', 'Carol'];

  it('is false for a plain name no one else uses', () => {
    expect(needsUserId('Alice', '@alice:example.org', others)).toBe(false);
    expect(needsUserId('alice', '@alice:example.org', [])).toBe(false);
  });

  it("is true when the name folds to another member's display name", () => {
    expect(needsUserId('Bob', '@mallory:evil.example', others)).toBe(true);
    expect(needsUserId('BOB', '@mallory:evil.example', others)).toBe(true);
    expect(needsUserId('Воb', '@mallory:evil.example', ['Bob'])).toBe(true); // Cyrillic В, о
    expect(needsUserId('Ca rol', '@mallory:evil.example', others)).toBe(false);
  });

  it("is true when the name folds to another member's localpart", () => {
    expect(needsUserId('carol', '@mallory:evil.example', ['@carol:example.org'])).toBe(true);
    expect(needsUserId('Dave', '@mallory:evil.example', ['@dave:example.org'])).toBe(true);
  });

  it('ignores the member themselves in the list', () => {
    expect(needsUserId('alice', '@alice:example.org', ['@alice:example.org'])).toBe(false);
  });

  it('is true for a name shaped like a user id', () => {
    expect(looksLikeUserId('@bob:example.org')).toBe(true);
    expect(needsUserId('@bob:example.org', '@mallory:evil.example', [])).toBe(true);
    expect(needsUserId('Bob (@bob:example.org)', '@mallory:evil.example', [])).toBe(true);
    expect(needsUserId('＠bob：example.org', '@mallory:evil.example', [])).toBe(true); // full-width
    expect(needsUserId('bob@example.org', '@mallory:evil.example', [])).toBe(false);
  });

  it('reads any colon look-alike as a colon, and any name starting with @ as id-shaped', () => {
    for (const colon of [
      ':',
      '\u2236',
      '\uA789',
      '\u02D0',
      '\uFE55',
      '\uFF1A',
      '\u16EC',
      '\uFE13',
      '\u05C3',
    ]) {
      expect(looksLikeUserId(`Bob (@bob${colon}example.org)`), JSON.stringify(colon)).toBe(true);
      expect(looksLikeRoomId(`see !abc${colon}example.org`), JSON.stringify(colon)).toBe(true);
    }
    expect(looksLikeUserId('@bob')).toBe(true);
    expect(looksLikeUserId('  \u200B@bob')).toBe(true);
    expect(needsUserId('@bob', '@mallory:evil.example', [])).toBe(true);
    expect(looksLikeUserId('Bob @ work')).toBe(false);
    for (const name of ['!abc', '#general', '@bob']) expect(looksLikeRoomId(name), name).toBe(true);
    expect(looksLikeRoomId('Room #1')).toBe(false);
  });

  it('is true for invisible and bidi characters', () => {
    expect(needsUserId('Alice\u200B', '@a:x', [])).toBe(true);
    expect(needsUserId('\u202Eecila', '@a:x', [])).toBe(true);
    expect(needsUserId('Al\u2066ice', '@a:x', [])).toBe(true);
    expect(needsUserId('\u3164', '@a:x', [])).toBe(true); // Hangul filler: looks empty
  });

  it('is true for any name with a character outside printable ASCII, whatever its script', () => {
    expect(mixesScripts('Аlice')).toBe(true);
    expect(mixesScripts('Alice')).toBe(false);
    expect(mixesScripts('Алиса')).toBe(false);
    expect(mixesScripts('Αλίκη')).toBe(false);
    expect(isPrintableAscii(' Alice ~ Bob!')).toBe(true);
    expect(isPrintableAscii('Zoë')).toBe(false);
    expect(needsUserId('Аlice', '@a:x', [])).toBe(true); // mixed scripts
    expect(needsUserId('Алиса', '@a:x', [])).toBe(true); // one script, but not ASCII
    expect(needsUserId('Zoë', '@a:x', [])).toBe(true);
    expect(needsUserId('🎉', '@a:x', [])).toBe(true);
    expect(needsUserId('Alice ~ Bob!', '@a:x', [])).toBe(false);
  });

  it('is true for names that are empty once folded, or too long to show whole', () => {
    expect(needsUserId('   ', '@a:x', [])).toBe(true);
    expect(needsUserId('x'.repeat(MAX_NAME_CHARS + 1), '@a:x', [])).toBe(true);
    expect(needsUserId('x'.repeat(MAX_NAME_CHARS), '@a:x', [])).toBe(false);
  });
});

describe('NameIndex', () => {
  const names = new NameIndex(
    {
      '@alice:example.org': 'Alice',
      '@mallory:evil.example': 'Аlice', // Cyrillic А
      '@bob:example.org': 'Bob',
      '@dave:example.org': 'carol',
    },
    [
      '@alice:example.org',
      '@mallory:evil.example',
      '@bob:example.org',
      '@carol:example.org',
      '@dave:example.org',
    ],
  );

  it('shows a member without a display name by user id', () => {
    expect(names.label('@carol:example.org')).toEqual({
      name: undefined,
      truncated: false,
      showUserId: true,
    });
    expect(names.label('@stranger:example.org').showUserId).toBe(true);
  });

  it('shows the user id on both sides of a collision', () => {
    expect(names.label('@alice:example.org').showUserId).toBe(true);
    expect(names.label('@mallory:evil.example').showUserId).toBe(true);
    expect(names.label('@dave:example.org').showUserId).toBe(true); // "carol" is @carol's localpart
  });

  it('shows a unique name alone', () => {
    expect(names.label('@bob:example.org')).toEqual({
      name: 'Bob',
      truncated: false,
      showUserId: false,
    });
  });

  it('cuts long names and then shows the id', () => {
    const long = 'n'.repeat(200);
    const label = new NameIndex({ '@l:x': long }, ['@l:x']).label('@l:x');
    expect(label.name).toBe('n'.repeat(MAX_NAME_CHARS));
    expect(label.truncated).toBe(true);
    expect(label.showUserId).toBe(true);
  });

  it('is not fooled by prototype keys', () => {
    const index = new NameIndex(
      JSON.parse('{"__proto__": "x", "@a:x": "A"}') as Record<string, string>,
      [],
    );
    expect(index.label('@a:x').name).toBe('A');
    expect(index.label('constructor').name).toBeUndefined();
  });
});

describe('labelText', () => {
  it('spells a member out as the timeline shows them: id when the name shows it, invisibles revealed', () => {
    const names = new NameIndex(
      { '@a:x': 'Alice', '@b:x': 'Bob\u202E', '@c:x': 'n'.repeat(MAX_NAME_CHARS + 1) },
      ['@a:x', '@b:x', '@c:x', '@d:x\u200B'],
    );
    expect(labelText('@a:x', names.label('@a:x'))).toBe('Alice');
    expect(labelText('@b:x', names.label('@b:x'))).toBe('Bob[U+202E] (@b:x)');
    expect(labelText('@c:x', names.label('@c:x'))).toBe(`${'n'.repeat(MAX_NAME_CHARS)}… (@c:x)`);
    expect(labelText('@d:x\u200B', names.label('@d:x\u200B'))).toBe('@d:x[U+200B]');
  });
});

describe('localpart', () => {
  it('takes the part between @ and the first colon', () => {
    expect(localpart('@alice:example.org')).toBe('alice');
    expect(localpart('@alice:example.org:8448')).toBe('alice');
    expect(localpart('alice')).toBe('alice');
  });
});

describe('roomNeedsId', () => {
  it('is true for look-alike, id-shaped or invisible room names', () => {
    expect(roomNeedsId('Support', ['Ѕupport'])).toBe(true);
    expect(roomNeedsId('!abc:example.org', [])).toBe(true);
    expect(roomNeedsId('#general:example.org', [])).toBe(true);
    expect(roomNeedsId('Team\u202E', [])).toBe(true);
    expect(roomNeedsId('Pаyments', [])).toBe(true); // mixed scripts
    expect(roomNeedsId('Платежи', [])).toBe(true); // not ASCII
    expect(roomNeedsId('!abc\u2236example.org', [])).toBe(true); // colon look-alike
    expect(roomNeedsId('#general', [])).toBe(true); // starts like an alias
  });

  it('is false for a plain unique name', () => {
    expect(roomNeedsId('Support', ['Sales'])).toBe(false);
  });
});

describe('safeFileName', () => {
  it('shows bidi tricks and replaces path separators', () => {
    expect(safeFileName('invoice\u202Efdp.exe')).toBe('invoice[U+202E]fdp.exe');
    expect(safeFileName('../../etc/passwd')).toBe('_.._etc_passwd');
    expect(safeFileName('a\\b:c*?"<>|d')).toBe('a_b_c______d');
    expect(safeFileName('.bashrc')).toBe('bashrc');
    expect(safeFileName('')).toBe('download');
    expect(safeFileName('...')).toBe('download');
    expect(Array.from(safeFileName('x'.repeat(500))).length).toBe(200);
  });
});
