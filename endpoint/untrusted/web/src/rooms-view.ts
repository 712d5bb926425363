/** The rooms list (joined rooms and invitations) and opening a room. */
import { getJson, postJson } from './api.ts';
import { append, button, byId, clear, el, hostileText, memberLabel, userLabel } from './dom.ts';
import { renderIdentityBanner } from './identity-view.ts';
import { roomNeedsId, truncateChars } from './names.ts';
import { path } from './paths.ts';
import { alertError, can, current, namesOf, state } from './state.ts';
import { closeTimeline, openTimeline, renderAll, sendable, showComposer } from './timeline-view.ts';
import type { RoomSummary } from './types.ts';

const TOPIC_SHOWN = 120;

export async function loadRooms(): Promise<void> {
  if (!can('rooms.read')) {
    renderRooms();
    return;
  }
  const generation = state.generation;
  try {
    const { rooms } = await getJson<{ rooms: RoomSummary[] }>('/v1/rooms');
    if (!current(generation)) return;
    state.rooms = new Map(rooms.map((r) => [r.roomId, r]));
    state.names.clear();
    renderRooms();
    const open = state.timeline?.roomId;
    if (open !== undefined) {
      if (state.rooms.get(open)?.membership !== 'join') {
        closeRoom();
      } else {
        renderRoomHead(open);
        renderAll();
        renderIdentityBanner();
      }
    }
  } catch (e) {
    if (current(generation)) alertError(e);
  }
}

let reloadTimer: ReturnType<typeof setTimeout> | undefined;

/** Membership changed: refetch the list soon (several changes, one fetch). */
export function scheduleRoomsReload(): void {
  if (reloadTimer !== undefined) return;
  reloadTimer = setTimeout(() => {
    reloadTimer = undefined;
    void loadRooms();
  }, 500);
}

/** The room's name as shown, and whether its id must go with it. */
function roomTitle(room: RoomSummary): HTMLElement {
  const span = el('span', { className: 'room-name' });
  const name = room.name;
  if (name === undefined || name.trim() === '') {
    span.appendChild(hostileText(room.roomId, 'room-id'));
    return span;
  }
  const others: string[] = [];
  for (const r of state.rooms.values()) {
    if (r.roomId !== room.roomId && r.name !== undefined) others.push(r.name);
  }
  span.appendChild(hostileText(truncateChars(name, 80).text, 'name'));
  if (roomNeedsId(name, others) || Array.from(name).length > 80) {
    append(span, ' (', hostileText(room.roomId, 'room-id'), ')');
  }
  return span;
}

export function renderRooms(): void {
  const list = byId('rooms');
  clear(list);
  const empty = byId('rooms-empty');
  if (!can('rooms.read')) {
    empty.textContent = 'This client may not list rooms.';
    empty.hidden = false;
    return;
  }
  const rooms = [...state.rooms.values()];
  empty.textContent = 'No rooms.';
  empty.hidden = rooms.length > 0;
  for (const room of rooms.filter((r) => r.membership === 'invite'))
    list.appendChild(inviteNode(room));
  for (const room of rooms.filter((r) => r.membership === 'join')) list.appendChild(roomNode(room));
}

function roomNode(room: RoomSummary): HTMLLIElement {
  const open = state.timeline?.roomId === room.roomId;
  const li = el('li', { className: 'room', attrs: { 'data-room-id': room.roomId } });
  const b = button(
    '',
    'open-room',
    () => {
      void openRoom(room.roomId);
    },
    open ? { 'aria-current': 'true' } : {},
  );
  append(b, roomTitle(room));
  if (room.topic !== undefined && room.topic !== '') {
    const cut = truncateChars(room.topic.replace(/\s+/g, ' '), TOPIC_SHOWN);
    append(
      b,
      el('span', { className: 'topic' }, hostileText(cut.truncated ? `${cut.text}…` : cut.text)),
    );
  }
  append(
    b,
    el('span', {
      className: room.encrypted ? 'enc encrypted' : 'enc not-encrypted',
      text: room.encrypted ? 'encrypted' : 'not encrypted',
    }),
    state.unread.has(room.roomId) && el('span', { className: 'unread', text: 'new' }),
  );
  li.appendChild(b);
  return li;
}

