/** Verification flows: accept a request, compare the emoji, see how it ended. */
import { getJson, postJson } from './api.ts';
import { append, button, byId, clear, el, hostileText } from './dom.ts';
import { newerFlow } from './model.ts';
import { path } from './paths.ts';
import { alertError, can, current, state } from './state.ts';
import type { VerificationFlow, VerificationPhase } from './types.ts';

const FINAL: ReadonlySet<VerificationPhase> = new Set(['done', 'cancelled']);

export async function loadFlows(): Promise<void> {
  if (!can('verification')) return;
  const generation = state.generation;
  try {
    const { verifications } = await getJson<{ verifications: VerificationFlow[] }>(
      '/v1/verifications',
    );
    if (!current(generation)) return;
    const flows = new Map<string, VerificationFlow>();
    for (const f of verifications) flows.set(f.flowId, newerFlow(state.flows.get(f.flowId), f));
    // A flow the list does not have yet (it was made after the list) stays.
    for (const [id, f] of state.flows) if (!flows.has(id)) flows.set(id, f);
    state.flows = flows;
    renderFlows();
  } catch (e) {
    if (current(generation)) alertError(e);
  }
}

/** A flow moved on (stream event, or the answer to one of our steps). */
export function onFlow(flow: VerificationFlow): void {
  state.flows.set(flow.flowId, newerFlow(state.flows.get(flow.flowId), flow));
  renderFlows();
}

function phaseText(flow: VerificationFlow): string {
  switch (flow.phase) {
    case 'requested':
      return flow.weStarted ? 'Waiting for them to accept.' : 'They ask to verify.';
    case 'ready':
      return 'Accepted; starting emoji comparison…';
    case 'started':
      return 'Exchanging keys…';
    case 'compare':
      return 'Compare these emoji with the other screen.';
    case 'confirmed':
      return 'You confirmed; waiting for the other side.';
    case 'done':
      return 'Verified.';
    case 'cancelled':
      return flow.cancelled
        ? `Cancelled by ${flow.cancelled.byUs ? 'us' : 'them'}: `
        : 'Cancelled.';
  }
}

export function renderFlows(): void {
  const list = byId('verifications');
  clear(list);
  const flows = [...state.flows.values()].sort(
    (a, b) => Number(FINAL.has(a.phase)) - Number(FINAL.has(b.phase)),
  );
  if (flows.length === 0) {
    list.appendChild(el('li', { className: 'note', text: 'No verifications.' }));
  }
  for (const flow of flows) list.appendChild(flowNode(flow));
  const incoming = flows.filter((f) => !f.weStarted && f.phase === 'requested').length;
  const badge = byId('verify-badge');
  badge.textContent = incoming > 0 ? ` (${incoming} new)` : '';
}

function flowNode(flow: VerificationFlow): HTMLLIElement {
  const li = el('li', {
    className: 'flow',
    attrs: { 'data-flow-id': flow.flowId, 'data-state': flow.phase },
  });
  const who = el(
    'p',
    { className: 'who' },
    flow.weStarted ? 'Verification we asked of ' : 'Verification asked by ',
    hostileText(flow.userId, 'user-id'),
  );
  if (flow.deviceId !== undefined)
    append(who, ', device ', hostileText(flow.deviceId, 'device-id'));
  if (flow.userId === state.status?.userId) who.append(' (one of our own devices)');
  li.appendChild(who);
  const phase = el('p', { className: 'phase', text: phaseText(flow) });
  if (flow.phase === 'cancelled' && flow.cancelled) {
    // The other side words its own reason and code: text like any other they chose.
    append(
      phase,
      hostileText(flow.cancelled.reason, 'reason'),
      ' (',
      hostileText(flow.cancelled.code, 'code'),
      ').',
    );
  }
  li.appendChild(phase);
  if (!FINAL.has(flow.phase) && flow.timeRemainingMs > 0) {
    li.appendChild(
      el('p', {
        className: 'remaining',
        text: `Times out in about ${Math.ceil(flow.timeRemainingMs / 1000)} s.`,
      }),
    );
  }
  const sas = flow.sas;
  if (flow.phase === 'compare' && sas) {
    if (sas.emoji.length > 0) {
      const row = el('ol', { className: 'sas', attrs: { 'aria-label': 'Emoji to compare' } });
      for (const e of sas.emoji) {
        row.appendChild(
          el(
            'li',
            { className: 'sas-emoji' },
            el('span', { className: 'symbol', attrs: { 'aria-hidden': 'true' }, text: e.symbol }),
            el('span', { className: 'name', text: e.name }),
          ),
        );
      }
      li.appendChild(row);
    } else {
      li.appendChild(
        el('p', { className: 'sas-decimals', text: `Numbers: ${sas.decimals.join(' ')}` }),
      );
    }
  }
  const actions = el('div', { className: 'actions' });
  if (!flow.weStarted && flow.phase === 'requested') {
    actions.appendChild(button('Accept', 'accept', (b) => void step(flow, 'accept', b)));
  }
  if (flow.phase === 'compare' && sas) {
    append(
      actions,
      button('They match', 'match', (b) => void step(flow, 'confirm', b)),
      ' ',
      button("They don't match", 'mismatch', (b) => void step(flow, 'mismatch', b)),
    );
  }
  if (!FINAL.has(flow.phase)) {
    actions.append(' ');
    actions.appendChild(button('Cancel', 'cancel', (b) => void step(flow, 'cancel', b)));
  }
  li.appendChild(actions);
  return li;
}

async function step(
  flow: VerificationFlow,
  what: 'accept' | 'confirm' | 'mismatch' | 'cancel',
  b: HTMLButtonElement,
): Promise<void> {
  const generation = state.generation;
  b.disabled = true;
  try {
    const id = flow.flowId;
    let next: VerificationFlow;
    if (what === 'accept') next = await postJson(path`/v1/verifications/${id}/accept`);
    else if (what === 'confirm') next = await postJson(path`/v1/verifications/${id}/confirm`);
    else {
      next = await postJson(
        path`/v1/verifications/${id}/cancel`,
        what === 'mismatch' ? { mismatch: true } : {},
      );
    }
    if (current(generation)) onFlow(next);
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    b.disabled = false;
  }
}
