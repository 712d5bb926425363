/** The open room: its timeline, the composer, replies, downloads. */
import {
  REACTION_KEYS,
  isOfferedReaction,
  uploadContentType,
  uploadProblem,
  uploadQuery,
} from './actions.ts';
import { call, getJson, postBytes, postJson } from './api.ts';
import {
  append,
  bodyText,
  button,
  byId,
  byIdAs,
  clear,
  el,
  hostileText,
  memberLabel,
  userIdLabel,
} from './dom.ts';
import { ApiError } from './errors.ts';
import { checkRoomIdentities, renderIdentityBanner } from './identity-view.ts';
import { Timeline, shieldOf } from './model.ts';
import { type NameIndex, labelText, safeFileName } from './names.ts';
import { path } from './paths.ts';
import { renderFormatted } from './sanitize.ts';
import { alertError, can, current, namesOf, ourUserId, showAlert, state } from './state.ts';
import { capText, exclusionReason, formatSize, stripReplyFallback } from './text.ts';
import type { Exclusion, SendResult, StreamEvent, TimelineItem, TimelinePage } from './types.ts';

export const PAGE = 50;
/** The contract's limit on a message's body. */
const MAX_BODY_CHARS = 32_768;

/**
 * The composer and what goes with it (reply target, who cannot read): taken out of the page
 * whenever the token may not send or the room is not one we send to, so it is not there at all
 * rather than merely hidden. Held here so it can come back.
 */
interface ComposerUi {
  area: HTMLElement;
  /** Where the area goes back in (its place in the room pane). */
  parent: Node;
  textarea: HTMLTextAreaElement;
  send: HTMLButtonElement;
  replyTarget: HTMLElement;
  excluded: HTMLElement;
  unencrypted: HTMLElement;
  file: HTMLInputElement;
  sendFile: HTMLButtonElement;
  uploadStatus: HTMLElement;
}
let ui: ComposerUi | undefined;

function composerUi(): ComposerUi {
  if (!ui) {
    const area = byId('composer-area');
    const parent = area.parentNode;
    if (!parent) throw new Error('the composer is not in the page');
    ui = {
      area,
      parent,
      textarea: byIdAs('composer', HTMLTextAreaElement),
      send: byIdAs('send', HTMLButtonElement),
      replyTarget: byId('reply-target'),
      excluded: byId('excluded'),
      unencrypted: byId('composer-unencrypted'),
      file: byIdAs('file', HTMLInputElement),
      sendFile: byIdAs('send-file', HTMLButtonElement),
      uploadStatus: byId('upload-status'),
    };
  }
  return ui;
}

/** Puts the composer in the room pane, or takes it out. */
export function showComposer(show: boolean): void {
  const { area, parent, unencrypted } = composerUi();
  const room = state.timeline ? state.rooms.get(state.timeline.roomId) : undefined;
  unencrypted.hidden = room?.encrypted !== false;
  if (show && !area.isConnected) parent.appendChild(area);
  if (!show && area.isConnected) area.remove();
}

/** Empties the composer (on logout). */
export function resetComposer(): void {
  const c = composerUi();
  c.textarea.value = '';
  c.file.value = '';
  c.uploadStatus.textContent = '';
  clear(c.excluded);
  c.excluded.hidden = true;
  clear(c.replyTarget);
  c.replyTarget.hidden = true;
  showComposer(false);
}

/** The rendered items of the open room, by event id. */
const rendered = new Map<string, HTMLLIElement>();
let sending = false;
let uploading = false;

/** Opens a room's timeline (the room pane is shown by rooms-view). */
export async function openTimeline(roomId: string): Promise<void> {
  const timeline = new Timeline(roomId);
  state.timeline = timeline;
  state.replyTo = undefined;
  rendered.clear();
  clear(byId('timeline'));
  byId('timeline-live').textContent = '';
  renderReplyTarget();
  showExcluded([], '');
  if (!uploading) composerUi().uploadStatus.textContent = '';
  byId('load-older').hidden = true;
  renderIdentityBanner();
  if (!can('messages.read')) {
    byId('timeline').appendChild(
      el('li', { className: 'note', text: 'This client may not read messages.' }),
    );
    return;
  }
  await reloadTimeline(roomId);
  void checkRoomIdentities(roomId);
}

