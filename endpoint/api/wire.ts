import {
  type TimelineItemWire,
  type VerificationFlowWire,
  deviceId as deviceIdSchema,
} from '../contract.ts';
import type { AttestationView } from '../attestation/service.ts';
import { type EndpointEvent, type TimelineItem, isDecrypted } from '../device.ts';
import type { HubInput } from './events.ts';
import type { FlowView, IdentityView } from '../verification/index.ts';

/** Longest undecryptable-reason text passed to a UI (the crypto core's messages are short). */
const MAX_REASON = 500;

/** A timeline item as the local API shows it: text and trust, never keys or raw events. */
export function timelineItemWire(item: TimelineItem): TimelineItemWire {
  if (!isDecrypted(item)) {
    return {
      eventId: item.eventId,
      sender: item.sender,
      ts: item.ts,
      decrypted: false,
      reason: item.reason.slice(0, MAX_REASON),
    };
  }
  const { content } = item;
  const relates = content['m.relates_to'];
  const inReplyTo =
    typeof relates === 'object' && relates !== null && 'm.in_reply_to' in relates
      ? (relates as { 'm.in_reply_to'?: { event_id?: unknown } })['m.in_reply_to']?.event_id
      : undefined;
  return {
    eventId: item.eventId,
    sender: item.sender,
    ...(item.senderDevice === undefined ? {} : { senderDevice: item.senderDevice }),
    ts: item.ts,
    decrypted: true,
    ...(typeof content.body === 'string' ? { body: content.body } : {}),
    ...(typeof content.msgtype === 'string' ? { msgtype: content.msgtype } : {}),
    ...(typeof inReplyTo === 'string' ? { replyTo: inReplyTo } : {}),
    encrypted: item.encrypted,
    verification: item.verification,
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
      return { type: 'message', roomId: event.roomId, item: timelineItemWire(event.item) };
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
