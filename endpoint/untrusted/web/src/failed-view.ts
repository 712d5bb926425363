/**
 * Sends the outbox gave up on (the homeserver refused them): listed from `GET
 * /v1/outbox/failed` and `send-failed` stream events, each with Retry and Discard.
 */
import { failedKindWord } from './actions.ts';
import { getJson, postJson } from './api.ts';
import { append, button, byId, clear, el, hostileText } from './dom.ts';
import { ApiError } from './errors.ts';
import { truncateChars } from './names.ts';
import { path } from './paths.ts';
import { alertError, can, current, state } from './state.ts';
import type { FailedSend } from './types.ts';

/** The contract lists at most this many; the page keeps no more either. */
const MAX_SHOWN = 100;
const failed = new Map<string, FailedSend>();
/** While the list is on its way: what the stream added and what we took away meanwhile. */
let loading = 0;
const addedMeanwhile = new Map<string, FailedSend>();
const goneMeanwhile = new Set<string>();

export async function loadFailed(): Promise<void> {
  if (!can('messages.send')) {
    renderFailed();
    return;
  }
  const generation = state.generation;
  loading++;
  try {
    const { failed: list } = await getJson<{ failed: FailedSend[] }>('/v1/outbox/failed');
    if (!current(generation)) return;
    failed.clear();
    for (const f of list.slice(0, MAX_SHOWN)) {
      if (!goneMeanwhile.has(f.txnId)) failed.set(f.txnId, f);
    }
    for (const [txnId, f] of addedMeanwhile) failed.set(txnId, f);
    renderFailed();
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    loading--;
    if (loading === 0) {
      addedMeanwhile.clear();
      goneMeanwhile.clear();
    }
  }
}

/** A `send-failed` stream event. */
export function onSendFailed(f: FailedSend): void {
  if (!can('messages.send')) return;
  if (loading > 0) {
    addedMeanwhile.set(f.txnId, f);
    goneMeanwhile.delete(f.txnId);
  }
  if (!failed.has(f.txnId) && failed.size >= MAX_SHOWN) return;
  failed.set(f.txnId, f);
  renderFailed();
}

function forget(txnId: string): void {
  failed.delete(txnId);
  if (loading > 0) {
    goneMeanwhile.add(txnId);
    addedMeanwhile.delete(txnId);
  }
  renderFailed();
}

export function renderFailed(): void {
  const area = byId('failed-area');
  const list = byId('failed-sends');
  clear(list);
  const items = [...failed.values()].sort((a, b) => a.failedAt - b.failedAt);
  area.hidden = items.length === 0 || !can('messages.send');
  if (area.hidden) return;
  for (const f of items) list.appendChild(failedNode(f));
}

function roomLabel(roomId: string): HTMLElement {
  const span = el('span', { className: 'room-name' });
  const name = state.rooms.get(roomId)?.name;
  if (name !== undefined && name.trim() !== '') {
    const cut = truncateChars(name, 64);
    append(span, hostileText(cut.truncated ? `${cut.text}…` : cut.text), ' ');
  }
  append(span, '(', hostileText(roomId, 'room-id'), ')');
  return span;
}

function failedNode(f: FailedSend): HTMLLIElement {
  const failedAt = new Date(f.failedAt);
  const preview = truncateChars(f.preview.replace(/\s+/g, ' '), 120);
  const li = el(
    'li',
    { className: 'failed', attrs: { 'data-txn-id': f.txnId, 'data-kind': f.kind } },
    el(
      'p',
      { className: 'what' },
      el('span', { className: 'kind', text: `${failedKindWord(f.kind)} ` }),
      '“',
      hostileText(preview.truncated ? `${preview.text}…` : preview.text, 'preview'),
      '” in ',
      roomLabel(f.roomId),
    ),
    el(
      'p',
      { className: 'reason' },
      'Refused by the homeserver: ',
      el('code', {}, hostileText(f.code)),
      ': ',
      hostileText(f.reason),
      Number.isFinite(failedAt.getTime()) ? ` (${failedAt.toLocaleString()})` : '',
    ),
  );
  const actions = el('div', { className: 'actions' });
  const retry = button('Retry', 'retry', () => {
    void act(f.txnId, 'retry', retry, discard);
  });
  const discard = button('Discard', 'discard', () => {
    void act(f.txnId, 'discard', retry, discard);
  });
  append(actions, retry, discard);
  li.appendChild(actions);
  return li;
}

async function act(
  txnId: string,
  what: 'retry' | 'discard',
  ...buttons: HTMLButtonElement[]
): Promise<void> {
  const generation = state.generation;
  for (const b of buttons) b.disabled = true;
  try {
    await postJson(
      what === 'retry'
        ? path`/v1/outbox/failed/${txnId}/retry`
        : path`/v1/outbox/failed/${txnId}/discard`,
    );
    if (!current(generation)) return;
    // Retried: it is queued again (a new refusal brings it back with send-failed).
    forget(txnId);
  } catch (e) {
    if (!current(generation)) return;
    for (const b of buttons) b.disabled = false;
    // Already gone (retried or discarded elsewhere): nothing left to show.
    if (e instanceof ApiError && e.code === 'NOT_FOUND') forget(txnId);
    else alertError(e);
  }
}

export function resetFailed(): void {
  failed.clear();
  addedMeanwhile.clear();
  goneMeanwhile.clear();
  renderFailed();
}
