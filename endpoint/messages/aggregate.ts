import type { Classified, EditView, MessageView } from './view.ts';

/** Per item: at most this many reaction keys, and this many senders named per key. */
const MAX_KEYS = 50;
const MAX_SENDERS = 20;

/**
 * Folds a page of classified events (any order) into the items a UI shows: the latest edit
 * by the item's own sender replaces its text (someone else's "edit" is ignored, as the spec
 * says), reactions are counted per key, redacted items lose their content and redacted
 * reactions are not counted. Edits, reactions and redactions are not items themselves.
 *
 * `bundled`: the latest edit the homeserver bundled with an item (unsigned m.relations), for
 * an edit newer than the page. Returns the items in the order given.
 */
export function aggregate(
  events: Classified[],
  options: { self: string; bundled?: ReadonlyMap<string, EditView> } = { self: '' },
): MessageView[] {
  const redacted = new Set<string>();
  const edits = new Map<string, EditView[]>();
  const reactions = new Map<string, { eventId: string; sender: string; key: string }[]>();
  for (const e of events) {
    if (e.role === 'redaction') redacted.add(e.target);
    else if (e.role === 'edit') push(edits, e.edit.target, e.edit);
    else if (e.role === 'reaction') push(reactions, e.target, e);
  }
  for (const [target, edit] of options.bundled ?? []) push(edits, target, edit);
  const items: MessageView[] = [];
  for (const e of events) {
    if (e.role !== 'item') continue;
    const view = { ...e.view };
    if (redacted.has(view.eventId)) {
      items.push({
        eventId: view.eventId,
        sender: view.sender,
        ts: view.ts,
        kind: 'redacted',
        decrypted: false,
        encrypted: view.encrypted,
      });
      continue;
    }
    const latest = latestEdit(view, edits.get(view.eventId) ?? [], redacted);
    if (latest !== undefined) applyEdit(view, latest);
    const counted = countReactions(reactions.get(view.eventId) ?? [], redacted, options.self);
    if (counted.length > 0) view.reactions = counted;
    items.push(view);
  }
  return items;
}

/**
 * The newest edit that may replace the item (ties broken by event id, as the spec says): by
 * the item's own sender, and encrypted if the item was.
 */
export function latestEdit(
  view: Pick<MessageView, 'sender' | 'kind' | 'encrypted'>,
  edits: readonly EditView[],
  redacted: ReadonlySet<string> = new Set(),
): EditView | undefined {
  if (view.kind !== 'message') return undefined;
  let best: EditView | undefined;
  for (const edit of edits) {
    if (!mayReplace(view, edit) || redacted.has(edit.eventId)) continue;
    if (
      best === undefined ||
      edit.ts > best.ts ||
      (edit.ts === best.ts && edit.eventId > best.eventId)
    ) {
      best = edit;
    }
  }
  return best;
}

/** Whether an edit may replace this item at all (its sender, and encryption kept). */
export function mayReplace(
  view: Pick<MessageView, 'sender' | 'encrypted'>,
  edit: Pick<EditView, 'sender' | 'encrypted'>,
): boolean {
  return edit.sender === view.sender && (edit.encrypted || !view.encrypted);
}

const SHIELD_RANK = { verified: 0, unverified: 1, unencrypted: 2, warning: 3 } as const;

/**
 * The item shows the edit's text, and the weaker of the two shields: a verified message edited
 * from an unverified device is no longer shown as verified.
 */
export function applyEdit(view: MessageView, edit: EditView): void {
  view.body = edit.body;
  // The edit's HTML replaces the old, or its absence removes it: never old markup, new text.
  if (edit.formattedBody === undefined) delete view.formattedBody;
  else view.formattedBody = edit.formattedBody;
  if (edit.msgtype !== undefined) view.msgtype = edit.msgtype;
  view.edited = true;
  view.editedAt = edit.ts;
  if (
    edit.verification !== undefined &&
    (view.verification === undefined ||
      SHIELD_RANK[edit.verification] > SHIELD_RANK[view.verification])
  ) {
    view.verification = edit.verification;
  }
}

function countReactions(
  list: readonly { eventId: string; sender: string; key: string }[],
  redacted: ReadonlySet<string>,
  self: string,
): { key: string; count: number; senders: string[]; byUs: boolean }[] {
  const byKey = new Map<string, Set<string>>();
  for (const r of list) {
    if (redacted.has(r.eventId)) continue;
    const senders = byKey.get(r.key) ?? new Set<string>();
    if (!byKey.has(r.key) && byKey.size >= MAX_KEYS) continue;
    senders.add(r.sender); // one reaction per sender and key counts, as clients show it
    byKey.set(r.key, senders);
  }
  return [...byKey].map(([key, senders]) => ({
    key,
    count: senders.size,
    senders: [...senders].slice(0, MAX_SENDERS),
    byUs: senders.has(self),
  }));
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
