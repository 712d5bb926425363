import type { FastifyInstance } from 'fastify';
import { global } from './global.ts';

/**
 * For routes whose body is a file (an attachment upload): every content type is accepted and
 * nothing is read or buffered here; the route streams `request.raw` itself, with its own
 * bounds (Content-Length required, at most one chunk held). Register it inside the route's own
 * plugin: it then replaces the JSON parser for that plugin's routes only, and the rest of the
 * API keeps refusing anything but JSON.
 */
export const rawBodyPlugin = global(async (app: FastifyInstance) => {
  app.removeAllContentTypeParsers();
  // '*' also covers a body without any Content-Type (fastify passes it as ''): the route
  // answers that with 400, naming the header.
  app.addContentTypeParser('*', (_request, _payload, done) => {
    done(null, undefined);
  });
  return Promise.resolve();
});
