import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { RouteDoc } from '../route.ts';

export const openApiRoute: RouteDoc = {
  method: 'GET',
  url: '/v1/openapi.json',
  operationId: 'getOpenApi',
  summary: 'This document (no token needed).',
  capability: null,
  rpc: null,
  auth: false,
  status: 200,
  response: z.object({ openapi: z.string() }).loose(),
  contentType: 'application/json',
};

/** Serves the document, rendered once. Needs no token and calls nothing. */
export async function openApiPlugin(
  app: FastifyInstance,
  opts: { document: Record<string, unknown> },
): Promise<void> {
  const text = JSON.stringify(opts.document);
  app.get(openApiRoute.url, async (_request, reply) =>
    reply.type('application/json; charset=utf-8').send(text),
  );
  return Promise.resolve();
}
