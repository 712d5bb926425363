import { describe, expect, it } from 'vitest';
import {
  Timeline,
  identityLabel,
  isIdentityViolation,
  newerFlow,
  shieldOf,
} from '../../endpoint/untrusted/web/src/model.ts';
import type {
  StreamEvent,
  TimelineItem,
  VerificationFlow,
  VerificationPhase,
} from '../../endpoint/untrusted/web/src/types.ts';

// The open room's timeline as the web UI holds it: pages, live messages, and what edits,
// reactions and redactions do.

const ME = '@me:example.org';
const ROOM = '!room:example.org';

function item(eventId: string, extra: Partial<TimelineItem> = {}): TimelineItem {
  return {
    eventId,
    sender: '@alice:example.org',
    ts: 1000,
    kind: 'message',
    decrypted: true,
    body: `body of ${eventId}`,
    encrypted: true,
    verification: 'verified',
    ...extra,
  };
}

type Of<T extends StreamEvent['type']> = Extract<StreamEvent, { type: T }>;
const edit = (target: string, body: string, extra: Partial<Of<'edit'>> = {}): Of<'edit'> => ({
  seq: 1,
  type: 'edit',
  roomId: ROOM,
  target,
  eventId: `$edit-${target}`,
  body,
  ts: 2000,
  ...extra,
});
const reaction = (
  target: string,
  eventId: string,
  key: string,
  sender: string,
): Of<'reaction'> => ({
  seq: 1,
  type: 'reaction',
  roomId: ROOM,
  target,
  eventId,
  key,
  sender,
});
const redaction = (target: string): Of<'redaction'> => ({
  seq: 1,
  type: 'redaction',
  roomId: ROOM,
  target,
  sender: '@mod:example.org',
});

const ids = (t: Timeline) => t.items().map((i) => i.eventId);

describe('Timeline pages', () => {
  it('shows the newest page oldest first, and older pages before it', () => {
    const t = new Timeline(ROOM);
    t.reset({ items: [item('$3'), item('$2')], next: 'p1' });
    expect(ids(t)).toEqual(['$2', '$3']);
    expect(t.next).toBe('p1');
    expect(t.older({ items: [item('$2'), item('$1'), item('$0')], next: 'p2' })).toEqual([
      '$0',
      '$1',
    ]);
    expect(ids(t)).toEqual(['$0', '$1', '$2', '$3']);
    expect(t.next).toBe('p2');
    t.older({ items: [] });
    expect(t.next).toBeUndefined();
  });

  it('appends live messages once, replacing one it already holds', () => {
    const t = new Timeline(ROOM);
    t.reset({ items: [item('$1')] });
    expect(t.add(item('$2'))).toBe('added');
    expect(t.add(item('$2', { body: 'again' }))).toBe('replaced');
    expect(ids(t)).toEqual(['$1', '$2']);
    expect(t.get('$2')?.body).toBe('again');
  });

  it('a refetch replaces everything', () => {
    const t = new Timeline(ROOM);
    t.reset({ items: [item('$1')] });
    t.add(item('$2'));
    t.reset({ items: [item('$9')] });
    expect(ids(t)).toEqual(['$9']);
  });
});

describe('edits', () => {
  it('replace the text and mark the item edited', () => {
    const t = new Timeline(ROOM);
    t.reset({ items: [item('$1', { formattedBody: '<b>old</b>' })] });
    expect(t.edit(edit('$1', 'new'))).toBe('$1');
    expect(t.get('$1')).toMatchObject({ body: 'new', edited: true, editedAt: 2000 });
    // The old HTML never stays beside the new text.
    expect(t.get('$1')?.formattedBody).toBeUndefined();
    t.edit(edit('$1', 'newer', { formattedBody: '<i>newer</i>' }));
    expect(t.get('$1')?.formattedBody).toBe('<i>newer</i>');
  });

  it('do nothing to unknown, redacted or undecryptable items', () => {
    const t = new Timeline(ROOM);
    t.reset({
      items: [
        item('$1', { kind: 'redacted', body: undefined }),
        item('$2', { kind: 'undecryptable' }),
      ],
    });
    expect(t.edit(edit('$1', 'x'))).toBeUndefined();
    expect(t.edit(edit('$2', 'x'))).toBeUndefined();
    expect(t.edit(edit('$none', 'x'))).toBeUndefined();
  });
});