function inviteNode(room: RoomSummary): HTMLLIElement {
  const li = el('li', { className: 'invite', attrs: { 'data-room-id': room.roomId } });
  append(li, el('span', { className: 'invite-label', text: 'Invitation: ' }), roomTitle(room));
  if (room.inviter !== undefined) {
    const label = namesOf(room.roomId).label(room.inviter);
    // Who invites us matters: the user id always shows.
    append(
      li,
      el(
        'span',
        { className: 'inviter' },
        ' invited by ',
        userLabel(room.inviter, { ...label, showUserId: true }),
      ),
    );
  }
  append(
    li,
    el('span', {
      className: room.encrypted ? 'enc encrypted' : 'enc not-encrypted',
      text: room.encrypted ? 'encrypted' : 'not encrypted',
    }),
  );
  if (can('rooms.join')) {
    const actions = el('span', { className: 'actions' });
    const act = async (what: 'join' | 'decline', b: HTMLButtonElement): Promise<void> => {
      const generation = state.generation;
      b.disabled = true;
      try {
        await postJson(
          what === 'join'
            ? path`/v1/rooms/${room.roomId}/join`
            : path`/v1/rooms/${room.roomId}/decline`,
        );
        if (current(generation)) await loadRooms();
      } catch (e) {
        if (current(generation)) alertError(e);
      } finally {
        b.disabled = false;
      }
    };
    append(
      actions,
      button('Accept', 'accept', (b) => {
        void act('join', b);
      }),
      ' ',
      button('Decline', 'decline', (b) => {
        void act('decline', b);
      }),
    );
    li.appendChild(actions);
  }
  return li;
}

function renderRoomHead(roomId: string): void {
  const room = state.rooms.get(roomId);
  const title = byId('room-title');
  clear(title);
  if (!room) return;
  title.appendChild(roomTitle(room));
  const id = byId('room-id');
  clear(id);
  id.appendChild(hostileText(room.roomId, 'room-id'));
  const topic = byId('room-topic');
  clear(topic);
  if (room.topic !== undefined && room.topic !== '') {
    const cut = truncateChars(room.topic, 1000);
    topic.appendChild(hostileText(cut.truncated ? `${cut.text}…` : cut.text));
  }
  const enc = byId('room-encryption');
  enc.textContent = room.encrypted
    ? `encrypted; room keys go to ${recipients(room.roomKeyRecipients)}`
    : 'not encrypted: the servers can read messages here';
  enc.className = room.encrypted ? 'enc encrypted' : 'enc not-encrypted';
  showComposer(can('messages.send') && sendable());
  const members = byId('room-members');
  clear(members);
  const names = namesOf(roomId);
  members.append(`${room.members.length} member${room.members.length === 1 ? '' : 's'}: `);
  room.members.slice(0, 50).forEach((m, i) => {
    if (i > 0) members.append(', ');
    members.appendChild(memberLabel(m, names));
  });
  if (room.members.length > 50) members.append(', …');
}

function recipients(rule: string): string {
  switch (rule) {
    case 'verified-only':
      return 'verified devices only';
    case 'cross-signed':
    case 'tofu':
      return 'cross-signed devices';
    case 'attested-only':
      return 'cross-signed devices with a passing attestation';
    default:
      return rule;
  }
}

export async function openRoom(roomId: string): Promise<void> {
  if (!state.rooms.has(roomId)) return;
  state.unread.delete(roomId);
  byId('room').hidden = false;
  byId('room-none').hidden = true;
  await openTimelineFor(roomId);
}

async function openTimelineFor(roomId: string): Promise<void> {
  const promise = openTimeline(roomId);
  renderRoomHead(roomId);
  renderRooms();
  await promise;
}

export function closeRoom(): void {
  closeTimeline();
  showComposer(false);
  byId('room').hidden = true;
  byId('room-none').hidden = false;
  renderRooms();
}

/** A message arrived in a room that is not open. */
export function markUnread(roomId: string): void {
  if (!state.rooms.has(roomId) || state.unread.has(roomId)) return;
  state.unread.add(roomId);
  renderRooms();
}
