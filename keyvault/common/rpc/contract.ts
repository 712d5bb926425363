import { z } from 'zod';

/**
 * A contract names each method with the schema of its params and of its result. Both ends use
 * the same contract: the sender encodes with it, the receiver decodes (validates) with it.
 * Schemas must be reversible (plain shapes or z.codec), because the sender encodes.
 */
export interface MethodSpec {
  params: z.ZodType;
  result: z.ZodType;
}
export type Contract = Record<string, MethodSpec>;

export type Params<C extends Contract, M extends keyof C> = z.output<C[M]['params']>;
export type Result<C extends Contract, M extends keyof C> = z.output<C[M]['result']>;

export function defineContract<const C extends Contract>(contract: C): C {
  return contract;
}

/** Binary values travel as base64 strings; code on both ends sees Uint8Array. */
export function bytes(options: { maxBytes: number }) {
  const maxChars = Math.ceil(options.maxBytes / 3) * 4;
  return z.codec(
    z.base64().max(maxChars),
    z
      .custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes')
      .refine((b) => b.length <= options.maxBytes, {
        message: `at most ${options.maxBytes} bytes`,
      }),
    {
      decode: (b64) => new Uint8Array(Buffer.from(b64, 'base64')),
      encode: (buf) => Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('base64'),
    },
  );
}

export const noParams = z.object({}).strict();