describe('reactions', () => {
  it('count each reaction event once, per key', () => {
    const t = new Timeline(ROOM);
    t.reset({
      items: [
        item('$1', {
          reactions: [{ key: '👍', count: 2, senders: ['@a:x', '@b:x'], byUs: false }],
        }),
      ],
    });
    expect(t.react(reaction('$1', '$r1', '👍', ME), ME)).toBe('$1');
    expect(t.react(reaction('$1', '$r1', '👍', ME), ME)).toBeUndefined(); // replayed
    t.react(reaction('$1', '$r2', '🎉', '@c:x'), ME);
    expect(t.get('$1')?.reactions).toEqual([
      { key: '👍', count: 3, senders: ['@a:x', '@b:x', ME], byUs: true },
      { key: '🎉', count: 1, senders: ['@c:x'], byUs: false },
    ]);
  });

  it('are undone by redacting the reaction', () => {
    const t = new Timeline(ROOM);
    t.reset({ items: [item('$1')] });
    t.react(reaction('$1', '$r1', '👍', ME), ME);
    t.react(reaction('$1', '$r2', '👍', '@c:x'), ME);
    expect(t.redact(redaction('$r1'), ME)).toBe('$1');
    expect(t.get('$1')?.reactions).toEqual([
      { key: '👍', count: 1, senders: ['@c:x'], byUs: false },
    ]);
    t.redact(redaction('$r2'), ME);
    expect(t.get('$1')?.reactions).toEqual([]);
    expect(t.get('$1')?.kind).toBe('message');
  });
});

describe('redactions', () => {
  it('remove everything but who sent it, when, and the trust', () => {
    const t = new Timeline(ROOM);
    t.reset({
      items: [
        item('$1', {
          formattedBody: '<b>x</b>',
          replyTo: '$0',
          attachment: { msgtype: 'm.file', name: 'a.pdf', encrypted: true },
          reactions: [{ key: 'k', count: 1, senders: ['@a:x'], byUs: false }],
          senderDevice: 'DEV',
        }),
      ],
    });
    expect(t.redact(redaction('$1'), ME)).toBe('$1');
    expect(t.get('$1')).toEqual({
      eventId: '$1',
      sender: '@alice:example.org',
      senderDevice: 'DEV',
      ts: 1000,
      kind: 'redacted',
      decrypted: true,
      encrypted: true,
      verification: 'verified',
    });
    expect(t.react(reaction('$1', '$r9', 'k', '@a:x'), ME)).toBeUndefined();
    expect(t.redact(redaction('$unknown'), ME)).toBeUndefined();
  });
});

describe('shieldOf', () => {
  it('gives each state its word', () => {
    expect(shieldOf(item('$1'))).toEqual({ state: 'verified', label: 'verified' });
    expect(shieldOf(item('$1', { verification: 'unverified' }))).toEqual({
      state: 'unverified',
      label: 'unverified',
    });
    expect(
      shieldOf(item('$1', { verification: 'warning', reason: 'unencrypted in an encrypted room' })),
    ).toEqual({ state: 'warning', label: 'warning: unencrypted in an encrypted room' });
    expect(shieldOf(item('$1', { verification: 'unencrypted', encrypted: false }))).toEqual({
      state: 'unencrypted',
      label: 'unencrypted',
    });
    expect(
      shieldOf(
        item('$1', { kind: 'undecryptable', verification: undefined, reason: 'no room key' }),
      ),
    ).toEqual({
      state: 'undecryptable',
      label: 'undecryptable: no room key',
    });
  });

  it('never vouches for an item without a verdict', () => {
    expect(shieldOf(item('$1', { verification: undefined })).state).toBe('unverified');
    expect(shieldOf(item('$1', { verification: undefined, encrypted: false })).state).toBe(
      'unencrypted',
    );
    // undecryptable wins over any verdict
    expect(shieldOf(item('$1', { kind: 'undecryptable' })).state).toBe('undecryptable');
  });
});

describe('identities', () => {
  it('words the states and spots violations', () => {
    expect(identityLabel('verified')).toBe('verified');
    expect(identityLabel('pinned')).toBe('not verified');
    expect(identityLabel('none')).toBe('not verified');
    expect(identityLabel('pin-violation')).toBe('changed');
    expect(identityLabel('verification-violation')).toBe('changed');
    expect(isIdentityViolation('pin-violation')).toBe(true);
    expect(isIdentityViolation('verification-violation')).toBe(true);
    expect(isIdentityViolation('verified')).toBe(false);
  });
});

describe('newerFlow', () => {
  const flow = (phase: VerificationPhase): VerificationFlow => ({
    flowId: 'f',
    userId: '@bob:example.org',
    weStarted: true,
    phase,
    timeRemainingMs: 1000,
  });

  it('never takes a flow back to an earlier phase', () => {
    expect(newerFlow(flow('compare'), flow('ready')).phase).toBe('compare');
    expect(newerFlow(flow('ready'), flow('compare')).phase).toBe('compare');
    expect(newerFlow(flow('done'), flow('confirmed')).phase).toBe('done');
    expect(newerFlow(undefined, flow('requested')).phase).toBe('requested');
  });

  it('keeps a final phase, and lets any flow end', () => {
    expect(newerFlow(flow('cancelled'), flow('done')).phase).toBe('cancelled');
    expect(newerFlow(flow('done'), flow('cancelled')).phase).toBe('done');
    expect(newerFlow(flow('compare'), flow('cancelled')).phase).toBe('cancelled');
    expect(newerFlow(flow('requested'), flow('done')).phase).toBe('done');
  });

  it('takes the newer copy of the same phase (its time left)', () => {
    const later = { ...flow('compare'), timeRemainingMs: 10 };
    expect(newerFlow(flow('compare'), later)).toBe(later);
  });
});
