import type { FastifyInstance } from 'fastify';
import { GatewayError } from '../errors.ts';
import { global } from './global.ts';

/**
 * The only body type the gateway parses is JSON (UTF-8). An empty body reads as "no body" (the
 * route decides whether that is fine); anything that is not JSON is 400 INVALID_JSON, and any
 * other content type is 415 (fastify's own parsers, text/plain included, are removed). The one
 * exception, the attachment upload, streams its bytes unparsed in its own context
 * (plugins/raw-body.ts).
 */
export const jsonBodyPlugin = global(async (app: FastifyInstance, opts: { bodyLimit: number }) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(
    'application/json',
    { parseAs: 'string', bodyLimit: opts.bodyLimit },
    (request, body, done) => {
      const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(request.headers['content-type'] ?? '');
      if (charset?.[1] !== undefined && charset[1].toLowerCase() !== 'utf-8') {
        done(
          new GatewayError(415, 'UNSUPPORTED_MEDIA_TYPE', 'JSON bodies must be UTF-8.'),
          undefined,
        );
        return;
      }
      const text = typeof body === 'string' ? body : body.toString('utf8');
      if (text.trim() === '') {
        done(null, undefined);
        return;
      }
      try {
        done(null, JSON.parse(text) as unknown);
      } catch {
        done(
          new GatewayError(400, 'INVALID_JSON', 'The request body is not valid JSON.'),
          undefined,
        );
      }
    },
  );
  return Promise.resolve();
});
