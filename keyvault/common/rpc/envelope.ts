import { formatZodIssues } from '../zod-issues.ts';
import { z } from 'zod';
import { errorCodePattern } from './errors.ts';

/** The wire envelope. Version 1; a peer speaking anything else is refused frame by frame. */
const id = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const requestEnvelope = z
  .object({
    v: z.literal(1),
    kind: z.literal('request'),
    id,
    method: z.string().min(1).max(128),
    params: z.unknown(),
  })
  .strict();
export type RequestEnvelope = z.infer<typeof requestEnvelope>;

export const wireError = z
  .object({
    code: z.string().regex(errorCodePattern),
    message: z.string().max(2048),
    retryAfterMs: z.number().int().min(0).max(86_400_000).optional(),
  })
  .strict();

export const responseEnvelope = z.discriminatedUnion('ok', [
  z
    .object({
      v: z.literal(1),
      kind: z.literal('response'),
      id,
      ok: z.literal(true),
      result: z.unknown(),
    })
    .strict(),
  // id is null when the request could not be read far enough to know its id.
  z
    .object({
      v: z.literal(1),
      kind: z.literal('response'),
      id: id.nullable(),
      ok: z.literal(false),
      error: wireError,
    })
    .strict(),
]);
export type ResponseEnvelope = z.infer<typeof responseEnvelope>;

/** Parses a frame as JSON. Returns undefined when it is not JSON at all. */
export function parseJson(payload: Buffer): { value: unknown } | undefined {
  try {
    return { value: JSON.parse(payload.toString('utf8')) as unknown };
  } catch {
    return undefined;
  }
}

export function toBytes(message: unknown): Buffer {
  return Buffer.from(JSON.stringify(message), 'utf8');
}

/** Describes schema violations by path and rule, never by value: values may be secrets. */
export function describeIssues(error: z.ZodError, root: string): string {
  return formatZodIssues(error, root);
}