/** Fetches the newest page again, replacing what was shown (after a gap, or on request). */
export async function reloadTimeline(roomId: string): Promise<void> {
  const timeline = state.timeline;
  if (timeline?.roomId !== roomId || !can('messages.read')) return;
  const generation = state.generation;
  reloads++;
  try {
    const page = await getJson<TimelinePage>(`${path`/v1/rooms/${roomId}/timeline`}?limit=${PAGE}`);
    if (!current(generation) || state.timeline !== timeline) return;
    timeline.reset(page);
    // What the stream brought while the page was on its way may be missing from it.
    for (const event of heardDuringReload) applyAgain(timeline, event);
    renderAll();
    const list = byId('timeline');
    list.scrollTop = list.scrollHeight;
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    reloads--;
    if (reloads === 0) heardDuringReload.length = 0;
  }
}

type Live = Of<'message'> | Of<'edit'> | Of<'redaction'>;
/** Reloads of the newest page in flight, and the stream events heard meanwhile. */
let reloads = 0;
const heardDuringReload: Live[] = [];

function hear(event: Live): void {
  if (reloads > 0) heardDuringReload.push(event);
}

function applyAgain(timeline: Timeline, event: Live): void {
  if (event.roomId !== timeline.roomId) return;
  if (event.type === 'message') timeline.add(event.item);
  else if (event.type === 'edit') timeline.edit(event);
  else timeline.redact(event, ourUserId());
}

async function loadOlder(): Promise<void> {
  const timeline = state.timeline;
  const from = timeline?.next;
  if (!timeline || from === undefined) return;
  const generation = state.generation;
  const more = byIdAs('load-older', HTMLButtonElement);
  more.disabled = true;
  try {
    const page = await getJson<TimelinePage>(
      `${path`/v1/rooms/${timeline.roomId}/timeline`}?limit=${PAGE}&from=${encodeURIComponent(from)}`,
    );
    if (!current(generation) || state.timeline !== timeline) return;
    const added = timeline.older(page);
    const list = byId('timeline');
    const before = list.scrollHeight;
    const names = namesOf(timeline.roomId);
    const nodes = added.map((id) => itemNode(id, names)).filter((n) => n !== undefined);
    list.prepend(...nodes);
    list.scrollTop += list.scrollHeight - before;
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    more.disabled = false;
    more.hidden = timeline.next === undefined;
  }
}

/** Renders every item again (new names, a new page). */
export function renderAll(): void {
  const timeline = state.timeline;
  const list = byId('timeline');
  rendered.clear();
  clear(list);
  if (!timeline) return;
  const names = namesOf(timeline.roomId);
  for (const item of timeline.items()) {
    const node = itemNode(item.eventId, names);
    if (node) list.appendChild(node);
  }
  if (timeline.size === 0) {
    list.appendChild(el('li', { className: 'note', text: 'No messages yet.' }));
  }
  byId('load-older').hidden = timeline.next === undefined;
}

function itemNode(eventId: string, names: NameIndex): HTMLLIElement | undefined {
  const timeline = state.timeline;
  const item = timeline?.get(eventId);
  if (!timeline || !item) return undefined;
  const node = renderItem(item, timeline, names);
  rendered.set(eventId, node);
  return node;
}

function rerender(eventId: string | undefined): void {
  if (eventId === undefined || !state.timeline) return;
  const old = rendered.get(eventId);
  if (!old) return;
  const node = itemNode(eventId, namesOf(state.timeline.roomId));
  if (node) old.replaceWith(node);
}

