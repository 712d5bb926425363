/**
 * The web UI: log in with a token, then rooms, timeline, contacts and verifications, kept live
 * by the event stream. Plain DOM (dom.ts); the only HTML parsing is sanitize.ts.
 */
import { clearToken, getJson, loadToken, onUnauthenticated, saveToken, validToken } from './api.ts';
import { append, byId, byIdAs, clear, el, hostileText } from './dom.ts';
import { ApiError, isRecord } from './errors.ts';
import { onIdentity, resetIdentities } from './identity-view.ts';
import { loadFailed, onSendFailed, renderFailed, resetFailed } from './failed-view.ts';
import { loadContacts, onAttestation, renderContacts, resetContacts } from './contacts-view.ts';
import {
  closeRoom,
  loadRooms,
  markUnread,
  renderRooms,
  scheduleRoomsReload,
} from './rooms-view.ts';
import {
  type Screen,
  alertError,
  can,
  clearAlert,
  current,
  navigation,
  showAlert,
  state,
} from './state.ts';
import { type ConnectionState, type Stream, openStream } from './stream.ts';
import {
  isOpen,
  onEdit,
  onMessage,
  onReaction,
  onRedaction,
  onSent,
  reloadTimeline,
  resetComposer,
  wireTimeline,
} from './timeline-view.ts';
import type { Health, Status, StreamEvent } from './types.ts';
import { loadFlows, onFlow, renderFlows } from './verify-view.ts';

let stream: Stream | undefined;

// Logging in and out.

async function login(): Promise<void> {
  const input = byIdAs('token', HTMLInputElement);
  const token = input.value.trim();
  // A token kept from before (the gateway was unreachable): try it again.
  if (token === '' && loadToken() !== undefined) {
    await start();
    return;
  }
  if (!validToken(token)) {
    showAlert('INVALID_TOKEN: Paste the whole token (printable characters, at most 512).');
    return;
  }
  saveToken(token);
  input.value = '';
  await start();
}

let starting = false;

async function start(): Promise<void> {
  if (starting) return;
  starting = true;
  const generation = state.generation;
  const loginButton = byIdAs('login', HTMLButtonElement);
  loginButton.disabled = true;
  try {
    const status = await getJson<Status>('/v1/status');
    if (!current(generation)) return;
    state.status = status;
    state.caps = new Set(status.client.capabilities);
    clearAlert();
    showApp();
  } catch (e) {
    if (!current(generation)) return;
    // A 401 already logged out (with its message); anything else keeps the token to retry.
    if (!(e instanceof ApiError && e.status === 401)) alertError(e);
  } finally {
    starting = false;
    loginButton.disabled = false;
  }
}

function logout(message?: string): void {
  state.generation++;
  stream?.stop();
  stream = undefined;
  clearToken();
  state.status = undefined;
  state.caps = new Set();
  state.rooms.clear();
  state.names.clear();
  state.unread.clear();
  state.flows.clear();
  state.contacts.clear();
  state.attestations.clear();
  state.changed.clear();
  state.live = false;
  closeRoom();
  resetIdentities();
  resetContacts();
  resetFailed();
  for (const id of ['rooms', 'contacts', 'verifications', 'whoami', 'identity-banner']) {
    clear(byId(id));
  }
  resetComposer();
  byId('verify-badge').textContent = '';
  setConnection('stopped');
  byId('health').hidden = true;
  byId('app-screen').hidden = true;
  byId('logout').hidden = true;
  byId('login-screen').hidden = false;
  if (message === undefined) clearAlert();
  else showAlert(message);
  byId('token').focus();
}

// The header.

function showApp(): void {
  const status = state.status;
  if (!status) return;
  byId('login-screen').hidden = true;
  byId('app-screen').hidden = false;
  byId('logout').hidden = false;
  const who = byId('whoami');
  clear(who);
  append(
    who,
    hostileText(status.userId, 'user-id'),
    el('span', { className: 'device' }, ' device ', hostileText(status.deviceId, 'device-id')),
    el('span', { className: 'client' }, ' as ', hostileText(status.client.name, 'client-name')),
  );
  renderHealth(status.health);
  byId('nav-contacts').hidden = !can('contacts.read');
  byId('nav-verifications').hidden = !can('verification');
  show('rooms');
  void loadRooms();
  void loadFlows();
  void loadFailed();
  stream?.stop();
  if (can('events.stream')) {
    stream = openStream({ onEvent, onState: setConnection, onFatal: streamFatal });
  } else {
    setConnection('unavailable');
  }
}

const CONNECTION_TEXT: Record<ConnectionState | 'unavailable', string> = {
  connecting: 'connecting…',
  connected: 'live',
  reconnecting: 'reconnecting…',
  stopped: 'offline',
  unavailable: 'no live updates (this client may not stream events)',
};

