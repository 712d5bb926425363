/**
 * One room's timeline as the UI holds it, and how stream events change it. Pure: no DOM, so the
 * rules (what an edit, a reaction or a redaction does) are unit-tested.
 */
import type {
  IdentityState,
  Reaction,
  StreamEvent,
  TimelineItem,
  TimelinePage,
  VerificationFlow,
  VerificationPhase,
} from './types.ts';

export type ShieldState = 'verified' | 'unverified' | 'warning' | 'unencrypted' | 'undecryptable';

/** The trust shield of an item, with its text label (never colour alone). */
export function shieldOf(item: TimelineItem): { state: ShieldState; label: string } {
  if (item.kind === 'undecryptable') {
    return { state: 'undecryptable', label: withReason('undecryptable', item.reason) };
  }
  switch (item.verification) {
    case 'verified':
      return { state: 'verified', label: 'verified' };
    case 'warning':
      return { state: 'warning', label: withReason('warning', item.reason) };
    case 'unencrypted':
      return { state: 'unencrypted', label: 'unencrypted' };
    case 'unverified':
      return { state: 'unverified', label: 'unverified' };
    case undefined:
      // No verdict: plaintext is "unencrypted", anything else is not vouched for.
      if (item.encrypted === false) return { state: 'unencrypted', label: 'unencrypted' };
      return { state: 'unverified', label: 'unverified' };
  }
}

function withReason(word: string, reason: string | undefined): string {
  return reason === undefined || reason === '' ? word : `${word}: ${reason}`;
}

export function isIdentityViolation(state: IdentityState): boolean {
  return state === 'pin-violation' || state === 'verification-violation';
}

/** The contacts screen's words for an identity state. */
export function identityLabel(state: IdentityState): string {
  switch (state) {
    case 'verified':
      return 'verified';
    case 'pin-violation':
    case 'verification-violation':
      return 'changed';
    case 'none':
    case 'pinned':
      return 'not verified';
  }
}

const PHASE_ORDER: readonly VerificationPhase[] = [
  'requested',
  'ready',
  'started',
  'compare',
  'confirmed',
  'done',
  'cancelled',
];

/**
 * The newer of two views of one flow. Phases only move forward (done and cancelled are both
 * final), so a list fetched before a stream event, or a step's answer overtaken by the event
 * that followed it, never takes a flow back (and its emoji off the screen).
 */
export function newerFlow(
  known: VerificationFlow | undefined,
  incoming: VerificationFlow,
): VerificationFlow {
  if (!known) return incoming;
  const rank = (f: VerificationFlow) =>
    f.phase === 'cancelled' ? PHASE_ORDER.length : PHASE_ORDER.indexOf(f.phase);
  const finalKnown = known.phase === 'done' || known.phase === 'cancelled';
  if (finalKnown) return known;
  return rank(incoming) >= rank(known) ? incoming : known;
}

const MAX_REACTION_KEYS = 50;
const MAX_REACTION_SENDERS = 20;

type Edit = Extract<StreamEvent, { type: 'edit' }>;
type ReactionEvent = Extract<StreamEvent, { type: 'reaction' }>;
type Redaction = Extract<StreamEvent, { type: 'redaction' }>;

export class Timeline {
  readonly roomId: string;
  /** The `next` cursor of the oldest page loaded: where "Load older" continues. */
  next: string | undefined;
  /** Event ids, oldest first. */
  #order: string[] = [];
  #items = new Map<string, TimelineItem>();
  /** Reactions seen on the stream, by their own event id, so a redaction can undo them. */
  #reactions = new Map<string, { target: string; key: string; sender: string }>();

  constructor(roomId: string) {
    this.roomId = roomId;
  }

  get size(): number {
    return this.#order.length;
  }

  get(eventId: string): TimelineItem | undefined {
    return this.#items.get(eventId);
  }

  /** The items, oldest first. */
  items(): TimelineItem[] {
    return this.#order.map((id) => this.#items.get(id)).filter((i) => i !== undefined);
  }

  /** The newest page (items newest first, as the API gives them): replaces what was held. */
  reset(page: TimelinePage): void {
    this.#order = [];
    this.#items.clear();
    this.#reactions.clear();
    this.next = page.next;
    for (const item of [...page.items].reverse()) this.#append(item);
  }

