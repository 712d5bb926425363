/**
 * The identity-change banner: members of the open room whose cross-signing identity changed
 * since we pinned (or verified) it. The endpoint refuses to send to the room (409
 * IDENTITY_CHANGED) until each is acknowledged; the banner names them and offers that.
 */
import { getJson, postJson } from './api.ts';
import { append, button, byId, clear, el, hostileText, userLabel } from './dom.ts';
import { isIdentityViolation } from './model.ts';
import { path } from './paths.ts';
import { alertError, can, current, namesOf, state } from './state.ts';
import { groupKey } from './text.ts';
import type { Contact, Identity } from './types.ts';

/** The send was refused for a changed identity but we could not tell whose. */
let unnamedBlock = false;
/**
 * Counts identity news (stream events, acknowledgements): a contacts list fetched before the
 * latest news about a user says nothing new about them, and must not bring back a banner the
 * user just dealt with.
 */
let epoch = 0;
const newsAt = new Map<string, number>();

export function identityEpoch(): number {
  return epoch;
}

/** Whether we heard about this user's identity after `since` (an identityEpoch()). */
export function identityNewerThan(userId: string, since: number): boolean {
  return (newsAt.get(userId) ?? 0) > since;
}

/** Called when an identity changes (contacts-view re-renders). */
export const identityListeners: ((userId: string) => void)[] = [];

/**
 * Finds the open room's members whose identity changed (from the contacts list) and shows
 * them. `blocked`: a send was just refused for it.
 */
export async function checkRoomIdentities(roomId: string, blocked = false): Promise<void> {
  if (blocked) unnamedBlock = true;
  if (!can('contacts.read')) {
    renderIdentityBanner();
    return;
  }
  const generation = state.generation;
  const since = epoch;
  try {
    const { contacts } = await getJson<{ contacts: Contact[] }>('/v1/contacts');
    if (!current(generation)) return;
    const members = new Set(state.rooms.get(roomId)?.members ?? []);
    for (const contact of contacts) {
      if (identityNewerThan(contact.userId, since)) continue;
      state.contacts.set(contact.userId, contact);
      if (!members.has(contact.userId)) continue;
      noteIdentity(contact.userId, contact.identity);
    }
  } catch (e) {
    if (current(generation)) alertError(e);
  }
  renderIdentityBanner();
}

function noteIdentity(userId: string, identity: Identity): void {
  if (isIdentityViolation(identity.state)) state.changed.set(userId, identity);
  else state.changed.delete(userId);
}

/** An `identity` stream event, or an acknowledgement's answer. */
export function onIdentity(userId: string, identity: Identity): void {
  epoch++;
  newsAt.set(userId, epoch);
  noteIdentity(userId, identity);
  const contact = state.contacts.get(userId);
  if (contact) state.contacts.set(userId, { ...contact, identity });
  renderIdentityBanner();
  for (const listener of identityListeners) listener(userId);
}

/** Acknowledges one user's new identity (pinning the key we showed). */
export async function acknowledge(userId: string, b?: HTMLButtonElement): Promise<void> {
  const generation = state.generation;
  const shown =
    state.changed.get(userId)?.masterKey ?? state.contacts.get(userId)?.identity.masterKey;
  if (b) b.disabled = true;
  try {
    const { identity } = await postJson<{ identity: Identity }>(
      path`/v1/contacts/${userId}/identity/acknowledge`,
      shown !== undefined && /^[A-Za-z0-9+/]{43}$/.test(shown) ? { masterKey: shown } : {},
    );
    if (!current(generation)) return;
    onIdentity(userId, identity);
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    if (b) b.disabled = false;
  }
}

export function renderIdentityBanner(): void {
  const banner = byId('identity-banner');
  clear(banner);
  const roomId = state.timeline?.roomId;
  const room = roomId !== undefined ? state.rooms.get(roomId) : undefined;
  const members = room?.members ?? [];
  const changed = members.filter((m) => state.changed.has(m));
  if (changed.length === 0) {
    if (unnamedBlock && roomId !== undefined) {
      banner.appendChild(
        el('p', {
          text: 'A member of this room changed identity: sending is blocked until it is acknowledged by a client that may see contacts.',
        }),
      );
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    return;
  }
  unnamedBlock = false;
  const names = namesOf(roomId);
  banner.appendChild(
    el('h3', {
      text: 'Identity changed: messages to this room are blocked until you acknowledge',
    }),
  );
  const list = el('ul');
  for (const userId of changed) {
    const identity = state.changed.get(userId);
    if (!identity) continue;
    const label = names.label(userId);
    const li = el(
      'li',
      { attrs: { 'data-user-id': userId } },
      // Whose identity changed must never be in doubt: the user id always shows.
      userLabel(userId, { ...label, showUserId: true }),
      identity.state === 'verification-violation'
        ? ' was verified, and their identity changed.'
        : ' changed their identity.',
    );
    if (identity.masterKey !== undefined) {
      append(
        li,
        ' New key: ',
        el('code', { className: 'key' }, hostileText(groupKey(identity.masterKey))),
      );
    }
    if (can('verification')) {
      li.append(' ');
      li.appendChild(
        button(
          'Acknowledge',
          'acknowledge',
          (b) => {
            void acknowledge(userId, b);
          },
          { 'data-user-id': userId },
        ),
      );
    } else {
      li.append(' (a client with the verification capability must acknowledge it)');
    }
    list.appendChild(li);
  }
  banner.appendChild(list);
  banner.hidden = false;
}

export function resetIdentities(): void {
  unnamedBlock = false;
  newsAt.clear();
}