function renderItem(item: TimelineItem, timeline: Timeline, names: NameIndex): HTMLLIElement {
  const li = el('li', {
    className: `item kind-${item.kind}`,
    attrs: { 'data-event-id': item.eventId, 'data-kind': item.kind },
  });
  const shield = shieldOf(item);
  const when = new Date(item.ts);
  const meta = el(
    'div',
    { className: 'meta' },
    el('span', { className: 'sender' }, memberLabel(item.sender, names)),
    ' ',
    el('time', {
      attrs: Number.isFinite(when.getTime()) ? { datetime: when.toISOString() } : {},
      text: Number.isFinite(when.getTime()) ? when.toLocaleString() : 'unknown time',
    }),
    ' ',
    el('span', {
      className: `shield shield-${shield.state}`,
      attrs: { 'data-state': shield.state },
      text: shield.label,
    }),
    item.edited === true && el('span', { className: 'edited', text: ' (edited)' }),
  );
  li.appendChild(meta);
  if (item.replyTo !== undefined && item.kind === 'message') {
    li.appendChild(replyQuote(item.replyTo, timeline, names));
  }
  if (item.thread !== undefined)
    li.appendChild(el('div', { className: 'thread', text: 'in a thread' }));
  li.appendChild(renderBody(item, names));
  if (item.attachment && item.kind === 'message') li.appendChild(renderAttachment(item, timeline));
  if (item.reactions && item.reactions.length > 0 && item.kind !== 'redacted') {
    const list = el('ul', { className: 'reactions', attrs: { 'aria-label': 'Reactions' } });
    for (const r of item.reactions) {
      list.appendChild(
        el(
          'li',
          { className: r.byUs ? 'reaction by-us' : 'reaction' },
          hostileText(r.key, 'key'),
          el('span', { className: 'count', text: ` ${r.count}` }),
        ),
      );
    }
    li.appendChild(list);
  }
  if (item.kind === 'message' && can('messages.send') && sendable()) {
    li.appendChild(reactionBar(item, timeline.roomId));
    li.appendChild(
      button('Reply', 'reply', () => {
        setReplyTarget(item.eventId);
      }),
    );
  }
  return li;
}

/** The fixed reactions one may add to an item (one already added by us is pressed). */
function reactionBar(item: TimelineItem, roomId: string): HTMLElement {
  const bar = el('div', {
    className: 'react-bar',
    attrs: { role: 'group', 'aria-label': 'React' },
  });
  for (const { key, name } of REACTION_KEYS) {
    const ours = item.reactions?.some((r) => r.key === key && r.byUs) === true;
    const b = button(
      key,
      'react',
      (self) => {
        void react(roomId, item.eventId, key, self);
      },
      {
        'data-key': key,
        'aria-label': `React with ${name}`,
        title: ours ? `You reacted with ${name}` : `React with ${name}`,
        'aria-pressed': ours ? 'true' : 'false',
      },
    );
    // One reaction per key and person: a second would only count twice.
    b.disabled = ours;
    bar.appendChild(b);
  }
  return bar;
}

async function react(
  roomId: string,
  eventId: string,
  key: string,
  b: HTMLButtonElement,
): Promise<void> {
  if (!isOfferedReaction(key)) return;
  const generation = state.generation;
  b.disabled = true;
  try {
    await postJson<SendResult>(path`/v1/rooms/${roomId}/reactions`, { eventId, key });
    if (!current(generation)) return;
    b.setAttribute('aria-pressed', 'true');
    if (!state.live) {
      setTimeout(() => {
        void reloadTimeline(roomId);
      }, 1500);
    }
  } catch (e) {
    if (!current(generation)) return;
    b.disabled = false;
    alertError(e);
    if (e instanceof ApiError && e.code === 'IDENTITY_CHANGED') {
      await checkRoomIdentities(roomId, true);
    }
  }
}

function renderBody(item: TimelineItem, names: NameIndex): HTMLElement {
  const body = el('div', { className: 'body', attrs: { dir: 'auto' } });
  switch (item.kind) {
    case 'redacted':
      body.classList.add('deleted');
      body.textContent = 'message deleted';
      return body;
    case 'undecryptable':
      body.classList.add('undecryptable');
      body.textContent = `Unable to decrypt this message${item.reason === undefined ? '' : `: ${item.reason}`}`;
      return body;
    case 'unsupported':
      body.classList.add('unsupported');
      append(
        body,
        el('span', { className: 'type' }, '[', hostileText(item.type ?? 'unknown event'), '] '),
      );
      if (item.body !== undefined) appendPlain(body, item.body);
      return body;
    case 'message':
      break;
  }
  if (item.msgtype === 'm.emote') {
    append(body, '* ', memberLabel(item.sender, names), ' ');
  }
  if (item.msgtype === 'm.notice') body.classList.add('notice');
  // An attachment's body is its file name (or caption): shown once, in the attachment block.
  if (item.attachment && (item.body === undefined || item.body === item.attachment.name)) {
    return body;
  }
  if (item.formattedBody !== undefined) {
    const html = renderFormatted(item.formattedBody);
    if (html) {
      body.appendChild(html);
      return body;
    }
  }
  const text = item.body ?? '';
  appendPlain(body, item.replyTo !== undefined ? stripReplyFallback(text) : text);
  return body;
}

