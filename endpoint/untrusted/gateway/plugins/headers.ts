import type { FastifyInstance } from 'fastify';
import { global } from './global.ts';

/**
 * Headers on every answer: nothing here may be cached (answers are per token), sniffed as
 * something else, framed, or read cross-origin by a browser (no CORS headers are ever sent).
 */
export const headersPlugin = global(async (app: FastifyInstance) => {
  app.addHook('onRequest', async (_request, reply) => {
    reply.headers({
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
      'referrer-policy': 'no-referrer',
      'cross-origin-resource-policy': 'same-origin',
    });
    return Promise.resolve();
  });
  return Promise.resolve();
});
