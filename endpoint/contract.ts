import { z } from 'zod';
import { defineContract, noParams } from '../keyvault/rpc/index.ts';

/**
 * What the endpoint compartment answers on its channel: the operations the gateway (issue 5)
 * will expose to UIs, and nothing that yields a key. Caller identity and capability checks
 * join this contract with the policy issue.
 */
const roomId = z.string().min(1).max(255).regex(/^!/);
const userId = z
  .string()
  .min(3)
  .max(255)
  .regex(/^@[^:]+:.+$/);

const timelineItem = z.object({
  eventId: z.string(),
  sender: z.string(),
  ts: z.number(),
  decrypted: z.boolean(),
  body: z.string().optional(),
  encrypted: z.boolean().optional(),
  verification: z.enum(['verified', 'unverified', 'warning', 'unencrypted']).optional(),
  reason: z.string().optional(),
});
export type TimelineItemWire = z.infer<typeof timelineItem>;

export const endpointContract = defineContract({
  status: {
    params: noParams,
    result: z.object({ userId: z.string(), deviceId: z.string(), pendingSends: z.number().int() }),
  },
  createRoom: {
    params: z
      .object({
        invite: z.array(userId).max(100),
        isDirect: z.boolean().optional(),
        name: z.string().max(255).optional(),
      })
      .strict(),
    result: z.object({ roomId: z.string() }),
  },
  sendText: {
    params: z.object({ roomId, body: z.string().min(1).max(32_768) }).strict(),
    /** Resolves once the message is durably queued: it will be sent exactly once. */
    result: z.object({ txnId: z.string() }),
  },
  timeline: {
    params: z.object({ roomId, limit: z.number().int().min(1).max(500) }).strict(),
    result: z.object({ items: z.array(timelineItem) }),
  },
});
export type EndpointContract = typeof endpointContract;
