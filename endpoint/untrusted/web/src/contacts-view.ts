/** Contacts: identities, devices, verification requests and attestation. */
import { getJson, postJson } from './api.ts';
import { append, button, byId, clear, el, hostileText } from './dom.ts';
import { ApiError } from './errors.ts';
import {
  acknowledge,
  identityEpoch,
  identityListeners,
  identityNewerThan,
} from './identity-view.ts';
import { identityLabel, isIdentityViolation } from './model.ts';
import { mixesScripts } from './names.ts';
import { UNSAFE_ID, path } from './paths.ts';
import { alertError, can, current, navigation, state } from './state.ts';
import { groupKey } from './text.ts';
import type { AttestationResult, Contact, DeviceInfo, VerificationFlow } from './types.ts';
import { onFlow } from './verify-view.ts';

const attestationKey = (userId: string, deviceId: string) => `${userId}\n${deviceId}`;
/** Device rows on screen, by attestationKey, to update one verdict in place. */
const verdictNodes = new Map<string, HTMLElement>();
let loaded = false;

export async function loadContacts(): Promise<void> {
  if (!can('contacts.read')) return;
  const generation = state.generation;
  const since = identityEpoch();
  try {
    const { contacts } = await getJson<{ contacts: Contact[] }>('/v1/contacts');
    if (!current(generation)) return;
    const known = state.contacts;
    state.contacts = new Map(
      contacts.map((c) => {
        // Identity news that arrived while the list was on its way wins over the list.
        const newer = identityNewerThan(c.userId, since) ? known.get(c.userId) : undefined;
        return [c.userId, newer ? { ...c, identity: newer.identity } : c];
      }),
    );
    loaded = true;
    renderContacts();
    if (can('attestation')) await loadVerdicts(contacts, generation);
  } catch (e) {
    if (current(generation)) alertError(e);
  }
}