function setConnection(connection: ConnectionState | 'unavailable'): void {
  const node = byId('connection');
  node.dataset.state = connection;
  node.textContent = CONNECTION_TEXT[connection];
  state.live = connection === 'connected';
}

function renderHealth(health: Health): void {
  const node = byId('health');
  const problems: string[] = [];
  if (health.vault !== 'available') problems.push('key vault unavailable');
  if (health.homeserver !== 'reachable') problems.push('homeserver unreachable: sends wait');
  if (health.storage !== 'ok') problems.push(`storage ${health.storage}`);
  if (problems.length === 0) {
    node.hidden = true;
    node.textContent = '';
    return;
  }
  node.textContent = `Endpoint: ${problems.join(', ')}${health.reason === undefined ? '' : ` (${health.reason})`}`;
  node.hidden = false;
}

function streamFatal(error: ApiError): void {
  if (error.status === 401) logout(`${error.code}: ${error.message}`);
  else showAlert(`${error.code}: ${error.message}`);
}

// Screens.

const SCREENS: Screen[] = ['rooms', 'contacts', 'verifications'];

function show(screen: Screen): void {
  state.screen = screen;
  for (const s of SCREENS) {
    byId(`${s}-screen`).hidden = s !== screen;
    const nav = byId(`nav-${s}`);
    if (s === screen) nav.setAttribute('aria-current', 'page');
    else nav.removeAttribute('aria-current');
  }
  if (screen === 'contacts') void loadContacts();
  if (screen === 'verifications') {
    renderFlows();
    void loadFlows();
  }
}
navigation.show = show;

// The stream.

const TYPES = new Set([
  'message',
  'edit',
  'reaction',
  'redaction',
  'room',
  'member',
  'verification',
  'identity',
  'health',
  'attestation',
  'backup',
  'gap',
  'sent',
  'send-failed',
]);

function onEvent(type: string, data: unknown): void {
  if (!TYPES.has(type) || !isRecord(data)) return;
  if (type === 'gap' && data.type === undefined) {
    // This stream dropped events: everything may be stale.
    scheduleRoomsReload();
    if (state.timeline) void reloadTimeline(state.timeline.roomId);
    if (can('verification')) void loadFlows();
    void loadFailed();
    return;
  }
  if (data.type !== type) return;
  const event = data as unknown as StreamEvent;
  switch (event.type) {
    case 'message':
      if (isOpen(event.roomId)) onMessage(event);
      else if (event.item.sender !== state.status?.userId) markUnread(event.roomId);
      break;
    case 'edit':
      onEdit(event);
      break;
    case 'reaction':
      onReaction(event);
      break;
    case 'redaction':
      onRedaction(event);
      break;
    case 'gap':
      if (isOpen(event.roomId)) void reloadTimeline(event.roomId);
      break;
    case 'room':
    case 'member':
      scheduleRoomsReload();
      break;
    case 'verification':
      onFlow(event.flow);
      break;
    case 'identity':
      onIdentity(event.userId, event.identity);
      break;
    case 'health':
      if (state.status) state.status = { ...state.status, health: event.health };
      renderHealth(event.health);
      break;
    case 'attestation':
      onAttestation(event.result);
      break;
    case 'backup':
      // A refusal means the homeserver swapped the key backup: say so, whatever the UI shows.
      if (event.status?.state === 'refused' && event.status.refusal) {
        showAlert(
          `KEY BACKUP STOPPED: ${event.status.refusal.code}: ${event.status.refusal.message}`,
        );
      }
      break;
    case 'sent':
      onSent(event);
      break;
    case 'send-failed': {
      const f = event.failed;
      onSendFailed(f);
      showAlert(
        `SEND_FAILED: ${f.code}: ${f.reason} (${f.kind} "${f.preview.slice(0, 60)}"; see the failed sends)`,
      );
      break;
    }
  }
}

// Wiring.

function wire(): void {
  byId('login').addEventListener('click', () => {
    void login();
  });
  byId('token').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      void login();
    }
  });
  byId('logout').addEventListener('click', () => {
    logout();
  });
  byId('alert-dismiss').addEventListener('click', () => {
    clearAlert();
  });
  for (const s of SCREENS) {
    byId(`nav-${s}`).addEventListener('click', () => {
      show(s);
    });
  }
  wireTimeline();
  onUnauthenticated((error) => {
    if (state.status || loadToken() !== undefined) logout(`${error.code}: ${error.message}`);
    else showAlert(`${error.code}: ${error.message}`);
  });
}

wire();
renderRooms();
renderContacts();
renderFailed();
if (loadToken() !== undefined) void start();
else byId('token').focus();
