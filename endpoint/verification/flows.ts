import {
  DeviceId,
  EventId,
  OtherUserIdentity,
  RoomId,
  type OlmMachine,
  Sas,
  UserId,
  type VerificationRequest,
  VerificationRequestPhase,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import { flowId as flowIdSchema } from '../contract.ts';
import type { CryptoEngine, Logger, OutgoingRequest } from '../crypto/engine.ts';

/**
 * Interactive (SAS) verification, as the local API offers it: a thin layer over the crypto
 * core's VerificationRequest and Sas objects. The core runs the protocol (commitments, MACs,
 * timeouts, signing the other side's keys when done); this file only remembers which flows
 * exist, carries their outgoing messages to the homeserver and describes them as plain data.
 * Nothing here decides whether two devices match: the user does, by comparing the emoji.
 */

export type FlowPhase =
  /** Sent by us, or received: waiting for the other side / for our accept. */
  | 'requested'
  /** Both sides accepted; SAS is about to start. */
  | 'ready'
  /** SAS started; the short authentication string is not known yet. */
  | 'started'
  /** The emoji and decimals can be compared now: confirm or cancel. */
  | 'compare'
  /** We confirmed; waiting for the other side's confirmation. */
  | 'confirmed'
  | 'done'
  | 'cancelled';

export interface FlowView {
  flowId: string;
  userId: string;
  deviceId: string | undefined;
  /** We sent the request (true) or received it (false). */
  weStarted: boolean;
  phase: FlowPhase;
  /** Present from `compare` on: the seven emoji with their English names, and the decimals. */
  sas:
    { emoji: { symbol: string; name: string }[]; decimals: [number, number, number] } | undefined;
  cancelled: { code: string; reason: string; byUs: boolean } | undefined;
  /** Until the core cancels it for inactivity (m.timeout). */
  timeRemainingMs: number;
}

export class VerificationError extends Error {
  readonly code: 'NOT_FOUND' | 'CONFLICT' | 'INVALID_REQUEST';
  constructor(code: VerificationError['code'], message: string) {
    super(message);
    this.code = code;
    this.name = 'VerificationError';
  }
}

/**
 * Bounds on what strangers can make us hold: any Matrix user can send requests. The core
 * already keeps one unanswered request per user (a newer one cancels the older: tested); these
 * bound the rest. Unanswered incoming requests beyond them are cancelled at once; finished
 * flows are forgotten first, and a flow in progress is never evicted.
 */
const MAX_FLOWS = 64;
const MAX_PENDING_INCOMING = 16;
const MAX_PENDING_PER_SENDER = 3;

export class Verifications {
  readonly #engine: CryptoEngine;
  readonly #machine: OlmMachine;
  readonly #log: Logger;
  /**
   * The flows, by id. We keep the core's objects ourselves: the core forgets a flow once it is
   * done or cancelled, and a UI must still be able to see how it ended.
   */
  readonly #flows = new Map<string, VerificationRequest>();
  /** Flows whose request (and SAS) changes we follow; the core keeps one callback list each. */
  readonly #watched = new Set<string>();
  readonly #watchedSas = new Set<string>();
  /** The device each of our to-device requests went to. */
  readonly #asked = new Map<string, string>();
  readonly #listeners = new Set<(flow: FlowView) => void>();
  /** One queue for our steps on all flows, so two API calls cannot interleave in the core. */
  #queue: Promise<unknown> = Promise.resolve();

  /** Sends an encrypted room message (the in-room request); resolves to its event id. */
  readonly #sendToRoom: (roomId: string, content: object) => Promise<string>;

  constructor(
    engine: CryptoEngine,
    log: Logger,
    sendToRoom: (roomId: string, content: object) => Promise<string>,
  ) {
    this.#engine = engine;
    this.#machine = engine.machine;
    this.#log = log;
    this.#sendToRoom = sendToRoom;
  }

  onChange(listener: (flow: FlowView) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Called by the sync loop for each m.key.verification.request the core took in. */
  received(requests: { sender: string; flowId: string }[]): Promise<void> {
    return this.#serial(async () => {
      for (const { sender, flowId } of requests) {
        if (this.#flows.has(flowId)) continue;
        const request = this.#request(sender, flowId);
        if (!request) continue; // the core refused it (stale, from an unknown device...)
        const refusal = !flowIdSchema.safeParse(flowId).success
          ? 'a malformed flow id'
          : this.#pendingIncoming(sender) >= MAX_PENDING_PER_SENDER ||
              this.#pendingIncoming() >= MAX_PENDING_INCOMING ||
              !this.#makeRoom()
            ? 'too many unanswered requests'
            : undefined;
        if (refusal) {
          this.#log.warn(`verification request from ${sender} refused: ${refusal}`);
          const outgoing = request.cancel();
          request.free();
          if (outgoing) await this.#send(outgoing).catch(() => undefined);
          continue;
        }
        this.#flows.set(flowId, request);
        this.#watch(request);
        this.#announce(request);
      }
    });
  }

  /**
   * A verification event that arrived in a room (in the clear, or decrypted by us): Element's
   * "Verify user" asks in a DM. The core takes the event in; a new request from someone else
   * becomes a flow the UI can accept, under the same bounds as to-device requests. Later steps
   * travel as room events too (we send ours in the clear, as matrix-js-sdk does).
   */
  async receivedInRoom(
    roomId: string,
    event: { event_id: string; sender: string; type: string; content: Record<string, unknown> },
  ): Promise<void> {
    await this.#machine.receiveVerificationEvent(JSON.stringify(event), new RoomId(roomId));
    // The core answers room events through its outgoing queue; the sync loop drained that
    // queue before handing us the timeline, so drain it now rather than a long poll later.
    await this.#engine.processOutgoing();
    const isRequest =
      event.type === 'm.room.message' && event.content.msgtype === 'm.key.verification.request';
    if (isRequest && event.sender !== this.#machine.userId.toString()) {
      await this.received([{ sender: event.sender, flowId: event.event_id }]);
    }
  }

  list(): FlowView[] {
    return [...this.#flows.values()].map((r) => this.#view(r));
  }

  get(flowId: string): FlowView {
    return this.#view(this.#known(flowId));
  }

  /** Asks one device of a user (ours or a contact's) to verify with us by SAS. */
  request(userId: string, deviceId: string): Promise<FlowView> {
    return this.#serial(async () => {
      await this.#engine.track([userId]);
      await this.#engine.processOutgoing(); // a /keys/query for a user we did not track yet
      const device = await this.#machine.getDevice(new UserId(userId), new DeviceId(deviceId), 5);
      if (!device) throw new VerificationError('NOT_FOUND', 'no such device for this user');
      if (
        userId === this.#machine.userId.toString() &&
        deviceId === this.#machine.deviceId.toString()
      ) {
        device.free();
        throw new VerificationError('INVALID_REQUEST', 'a device cannot verify itself');
      }
      if (!this.#makeRoom()) {
        device.free();
        throw new VerificationError('CONFLICT', 'too many verifications in progress');
      }
      const [request, outgoing] = device.requestVerification();
      device.free();
      this.#flows.set(request.flowId, request);
      this.#asked.set(request.flowId, deviceId);
      this.#watch(request);
      await this.#engine.send(outgoing);
      return this.#view(request);
    });
  }

  /**
   * Asks a contact with no direct room to verify: their one device (preferring the one device
   * they cross-signed). With several candidates the UI must name one, because the emoji are
   * compared with one screen. (With a direct room, requestInRoom asks all their devices.)
   */
  async requestUser(userId: string): Promise<FlowView> {
    await this.#engine.track([userId]);
    await this.#engine.processOutgoing();
    const devices = (await this.#engine.devices(userId)).filter((d) => d.crossSignedByOwner);
    const all = await this.#engine.devices(userId);
    const candidates = devices.length > 0 ? devices : all;
    const [only] = candidates;
    if (only === undefined) throw new VerificationError('NOT_FOUND', 'this user has no devices');
    if (candidates.length > 1) {
      throw new VerificationError(
        'CONFLICT',
        `this user has ${candidates.length} devices: name the one to verify (see their contact's devices)`,
      );
    }
    return this.request(userId, only.deviceId);
  }

  /**
   * Asks a contact, rather than one device, in our direct room with them, as Element's "Verify
   * user" does: any of their devices may answer. The request is an encrypted m.room.message
   * (so the identity-change block applies); the steps after it are room events in the clear.
   */
  requestInRoom(userId: string, roomId: string): Promise<FlowView> {
    return this.#serial(async () => {
      const identity = await this.#machine.getIdentity(new UserId(userId));
      if (!(identity instanceof OtherUserIdentity)) {
        identity?.free();
        throw new VerificationError('NOT_FOUND', 'this user has no cross-signing identity');
      }
      try {
        if (!this.#makeRoom()) {
          throw new VerificationError('CONFLICT', 'too many verifications in progress');
        }
        const content = JSON.parse(identity.verificationRequestContent()) as object;
        const eventId = await this.#sendToRoom(roomId, content);
        const request = identity.requestVerification(new RoomId(roomId), new EventId(eventId));
        this.#flows.set(request.flowId, request);
        this.#watch(request);
        return this.#view(request);
      } finally {
        identity.free();
      }
    });
  }

  /** Accepts an incoming request; the SAS start that follows from the other side is accepted too. */
  accept(flowId: string): Promise<FlowView> {
    return this.#serial(async () => {
      const request = this.#known(flowId);
      if (request.phase() !== VerificationRequestPhase.Requested || request.weStarted()) {
        throw new VerificationError('CONFLICT', `this verification is ${describe(request).phase}`);
      }
      const outgoing = request.accept();
      if (outgoing) await this.#engine.send(outgoing);
      return this.#view(request);
    });
  }

  /** The user compared the emoji and they match: the core marks the other side verified. */
  confirm(flowId: string): Promise<FlowView> {
    return this.#serial(async () => {
      const request = this.#known(flowId);
      const sas = sasOf(request);
      if (!sas?.canBePresented() || sas.haveWeConfirmed()) {
        throw new VerificationError(
          'CONFLICT',
          `there is nothing to confirm: this verification is ${describe(request).phase}`,
        );
      }
      for (const outgoing of await sas.confirm()) await this.#send(outgoing);
      // Done: the core signs the other side's keys (user-signing or self-signing key).
      await this.#engine.processOutgoing();
      return this.#view(request);
    });
  }

  /** Cancels at any step (m.user): also what a UI does when the emoji differ. */
  cancel(flowId: string, code: 'm.user' | 'm.mismatched_sas' = 'm.user'): Promise<FlowView> {
    return this.#serial(async () => {
      const request = this.#known(flowId);
      const phase = request.phase();
      if (phase === VerificationRequestPhase.Done || phase === VerificationRequestPhase.Cancelled) {
        throw new VerificationError(
          'CONFLICT',
          `this verification is already ${describe(request).phase}`,
        );
      }
      const sas = sasOf(request);
      const outgoing = sas ? sas.cancelWithCode(code) : request.cancel();
      sas?.free();
      if (outgoing) await this.#send(outgoing);
      return this.#view(request);
    });
  }

  /** The core names the other device only once it answers; we know whom we asked. */
  #view(request: VerificationRequest): FlowView {
    const view = describe(request);
    return { ...view, deviceId: view.deviceId ?? this.#asked.get(view.flowId) };
  }

  #known(flowId: string): VerificationRequest {
    const request = this.#flows.get(flowId);
    if (!request) throw new VerificationError('NOT_FOUND', 'no such verification');
    return request;
  }

  #request(userId: string, flowId: string): VerificationRequest | undefined {
    try {
      return this.#machine.getVerificationRequest(new UserId(userId), flowId);
    } catch {
      return undefined; // a malformed user id from a peer
    }
  }

  /** Unanswered requests from others (from one sender, or from anyone). */
  #pendingIncoming(sender?: string): number {
    let n = 0;
    for (const r of this.#flows.values()) {
      if (r.weStarted() || r.phase() !== VerificationRequestPhase.Requested) continue;
      if (sender === undefined || r.otherUserId.toString() === sender) n++;
    }
    return n;
  }

  /** Forgets the oldest finished flow if we are full; false if every flow is still going. */
  #makeRoom(): boolean {
    if (this.#flows.size < MAX_FLOWS) return true;
    const finished = [...this.#flows].find(([, r]) => r.isDone() || r.isCancelled());
    if (!finished) return false;
    const [id, request] = finished;
    this.#flows.delete(id);
    this.#watched.delete(id);
    this.#watchedSas.delete(id);
    this.#asked.delete(id);
    request.free();
    return true;
  }

  /**
   * Follows a flow's changes: announces each step, starts SAS once a request we sent is ready,
   * and accepts the other side's SAS start (the user's accept, or their own request, already
   * said yes to verifying; comparing the emoji is still theirs to do).
   */
  #watch(request: VerificationRequest): void {
    const flowId = request.flowId;
    if (this.#watched.has(flowId)) return;
    this.#watched.add(flowId);
    // The core may call this while it holds its own locks: never make it wait for our queue.
    request.registerChangesCallback(() => {
      void this.#serial(async () => {
        const current = this.#flows.get(flowId);
        if (!current) return;
        if (current.phase() === VerificationRequestPhase.Ready && current.weStarted()) {
          const started = await current.startSas();
          if (started) {
            const [sas, outgoing] = started;
            await this.#send(outgoing);
            this.#watchSas(sas, flowId);
            sas.free(); // the core keeps the callback; this handle is ours to drop
          }
        }
        const sas = sasOf(current);
        if (sas) {
          const outgoing = sas.accept();
          if (outgoing) await this.#send(outgoing);
          this.#watchSas(sas, flowId);
          sas.free();
        }
        this.#announce(current);
        // What the core queued on this change (a key, a MAC, a done) goes now, not after the
        // next long poll: the other side times out after a minute without a step.
        await this.#engine.processOutgoing();
      }).catch((e: unknown) => {
        this.#log.warn(`verification ${flowId}: ${e instanceof Error ? e.message : 'step failed'}`);
      });
      return Promise.resolve();
    });
  }

  #watchSas(sas: Sas, flowId: string): void {
    if (this.#watchedSas.has(flowId)) return;
    this.#watchedSas.add(flowId);
    sas.registerChangesCallback(() => {
      const current = this.#flows.get(flowId);
      if (current) this.#announce(current);
      void this.#engine.processOutgoing().catch(() => undefined); // as in #watch
      return Promise.resolve();
    });
  }

  #announce(request: VerificationRequest): void {
    const view = this.#view(request);
    for (const listener of this.#listeners) {
      try {
        listener(view);
      } catch (e) {
        this.#log.warn(`verification listener failed: ${e instanceof Error ? e.message : 'error'}`);
      }
    }
  }

  async #send(outgoing: OutgoingRequest): Promise<void> {
    await this.#engine.send(outgoing);
  }

  #serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(work, work);
    this.#queue = next.catch(() => undefined);
    return next;
  }
}