/** The last verdict of every device, a few calls at a time. */
async function loadVerdicts(contacts: Contact[], generation: number): Promise<void> {
  const queue = contacts.flatMap((c) => c.devices.map((d) => [c.userId, d.deviceId] as const));
  const worker = async (): Promise<void> => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const [userId, deviceId] = next;
      try {
        const { result } = await getJson<{ result?: AttestationResult }>(
          path`/v1/contacts/${userId}/devices/${deviceId}/attestation`,
        );
        if (!current(generation)) return;
        if (result) onAttestation(result);
      } catch (e) {
        if (!current(generation)) return;
        if (e instanceof ApiError && e.code === UNSAFE_ID) continue; // no call was made
        alertError(e);
        return;
      }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

export function renderContacts(): void {
  const list = byId('contacts');
  clear(list);
  verdictNodes.clear();
  if (!loaded) return;
  const contacts = [...state.contacts.values()].sort((a, b) => (a.userId < b.userId ? -1 : 1));
  if (contacts.length === 0) {
    list.appendChild(
      el('li', { className: 'note', text: 'No contacts: you share no rooms with anyone yet.' }),
    );
  }
  for (const contact of contacts) list.appendChild(contactNode(contact));
}

/** Display names a contact uses in the rooms we share (shown beside the user id). */
function namesUsed(userId: string): string[] {
  const names = new Set<string>();
  for (const room of state.rooms.values()) {
    const shown = room.displayNames;
    if (!shown || !Object.hasOwn(shown, userId)) continue;
    const name = shown[userId];
    if (name !== undefined && name !== '') names.add(name);
  }
  return [...names].slice(0, 5);
}

function contactNode(contact: Contact): HTMLLIElement {
  const li = el('li', { className: 'contact', attrs: { 'data-user-id': contact.userId } });
  const head = el('h3', { className: 'contact-id' }, hostileText(contact.userId, 'user-id'));
  const used = namesUsed(contact.userId);
  if (used.length > 0) {
    append(head, el('span', { className: 'aka', text: ' known as ' }));
    used.forEach((name, i) => {
      if (i > 0) head.append(', ');
      head.appendChild(hostileText(Array.from(name).slice(0, 64).join(''), 'display-name'));
      if (mixesScripts(name))
        head.appendChild(el('span', { className: 'flag', text: ' [mixed scripts]' }));
    });
  }
  li.appendChild(head);
  const identity = contact.identity;
  const idLine = el(
    'p',
    {},
    'Identity: ',
    el('span', {
      className: `identity identity-${identity.state}`,
      attrs: { 'data-state': identity.state },
      text: identityLabel(identity.state),
    }),
    identity.wasVerified && identity.state !== 'verified' && ' (was verified)',
  );
  if (identity.masterKey !== undefined) {
    append(
      idLine,
      ' key ',
      el('code', { className: 'key' }, hostileText(groupKey(identity.masterKey))),
    );
  }
  if (isIdentityViolation(identity.state) && can('verification')) {
    idLine.append(' ');
    idLine.appendChild(
      button('Acknowledge new identity', 'ack-identity', (b) => {
        void acknowledge(contact.userId, b);
      }),
    );
  }
  li.appendChild(idLine);
  li.appendChild(
    el('p', {
      className: 'shared',
      text: `${contact.rooms.length} shared room${contact.rooms.length === 1 ? '' : 's'}`,
    }),
  );
  const devices = el('ul', { className: 'devices', attrs: { 'aria-label': 'Devices' } });
  for (const device of contact.devices) devices.appendChild(deviceNode(contact.userId, device));
  if (contact.devices.length === 0)
    devices.appendChild(el('li', { className: 'note', text: 'No devices.' }));
  li.appendChild(devices);
  return li;
}

function deviceNode(userId: string, device: DeviceInfo): HTMLLIElement {
  const li = el(
    'li',
    { className: 'device', attrs: { 'data-device-id': device.deviceId } },
    el('span', { className: 'label', text: 'Device ' }),
    hostileText(device.deviceId, 'device-id'),
    ' ',
    el('span', {
      className: device.verified ? 'dev-state verified' : 'dev-state unverified',
      text: device.verified ? 'verified' : 'not verified',
    }),
    el('span', {
      className: 'cross-signed',
      text: device.crossSignedByOwner
        ? ', cross-signed by its owner'
        : ', not cross-signed by its owner',
    }),
    ' ',
  );
  if (can('verification')) {
    li.appendChild(
      button('Verify', 'verify', (b) => {
        void verify(userId, device.deviceId, b);
      }),
    );
  }
  if (can('attestation')) {
    li.append(' ');
    li.appendChild(
      button('Attest', 'attest', (b) => {
        void attest(userId, device.deviceId, b);
      }),
    );
    const verdict = el('div', { className: 'attestation' });
    const key = attestationKey(userId, device.deviceId);
    verdictNodes.set(key, verdict);
    renderVerdict(verdict, state.attestations.get(key));
    li.appendChild(verdict);
  }
  return li;
}

function renderVerdict(box: HTMLElement, result: AttestationResult | undefined): void {
  clear(box);
  if (!result) {
    box.textContent = 'Attestation: none yet';
    return;
  }
  box.dataset.state = result.state;
  const when = new Date(result.at);
  append(
    box,
    'Attestation: ',
    el('span', { className: `verdict verdict-${result.state}`, text: result.state }),
    Number.isFinite(when.getTime()) ? ` (${when.toLocaleString()})` : '',
  );
  const facts = result.facts;
  if (facts) {
    append(box, '; AK enrolment: ', hostileText(facts.enrolment));
    if (facts.manufacturer !== undefined)
      append(box, ', manufacturer: ', hostileText(facts.manufacturer));
    if (facts.rebooted) box.append(', rebooted since the last check');
  }
  if (result.failures.length > 0) {
    const list = el('ul', { className: 'failures' });
    for (const f of result.failures) {
      list.appendChild(
        el('li', {}, el('code', {}, hostileText(f.code)), ': ', hostileText(f.message)),
      );
    }
    box.appendChild(list);
  }
}

/** A verdict arrived (an `attestation` stream event or our own request's answer). */
export function onAttestation(result: AttestationResult): void {
  const key = attestationKey(result.userId, result.deviceId);
  state.attestations.set(key, result);
  const box = verdictNodes.get(key);
  if (box) renderVerdict(box, result);
}

async function verify(userId: string, deviceId: string, b: HTMLButtonElement): Promise<void> {
  const generation = state.generation;
  b.disabled = true;
  try {
    const flow = await postJson<VerificationFlow>('/v1/verifications', { userId, deviceId });
    if (!current(generation)) return;
    onFlow(flow);
    navigation.show('verifications');
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    b.disabled = false;
  }
}

async function attest(userId: string, deviceId: string, b: HTMLButtonElement): Promise<void> {
  const generation = state.generation;
  b.disabled = true;
  b.textContent = 'Attesting…';
  try {
    const result = await postJson<AttestationResult>(
      path`/v1/contacts/${userId}/devices/${deviceId}/attestation`,
    );
    if (current(generation)) onAttestation(result);
  } catch (e) {
    if (current(generation)) alertError(e);
  } finally {
    b.disabled = false;
    b.textContent = 'Attest';
  }
}

export function resetContacts(): void {
  loaded = false;
  verdictNodes.clear();
}

identityListeners.push(() => {
  if (loaded && state.screen === 'contacts') renderContacts();
});
