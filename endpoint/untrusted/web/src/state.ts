/** What the page holds while logged in, and the alert region. */
import { describeError } from './errors.ts';
import type { Timeline } from './model.ts';
import { NameIndex } from './names.ts';
import type {
  AttestationResult,
  Contact,
  Identity,
  RoomSummary,
  Status,
  VerificationFlow,
} from './types.ts';
import { byId } from './dom.ts';

export type Screen = 'rooms' | 'contacts' | 'verifications';

export const state = {
  /** Bumped on logout: answers to calls made before it are dropped. */
  generation: 0,
  status: undefined as Status | undefined,
  caps: new Set<string>(),
  rooms: new Map<string, RoomSummary>(),
  names: new Map<string, NameIndex>(),
  /** The open room's timeline. */
  timeline: undefined as Timeline | undefined,
  unread: new Set<string>(),
  flows: new Map<string, VerificationFlow>(),
  contacts: new Map<string, Contact>(),
  /** Attestation verdicts by `userId\ndeviceId`. */
  attestations: new Map<string, AttestationResult>(),
  /** Identities that changed and wait for an acknowledgement, by user id. */
  changed: new Map<string, Identity>(),
  /** The event the next message replies to. */
  replyTo: undefined as string | undefined,
  screen: 'rooms' as Screen,
  /** Whether the live stream is open (else the UI refetches after its own actions). */
  live: false,
};

export function can(capability: string): boolean {
  return state.caps.has(capability);
}

export function ourUserId(): string {
  return state.status?.userId ?? '';
}

/** The names of a room's members (an empty index for a room we do not know). */
export function namesOf(roomId: string | undefined): NameIndex {
  if (roomId !== undefined) {
    const cached = state.names.get(roomId);
    if (cached) return cached;
    const room = state.rooms.get(roomId);
    if (room) {
      const index = new NameIndex(room.displayNames, room.members);
      state.names.set(roomId, index);
      return index;
    }
  }
  return new NameIndex(undefined, []);
}

/** Runs `work` only if no logout happened since `generation`. */
export function current(generation: number): boolean {
  return generation === state.generation;
}

export function showAlert(text: string): void {
  byId('alert').textContent = text;
  byId('alert-dismiss').hidden = text === '';
}

export function clearAlert(): void {
  showAlert('');
}

/** Shows an error as `CODE: message`. */
export function alertError(error: unknown): void {
  showAlert(describeError(error));
}

/** Set by main.ts: switches screens (views call it without importing main). */
export const navigation = {
  show: (_screen: Screen): void => undefined,
};