  /** An older page: its items go before those held. Returns the ids added, oldest first. */
  older(page: TimelinePage): string[] {
    this.next = page.next;
    const added: string[] = [];
    for (const item of [...page.items].reverse()) {
      if (this.#items.has(item.eventId)) continue;
      this.#items.set(item.eventId, item);
      added.push(item.eventId);
    }
    this.#order = [...added, ...this.#order];
    return added;
  }

  /** A live message: appended, or in place of the one with its id. */
  add(item: TimelineItem): 'added' | 'replaced' {
    if (this.#items.has(item.eventId)) {
      this.#items.set(item.eventId, item);
      return 'replaced';
    }
    this.#append(item);
    return 'added';
  }

  #append(item: TimelineItem): void {
    if (this.#items.has(item.eventId)) return;
    this.#items.set(item.eventId, item);
    this.#order.push(item.eventId);
  }

  /** The new text replaces the old (and its HTML, or the lack of it). Returns the item's id. */
  edit(edit: Edit): string | undefined {
    const item = this.#items.get(edit.target);
    if (!item || item.kind !== 'message') return undefined;
    const next: TimelineItem = {
      ...item,
      body: edit.body,
      edited: true,
      editedAt: edit.ts,
      ...(edit.msgtype === undefined ? {} : { msgtype: edit.msgtype }),
    };
    delete next.formattedBody;
    if (edit.formattedBody !== undefined) next.formattedBody = edit.formattedBody;
    this.#items.set(item.eventId, next);
    return item.eventId;
  }

  /** One more reaction (each reaction event counted once). Returns the target's id. */
  react(event: ReactionEvent, ourUserId: string): string | undefined {
    if (this.#reactions.has(event.eventId)) return undefined;
    const item = this.#items.get(event.target);
    if (!item || item.kind === 'redacted') return undefined;
    const reactions: Reaction[] = (item.reactions ?? []).map((r) => ({
      ...r,
      senders: [...r.senders],
    }));
    const existing = reactions.find((r) => r.key === event.key);
    if (existing) {
      existing.count += 1;
      if (
        !existing.senders.includes(event.sender) &&
        existing.senders.length < MAX_REACTION_SENDERS
      ) {
        existing.senders.push(event.sender);
      }
      existing.byUs ||= event.sender === ourUserId;
    } else {
      if (reactions.length >= MAX_REACTION_KEYS) return undefined;
      reactions.push({
        key: event.key,
        count: 1,
        senders: [event.sender],
        byUs: event.sender === ourUserId,
      });
    }
    this.#reactions.set(event.eventId, {
      target: event.target,
      key: event.key,
      sender: event.sender,
    });
    this.#items.set(item.eventId, { ...item, reactions });
    return item.eventId;
  }

  /**
   * Removes what was shown of the target: a message keeps only who sent it and when; a reaction
   * seen on the stream is taken off its count. Returns the id of the item that changed.
   */
  redact(redaction: Redaction, ourUserId: string): string | undefined {
    const reaction = this.#reactions.get(redaction.target);
    if (reaction) {
      this.#reactions.delete(redaction.target);
      const item = this.#items.get(reaction.target);
      if (!item) return undefined;
      const reactions = (item.reactions ?? [])
        .map((r) => {
          if (r.key !== reaction.key) return r;
          const senders = r.senders.filter((s) => s !== reaction.sender);
          return {
            ...r,
            count: r.count - 1,
            senders,
            byUs: r.byUs && !(reaction.sender === ourUserId),
          };
        })
        .filter((r) => r.count > 0);
      this.#items.set(item.eventId, { ...item, reactions });
      return item.eventId;
    }
    const item = this.#items.get(redaction.target);
    if (!item) return undefined;
    this.#items.set(item.eventId, redactedItem(item));
    return item.eventId;
  }
}

/** What is left of a redacted item: who, when, and how far we trust that. */
export function redactedItem(item: TimelineItem): TimelineItem {
  const kept: TimelineItem = {
    eventId: item.eventId,
    sender: item.sender,
    ts: item.ts,
    kind: 'redacted',
    decrypted: item.decrypted,
  };
  if (item.senderDevice !== undefined) kept.senderDevice = item.senderDevice;
  if (item.encrypted !== undefined) kept.encrypted = item.encrypted;
  if (item.verification !== undefined) kept.verification = item.verification;
  return kept;
}
