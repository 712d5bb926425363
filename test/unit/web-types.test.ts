import { describe, expect, it } from 'vitest';
import type {
  StreamEvent as ContractStreamEvent,
  TimelineItemWire,
  VerificationFlowWire,
  endpointContract,
} from '../../endpoint/contract.ts';
import type { z } from 'zod';
import type {
  AttestationResult,
  Contact,
  RoomSummary,
  SendResult,
  Status,
  StreamEvent,
  StreamError,
  StreamGap,
  TimelineItem,
  TimelinePage,
  VerificationFlow,
} from '../../endpoint/untrusted/web/src/types.ts';
import type { streamFrames } from '../../endpoint/untrusted/gateway/routes/events.ts';

// The web UI writes the contract's types out (the contract itself is Node code it cannot
// bundle). These assignments fail to compile (tsc, eslint) when the contract's answers stop
// fitting what the UI expects.

type Result<K extends keyof typeof endpointContract> = z.infer<
  (typeof endpointContract)[K]['result']
>;

const fits = {
  item: (x: TimelineItemWire): TimelineItem => x,
  page: (x: Result<'timeline'>): TimelinePage => x,
  status: (x: Result<'status'>): Status => x,
  rooms: (x: Result<'rooms'>): RoomSummary[] => x.rooms,
  send: (x: Result<'send'>): SendResult => x,
  contact: (x: Result<'contact'>): Contact => x,
  flow: (x: VerificationFlowWire): VerificationFlow => x,
  attestation: (x: Result<'attest'>): AttestationResult => x,
  event: (x: ContractStreamEvent): StreamEvent => x,
  gap: (x: z.infer<typeof streamFrames.StreamGap>): StreamGap => x,
  error: (x: z.infer<typeof streamFrames.StreamError>): StreamError => x,
};

describe('web UI types', () => {
  it('fit the contract (checked by the compiler)', () => {
    expect(Object.keys(fits)).toHaveLength(11);
  });
});