function appendPlain(parent: HTMLElement, text: string): void {
  const capped = capText(text);
  parent.appendChild(bodyText(capped.text, 'plain'));
  if (capped.truncated)
    parent.appendChild(el('span', { className: 'truncated', text: ' (truncated)' }));
}

function replyQuote(target: string, timeline: Timeline, names: NameIndex): HTMLElement {
  const quoted = timeline.get(target);
  const box = el('div', { className: 'in-reply-to' }, 'In reply to ');
  if (!quoted) {
    box.append('an earlier message');
    return box;
  }
  append(box, memberLabel(quoted.sender, names), ': ', snippet(quoted));
  return box;
}

/** A short plain-text glimpse of an item (never its HTML). */
function snippet(item: TimelineItem): HTMLElement {
  let text: string;
  if (item.kind === 'redacted') text = 'message deleted';
  else if (item.kind === 'undecryptable') text = 'undecryptable message';
  else if (item.attachment) text = `file ${item.attachment.name}`;
  else {
    const body = item.body ?? '';
    text = item.replyTo !== undefined ? stripReplyFallback(body) : body;
  }
  const cut = capText(text.replace(/\s+/g, ' '), 120);
  return hostileText(cut.truncated ? `${cut.text}…` : cut.text, 'snippet');
}

function renderAttachment(item: TimelineItem, timeline: Timeline): HTMLElement {
  const file = item.attachment;
  const box = el('div', { className: 'attachment' });
  if (!file) return box;
  append(
    box,
    el('span', {
      className: 'file-label',
      text: file.msgtype === 'm.image' ? 'Image: ' : 'File: ',
    }),
    hostileText(file.name, 'file-name'),
    el(
      'span',
      { className: 'file-size' },
      ` (${file.size === undefined ? 'unknown size' : formatSize(file.size)}`,
      file.mimetype !== undefined && ', ',
      file.mimetype !== undefined && hostileText(file.mimetype, 'mimetype'),
      ')',
    ),
    !file.encrypted &&
      el('span', {
        className: 'file-warning',
        text: ' not encrypted: the server could read or change it',
      }),
    ' ',
  );
  if (can('messages.read')) {
    box.appendChild(
      button('Download', 'download', (b) => {
        void download(timeline.roomId, item, b);
      }),
    );
  }
  return box;
}

/**
 * Fetches the attachment with the token, checks it arrived whole, and saves it through a
 * temporary `<a download>` on a blob: URL (typed as opaque bytes, so it is never rendered).
 */
async function download(roomId: string, item: TimelineItem, b: HTMLButtonElement): Promise<void> {
  const file = item.attachment;
  if (!file) return;
  const generation = state.generation;
  b.disabled = true;
  b.textContent = 'Downloading…';
  try {
    const response = await call('GET', path`/v1/rooms/${roomId}/events/${item.eventId}/attachment`);
    const declared = response.headers.get('content-length');
    let bytes: ArrayBuffer;
    try {
      bytes = await response.arrayBuffer();
    } catch {
      throw new ApiError(0, 'DOWNLOAD_FAILED', 'The download broke off; nothing was saved.');
    }
    if (declared !== null && Number(declared) !== bytes.byteLength) {
      throw new ApiError(0, 'DOWNLOAD_FAILED', 'The download ended early; nothing was saved.');
    }
    if (!current(generation)) return;
    const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    const a = el('a', { attrs: { href: url, download: safeFileName(file.name), rel: 'noopener' } });
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => {
      URL.revokeObjectURL(url);
    }, 30_000);
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    b.disabled = false;
    b.textContent = 'Download';
  }
}

