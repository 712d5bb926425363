import { describe, expect, it } from 'vitest';
import {
  NameIndex,
  looksLikeUserId,
  needsUserId,
  revealInvisibles,
  revealInvisiblesText,
  roomNeedsId,
  safeFileName,
} from '../../endpoint/untrusted/web/src/names.ts';

// Security review of names.ts: whether a name another user chose can pass for someone else's.
// The first block was found failing (each an impersonation that went through without the real
// user id beside it) and is fixed by showing the id for any name outside printable ASCII and
// reading any colon look-alike as a colon; the rest pin down what held already.

const VICTIM = '@victim:example.org';
const ATTACKER = '@mallory:evil.example';

/** Whether the attacker's display name is shown with the attacker's user id, beside the victim's. */
function flagged(attackerName: string, victimName: string): boolean {
  const names = new NameIndex({ [VICTIM]: victimName, [ATTACKER]: attackerName }, [
    VICTIM,
    ATTACKER,
  ]);
  return names.label(ATTACKER).showUserId;
}

describe('look-alike display names outside printable ASCII are shown with the id', () => {
  it('flags "ΤΟΝΥ" (all Greek) beside "TONY", though Nu and Upsilon fold to v and u', () => {
    // Τ Ο Ν Υ are U+03A4 U+039F U+039D U+03A5: rendered exactly like Latin T O N Y.
    expect(flagged('\u03A4\u039F\u039D\u03A5', 'TONY')).toBe(true);
    expect(flagged('\u039D\u0395\u039F', 'NEO')).toBe(true);
    expect(needsUserId('\u03A4\u039F\u039D\u03A5', ATTACKER, ['TONY'])).toBe(true);
  });

  it('flags an all-Cherokee name ("ᎪᎠᎪᎷ") beside a Latin one ("ADAM")', () => {
    // Cherokee capitals look like Latin capitals (and fold to Cherokee small letters, U+AB70..,
    // which the confusables table does not know): caught as non-ASCII.
    expect(flagged('\u13AA\u13A0\u13AA\u13B7', 'ADAM')).toBe(true);
  });

  it('flags Lisu look-alikes ("ꓮlice", "ꓮꓡꓲꓚꓰ"), with or without an "Alice" in the room', () => {
    // U+A4EE LISU LETTER A looks like a Latin capital A.
    expect(flagged('\uA4EElice', 'Alice')).toBe(true);
    // ...and on its own, with no Alice in the room.
    expect(needsUserId('\uA4EElice', ATTACKER, [])).toBe(true);
    // All Lisu: ꓮꓡꓲꓚꓰ reads "ALICE".
    expect(flagged('\uA4EE\uA4E1\uA4F2\uA4DA\uA4F0', 'ALICE')).toBe(true);
  });

  it('flags Latin look-alikes outside the table ("ɑlice", "ᴀlice", "Ɑlice")', () => {
    expect(flagged('\u0251lice', 'alice')).toBe(true); // LATIN SMALL LETTER ALPHA
    expect(flagged('\u1D00lice', 'alice')).toBe(true); // LATIN LETTER SMALL CAPITAL A
    expect(flagged('\u2C6Dlice', 'Alice')).toBe(true); // LATIN CAPITAL LETTER ALPHA
  });

  it('flags a display name shaped like a user id with a look-alike colon', () => {
    // A member without a display name is shown by user id alone: "@admin:example.org". These
    // display names render the same, so they must come with the attacker's real id.
    for (const name of [
      '@admin\u2236example.org', // RATIO
      '@admin\uA789example.org', // MODIFIER LETTER COLON
      '@admin\u02D0example.org', // MODIFIER LETTER TRIANGULAR COLON
    ]) {
      expect(looksLikeUserId(name), JSON.stringify(name)).toBe(true);
      expect(needsUserId(name, ATTACKER, []), JSON.stringify(name)).toBe(true);
    }
  });

  it('shows the room id for a room name shaped like a room id with a look-alike colon', () => {
    expect(roomNeedsId('!AbCdEf\u2236example.org', [])).toBe(true);
  });

  it("shows the room id for an all-Greek room name beside another room's Latin name", () => {
    expect(roomNeedsId('\u03A4\u039F\u039D\u03A5', ['TONY'])).toBe(true);
  });
});

describe('what holds: names that are caught', () => {
  it('flags Cyrillic/Greek letters mixed with Latin, and whole-Cyrillic look-alikes', () => {
    expect(flagged('\u0410lice', 'Alice')).toBe(true); // Cyrillic А + Latin
    expect(flagged('\u0391dam', 'Adam')).toBe(true); // Greek Α + Latin
    expect(flagged('\u0405\u0410\u041C', 'SAM')).toBe(true); // all Cyrillic ЅАМ
    expect(needsUserId('p\u0430ypal', ATTACKER, [])).toBe(true);
  });

  it('flags collisions after case, width, accents, digits, i/l/1/|, rn/m, vv/w and spaces', () => {
    for (const [attacker, victim] of [
      ['ALICE', 'alice'],
      ['\uFF21lice', 'Alice'],
      ['Al\u00EDce', 'Alice'],
      ['AIice', 'Alice'],
      ['A1ice', 'Alice'],
      ['A|ice', 'Alice'],
      ['Wi1liam', 'William'],
      ['rnallory', 'mallory'],
      ['vvill', 'will'],
      ['Bob  ', 'Bob'],
      ['B0b', 'Bob'],
      ['Alice\u0301', 'Alice'],
    ]) {
      expect(flagged(attacker ?? '', victim ?? ''), `${attacker} vs ${victim}`).toBe(true);
    }
  });

  it("flags a name equal to another member's localpart, and names shaped like a user id", () => {
    const names = new NameIndex({ [ATTACKER]: 'victim' }, [VICTIM, ATTACKER]);
    expect(names.label(ATTACKER).showUserId).toBe(true);
    for (const name of [
      '@victim:example.org',
      '\uFF20victim\uFF1Aexample.org',
      '\uFE6Bvictim\uFE55example.org',
      'Bob (@victim:example.org)',
      '@victim\u200B:example.org',
    ]) {
      expect(needsUserId(name, ATTACKER, []), JSON.stringify(name)).toBe(true);
    }
  });

  it('flags and reveals bidi controls and invisibles in names', () => {
    for (const name of ['Alice\u202E', 'Al\u200Bice', '\u2066Bob\u2069', 'Bob\u00AD', '\u3164']) {
      expect(needsUserId(name, ATTACKER, []), JSON.stringify(name)).toBe(true);
    }
    expect(revealInvisiblesText('@eve:ex\u202Eample.org')).toBe('@eve:ex[U+202E]ample.org');
    expect(revealInvisibles('a\u2067b').map((s) => s.kind)).toEqual(['text', 'invisible', 'text']);
  });

  it("a user's own name never collides with their own localpart", () => {
    const names = new NameIndex({ [VICTIM]: 'Victim' }, [VICTIM]);
    expect(names.label(VICTIM).showUserId).toBe(false);
  });

  it('makes file names safe: no direction trick, no path, no hidden file', () => {
    expect(safeFileName('invoice\u202Efdp.exe')).toBe('invoice[U+202E]fdp.exe');
    expect(safeFileName('../../.bashrc')).toBe('_.._.bashrc');
    expect(safeFileName('..\\..\\x')).toBe('_.._x');
    expect(safeFileName('.\u200B')).toBe('[U+200B]');
    expect(safeFileName('')).toBe('download');
  });
});
