import {
  type ExclusionWire,
  type FailedSendWire,
  MAX_EXCLUSIONS_LISTED,
  type TimelineItemWire,
  type VerificationFlowWire,
  deviceId as deviceIdSchema,
} from '../contract.ts';
import type { AttestationView } from '../attestation/service.ts';
import type { EndpointEvent } from '../device.ts';
import type { Exclusion, MessageView } from '../messages/index.ts';
import type { FailedSend } from '../outbox.ts';
import type { HubInput } from './events.ts';
import type { FlowView, IdentityView } from '../verification/index.ts';

/** Longest undecryptable-reason text passed to a UI (the crypto core's messages are short). */
const MAX_REASON = 500;
const MAX_REACTION_KEYS = 50;
const MAX_REACTION_SENDERS = 20;

/** A timeline item as the local API shows it: text and trust, never keys or raw events. */
export function timelineItemWire(view: MessageView): TimelineItemWire {
  return {
    eventId: view.eventId,
    sender: view.sender,
    ...(view.senderDevice === undefined ? {} : { senderDevice: view.senderDevice }),
    ts: view.ts,
    kind: view.kind,
    ...(view.type === undefined ? {} : { type: view.type.slice(0, 255) }),
    decrypted: view.decrypted,
    ...(view.body === undefined ? {} : { body: view.body }),
    ...(view.formattedBody === undefined ? {} : { formattedBody: view.formattedBody }),
    ...(view.msgtype === undefined ? {} : { msgtype: view.msgtype }),
    ...(view.replyTo === undefined ? {} : { replyTo: view.replyTo }),
    ...(view.thread === undefined ? {} : { thread: view.thread }),
    ...(view.edited ? { edited: true } : {}),
    ...(view.editedAt === undefined ? {} : { editedAt: view.editedAt }),
    ...(view.reactions === undefined || view.reactions.length === 0
      ? {}
      : {
          reactions: view.reactions.slice(0, MAX_REACTION_KEYS).map((r) => ({
            key: r.key,
            count: r.count,
            senders: r.senders.slice(0, MAX_REACTION_SENDERS),
            byUs: r.byUs,
          })),
        }),
    ...(view.attachment === undefined ? {} : { attachment: view.attachment }),
    encrypted: view.encrypted,
    ...(view.verification === undefined ? {} : { verification: view.verification }),
    ...(view.reason === undefined ? {} : { reason: view.reason.slice(0, MAX_REASON) }),
  };
}

/** Who a send leaves out, bounded for one answer. */
export function exclusionsWire(excluded: readonly Exclusion[]): ExclusionWire[] {
  return excluded.slice(0, MAX_EXCLUSIONS_LISTED).map((e) => ({
    userId: e.userId,
    ...(e.deviceId === undefined ? {} : { deviceId: e.deviceId }),
    reason: e.reason,
  }));
}

/** A send the outbox gave up on, as UIs see it: never the attachment's key. */
export function failedSendWire(failed: FailedSend): FailedSendWire {
  const { entry } = failed;
  return {
    txnId: entry.txnId,
    roomId: entry.roomId,
    kind: entry.kind,
    preview: (entry.kind === 'attachment' ? (entry.attachment?.name ?? '') : entry.body).slice(
      0,
      200,
    ),
    acceptedAt: entry.acceptedAt,
    failedAt: failed.failedAt,
    code: failed.code.slice(0, 64),
    reason: printable(failed.reason, 300),
  };
}

/** Longest cancellation reason passed on (the other side chooses it). */
const MAX_CANCEL_REASON = 200;

/**
 * Text a peer chose (a cancellation reason, a device id) reaches UIs and terminals: control
 * characters could fake lines on a terminal ("verified: ..."), so they become spaces.
 */
function printable(text: string, max: number): string {
  return (
    text
      // eslint-disable-next-line no-control-regex -- exactly what is being removed
      .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, ' ')
      .slice(0, max)
  );
}

export function flowWire(flow: FlowView): VerificationFlowWire {
  const device = flow.deviceId === undefined ? undefined : deviceIdSchema.safeParse(flow.deviceId);
  return {
    flowId: flow.flowId,
    userId: flow.userId,
    ...(device?.success ? { deviceId: device.data } : {}),
    weStarted: flow.weStarted,
    phase: flow.phase,
    ...(flow.sas === undefined ? {} : { sas: flow.sas }),
    ...(flow.cancelled === undefined
      ? {}
      : {
          cancelled: {
            code: printable(flow.cancelled.code, 64),
            reason: printable(flow.cancelled.reason, MAX_CANCEL_REASON),
            byUs: flow.cancelled.byUs,
          },
        }),
    timeRemainingMs: Math.max(0, Math.floor(flow.timeRemainingMs)),
  };
}

export function identityWire(identity: IdentityView): {
  state: IdentityView['state'];
  masterKey?: string;
  wasVerified: boolean;
} {
  return {
    state: identity.state,
    ...(identity.masterKey === undefined ? {} : { masterKey: identity.masterKey }),
    wasVerified: identity.wasVerified,
  };
}

/** What the event stream carries for one thing the endpoint saw. */
export function streamInput(event: EndpointEvent): HubInput {
  switch (event.type) {
    case 'message':
      return { type: 'message', roomId: event.roomId, item: timelineItemWire(event.view) };
    case 'edit':
      return {
        type: 'edit',
        roomId: event.roomId,
        target: event.edit.target,
        eventId: event.edit.eventId,
        body: event.edit.body,
        ...(event.edit.formattedBody === undefined
          ? {}
          : { formattedBody: event.edit.formattedBody }),
        ...(event.edit.msgtype === undefined ? {} : { msgtype: event.edit.msgtype }),
        ts: event.edit.ts,
      };
    case 'sent':
      return { ...event, excluded: exclusionsWire(event.excluded) };
    case 'verification':
      return { type: 'verification', flow: flowWire(event.flow) };
    case 'identity':
      return { type: 'identity', userId: event.userId, identity: identityWire(event.identity) };
    default:
      return event;
  }
}

/** A peer device's attestation verdict as the contract has it (bounded lists). */
export function attestationWire(view: AttestationView) {
  return {
    userId: view.userId,
    deviceId: view.deviceId,
    state: view.state,
    at: Math.trunc(view.at),
    failures: view.failures.slice(0, 64).map((f) => ({ code: f.code, message: f.message })),
    ...(view.facts ? { facts: { ...view.facts, pcrs: view.facts.pcrs.slice(0, 24) } } : {}),
  };
}