/** Whether the open room may be sent to at all (encrypted, and we may send). */
/**
 * Whether the open room takes messages from us: joined. (An unencrypted room is refused by the
 * endpoint, ROOM_NOT_ENCRYPTED; the composer says so rather than vanishing, because a room
 * just joined may not have its encryption state listed yet.)
 */
export function sendable(): boolean {
  const room = state.timeline ? state.rooms.get(state.timeline.roomId) : undefined;
  return room?.membership === 'join';
}

function setReplyTarget(eventId: string): void {
  state.replyTo = eventId;
  renderReplyTarget();
  composerUi().textarea.focus();
}

export function cancelReply(): void {
  state.replyTo = undefined;
  renderReplyTarget();
}

function renderReplyTarget(): void {
  const box = composerUi().replyTarget;
  clear(box);
  const target = state.replyTo;
  const timeline = state.timeline;
  const item = target !== undefined ? timeline?.get(target) : undefined;
  if (!timeline || !item) {
    box.hidden = true;
    state.replyTo = undefined;
    return;
  }
  append(
    box,
    el('span', { className: 'label', text: 'Replying to ' }),
    memberLabel(item.sender, namesOf(timeline.roomId)),
    ': ',
    snippet(item),
    ' ',
    button('Cancel reply', 'cancel', () => {
      cancelReply();
      composerUi().textarea.focus();
    }),
  );
  box.hidden = false;
}

/** `not everyone can read this: @eve:example.org (no cross-signing), ...` */
export function showExcluded(excluded: Exclusion[], lead: string): void {
  const box = composerUi().excluded;
  clear(box);
  if (excluded.length === 0) {
    box.hidden = true;
    return;
  }
  box.appendChild(el('span', { className: 'label', text: `${lead}: ` }));
  excluded.slice(0, 100).forEach((x, i) => {
    if (i > 0) box.append(', ');
    box.appendChild(userIdLabel(x.userId));
    if (x.deviceId !== undefined) append(box, ' device ', hostileText(x.deviceId, 'device-id'));
    box.append(` (${exclusionReason(x.reason)})`);
  });
  box.hidden = false;
}

export async function send(): Promise<void> {
  const timeline = state.timeline;
  const { textarea: composer, send: sendButton } = composerUi();
  const text = composer.value;
  if (!timeline || sending || text.trim() === '') return;
  if (text.length > MAX_BODY_CHARS) {
    showAlert(`TOO_LONG: A message may have at most ${MAX_BODY_CHARS} characters.`);
    return;
  }
  const roomId = timeline.roomId;
  const generation = state.generation;
  const replyTo = state.replyTo;
  sending = true;
  sendButton.disabled = true;
  try {
    const result = await postJson<SendResult>(path`/v1/rooms/${roomId}/messages`, {
      body: text,
      ...(replyTo === undefined ? {} : { replyTo }),
    });
    if (!current(generation)) return;
    if (composer.value === text) composer.value = '';
    if (state.timeline === timeline) {
      cancelReply();
      showExcluded(result.excluded, 'not everyone can read this');
    }
    if (!state.live) {
      setTimeout(() => {
        void reloadTimeline(roomId);
      }, 1500);
    }
  } catch (e) {
    if (!current(generation)) return;
    alertError(e);
    if (e instanceof ApiError && e.code === 'IDENTITY_CHANGED') {
      await checkRoomIdentities(roomId, true);
    }
  } finally {
    sending = false;
    sendButton.disabled = false;
  }
}

/**
 * Uploads the chosen file: its bytes as the body, with its media type (or
 * application/octet-stream). The endpoint encrypts it and queues the message.
 */
