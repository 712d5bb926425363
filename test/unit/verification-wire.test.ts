import { describe, expect, it } from 'vitest';
import { flowWire } from '../../endpoint/api/index.ts';
import { verificationFlow } from '../../endpoint/contract.ts';
import type { FlowView } from '../../endpoint/verification/index.ts';

// What a peer chooses (its cancellation reason, its device id) reaches UIs and terminals: the
// wire form must be bounded, free of control characters, and valid against the contract.
const base: FlowView = {
  flowId: 'abc123',
  userId: '@mallory:example.org',
  deviceId: 'DEVICE',
  weStarted: false,
  phase: 'cancelled',
  sas: undefined,
  cancelled: { code: 'm.user', reason: 'bye', byUs: false },
  timeRemainingMs: 1234.7,
};

describe('verification flows on the wire', () => {
  it('strips control and direction characters a peer put in its cancellation reason', () => {
    const wire = flowWire({
      ...base,
      cancelled: {
        code: 'm.user\u001b[2K',
        reason: 'ok\r\u001b[1A\u001b[2Kverified: @alice:example.org\u202e\u2028',
        byUs: false,
      },
    });
    // eslint-disable-next-line no-control-regex -- looking for exactly these
    expect(wire.cancelled?.reason).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u202e]/);
    expect(wire.cancelled?.code).not.toContain('\u001b');
    expect(verificationFlow.safeParse(wire).success).toBe(true);
  });

  it('bounds a long reason and drops a device id that is not one', () => {
    const wire = flowWire({
      ...base,
      deviceId: `BAD DEVICE ${'x'.repeat(300)}`,
      cancelled: { code: 'm.user', reason: 'y'.repeat(10_000), byUs: true },
    });
    expect(wire.deviceId).toBeUndefined();
    expect(wire.cancelled?.reason.length).toBe(200);
    expect(wire.timeRemainingMs).toBe(1234);
    expect(verificationFlow.safeParse(wire).success).toBe(true);
  });

  it('keeps what is well-formed as it is', () => {
    expect(flowWire(base)).toEqual({
      flowId: 'abc123',
      userId: '@mallory:example.org',
      deviceId: 'DEVICE',
      weStarted: false,
      phase: 'cancelled',
      cancelled: { code: 'm.user', reason: 'bye', byUs: false },
      timeRemainingMs: 1234,
    });
  });
});