function sasOf(request: VerificationRequest): Sas | undefined {
  const flow = request.getVerification();
  if (flow instanceof Sas) return flow;
  flow?.free();
  return undefined;
}

function describe(request: VerificationRequest): FlowView {
  const sas = sasOf(request);
  const cancelInfo = request.cancelInfo ?? sas?.cancelInfo();
  let phase: FlowPhase;
  switch (request.phase()) {
    case VerificationRequestPhase.Created:
    case VerificationRequestPhase.Requested:
      phase = 'requested';
      break;
    case VerificationRequestPhase.Ready:
      phase = 'ready';
      break;
    case VerificationRequestPhase.Transitioned:
      // After our confirmation the core no longer "presents" the SAS: check that first.
      if (sas?.isCancelled()) phase = 'cancelled';
      else if (sas?.isDone()) phase = 'done';
      else if (sas?.haveWeConfirmed()) phase = 'confirmed';
      else if (sas?.canBePresented()) phase = 'compare';
      else phase = 'started';
      break;
    case VerificationRequestPhase.Done:
      phase = 'done';
      break;
    case VerificationRequestPhase.Cancelled:
      phase = 'cancelled';
      break;
  }
  let shown: FlowView['sas'];
  const emoji = phase === 'compare' || phase === 'confirmed' ? sas?.emoji() : undefined;
  const decimals = emoji ? sas?.decimals() : undefined;
  if (emoji) {
    shown = {
      emoji: emoji.map((e) => {
        const item = { symbol: e.symbol, name: e.description };
        e.free();
        return item;
      }),
      decimals: [decimals?.[0] ?? 0, decimals?.[1] ?? 0, decimals?.[2] ?? 0],
    };
  }
  const view: FlowView = {
    flowId: request.flowId,
    userId: request.otherUserId.toString(),
    deviceId: request.otherDeviceId?.toString() ?? sas?.otherDeviceId.toString(),
    weStarted: request.weStarted(),
    phase,
    sas: shown,
    cancelled: cancelInfo
      ? {
          code: cancelInfo.cancelCode(),
          reason: cancelInfo.reason(),
          byUs: cancelInfo.cancelledbyUs(),
        }
      : undefined,
    timeRemainingMs: request.timeRemainingMillis(),
  };
  sas?.free();
  return view;
}