export async function sendFile(): Promise<void> {
  const timeline = state.timeline;
  const { file: input, sendFile: sendButton, uploadStatus } = composerUi();
  if (!timeline || uploading) return;
  const file = input.files?.[0];
  if (!file) {
    showAlert('NO_FILE: Choose a file to send first.');
    return;
  }
  const problem = uploadProblem(file);
  if (problem) {
    alertError(problem);
    return;
  }
  const roomId = timeline.roomId;
  const generation = state.generation;
  uploading = true;
  sendButton.disabled = true;
  input.disabled = true;
  sendButton.textContent = 'Uploading…';
  uploadStatus.textContent = `Uploading ${file.name} (${formatSize(file.size)})…`;
  try {
    const result = await postBytes<SendResult>(
      `${path`/v1/rooms/${roomId}/attachments`}${uploadQuery(file.name)}`,
      file,
      uploadContentType(file.type),
    );
    if (!current(generation)) return;
    if (input.files?.[0] === file) input.value = '';
    uploadStatus.textContent = `Sent ${file.name}.`;
    if (state.timeline === timeline) showExcluded(result.excluded, 'not everyone can read this');
    if (!state.live) {
      setTimeout(() => {
        void reloadTimeline(roomId);
      }, 1500);
    }
  } catch (e) {
    if (!current(generation)) return;
    uploadStatus.textContent = `Not sent: ${file.name}.`;
    alertError(e);
    if (e instanceof ApiError && e.code === 'IDENTITY_CHANGED') {
      await checkRoomIdentities(roomId, true);
    }
  } finally {
    uploading = false;
    sendButton.disabled = false;
    input.disabled = false;
    sendButton.textContent = 'Send file';
  }
}

/** Enter sends, Shift+Enter (or composing with an IME) makes a new line. */
export function composerKey(e: KeyboardEvent): void {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey) {
    e.preventDefault();
    void send();
  }
}

export function wireTimeline(): void {
  byId('load-older').addEventListener('click', () => {
    void loadOlder();
  });
  const c = composerUi();
  c.send.addEventListener('click', () => {
    void send();
  });
  c.textarea.addEventListener('keydown', composerKey);
  c.sendFile.addEventListener('click', () => {
    void sendFile();
  });
  showComposer(false);
  byId('refresh').addEventListener('click', () => {
    if (state.timeline) void reloadTimeline(state.timeline.roomId);
  });
}

function announce(item: TimelineItem): void {
  if (!state.timeline) return;
  // As the timeline shows the sender: the user id whenever the name could mislead, and
  // invisibles spelled out (a screen reader would read neither the id nor a badge otherwise).
  const label = namesOf(state.timeline.roomId).label(item.sender);
  byId('timeline-live').textContent = `New message from ${labelText(item.sender, label)}`;
}

// Stream events for the open room.

type Of<T extends StreamEvent['type']> = Extract<StreamEvent, { type: T }>;

/** Whether the event is about the open room (else rooms-view marks the room unread). */
export function isOpen(roomId: string): boolean {
  return state.timeline?.roomId === roomId;
}

export function onMessage(event: Of<'message'>): void {
  const timeline = state.timeline;
  if (timeline?.roomId !== event.roomId) return;
  hear(event);
  const list = byId('timeline');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  if (timeline.add(event.item) === 'replaced') {
    rerender(event.item.eventId);
    return;
  }
  if (timeline.size === 1) clear(list);
  const node = itemNode(event.item.eventId, namesOf(timeline.roomId));
  if (node) list.appendChild(node);
  if (atBottom) list.scrollTop = list.scrollHeight;
  if (event.item.sender !== ourUserId()) announce(event.item);
}

export function onEdit(event: Of<'edit'>): void {
  if (state.timeline?.roomId !== event.roomId) return;
  hear(event);
  rerender(state.timeline.edit(event));
}

export function onReaction(event: Of<'reaction'>): void {
  if (state.timeline?.roomId !== event.roomId) return;
  rerender(state.timeline.react(event, ourUserId()));
}

export function onRedaction(event: Of<'redaction'>): void {
  if (state.timeline?.roomId !== event.roomId) return;
  hear(event);
  const changed = state.timeline.redact(event, ourUserId());
  rerender(changed);
  if (changed !== undefined && changed === state.replyTo) renderReplyTarget();
}

export function onSent(event: Of<'sent'>): void {
  if (state.timeline?.roomId !== event.roomId || event.excluded.length === 0) return;
  showExcluded(event.excluded, 'sent, but not everyone could read it');
}

export function closeTimeline(): void {
  state.timeline = undefined;
  state.replyTo = undefined;
  rendered.clear();
  clear(byId('timeline'));
  byId('timeline-live').textContent = '';
}
