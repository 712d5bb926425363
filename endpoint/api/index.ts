/** The local API's endpoint side: authorised, audited handlers and the event stream's hub. */
export { apiHandlers, type ApiDependencies } from './handlers.ts';
export {
  DEFAULT_HUB_LIMITS,
  EventHub,
  type HubInput,
  type HubLimits,
  type PollResult,
  type SubscribeResult,
} from './events.ts';
export {
  attestationWire,
  exclusionsWire,
  failedSendWire,
  flowWire,
  identityWire,
  streamInput,
  timelineItemWire,
} from './wire.ts';
