import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError, toGatewayError } from '../errors.ts';
import type { RouteDoc } from '../route.ts';
import { global } from './global.ts';

/** fastify's own errors (body parsing, limits), as ours. */
function fromFastify(error: FastifyError): GatewayError | undefined {
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GatewayError(413, 'BODY_TOO_LARGE', 'The request body is too large.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new GatewayError(
        415,
        'UNSUPPORTED_MEDIA_TYPE',
        'Send request bodies as application/json.',
      );
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new GatewayError(
        400,
        'INVALID_REQUEST',
        'The Content-Length does not match the body.',
      );
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new GatewayError(400, 'INVALID_JSON', 'The JSON body is empty.');
    case 'FST_ERR_BAD_URL':
      return new GatewayError(400, 'INVALID_REQUEST', 'The URL is not validly encoded.');
    default:
      break;
  }
  // Any other client error fastify raises (a 4xx it chose) stays a 4xx, with our sentence.
  const status = error.statusCode;
  if (status !== undefined && status >= 400 && status < 500 && !(error instanceof GatewayError)) {
    return new GatewayError(status, 'INVALID_REQUEST', 'The request is malformed.');
  }
  return undefined;
}

export function sendError(reply: FastifyReply, error: GatewayError): FastifyReply {
  return reply
    .code(error.status)
    .headers(error.headers)
    .type('application/json; charset=utf-8')
    .send(JSON.stringify(error.body()));
}

/**
 * Every error leaves as `{ error: { code, message } }`: thrown GatewayErrors and RpcErrors,
 * fastify's parser errors, unknown routes (404) and known routes with the wrong method (405).
 * Nothing is logged here: errors may concern a request whose body or token must not be kept.
 */
export const errorsPlugin = global(async (app: FastifyInstance) => {
  app.setErrorHandler((error: FastifyError, _request, reply) =>
    sendError(reply, fromFastify(error) ?? toGatewayError(error)),
  );
  app.setNotFoundHandler((_request, reply) =>
    sendError(reply, new GatewayError(404, 'NOT_FOUND', 'There is no such route.')),
  );
  return Promise.resolve();
});

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE'] as const;

/** For each route's path, every other method answers 405 with an Allow header. */
export function methodNotAllowed(app: FastifyInstance, routes: readonly RouteDoc[]): void {
  const byUrl = new Map<string, Set<string>>();
  for (const r of routes) {
    const set = byUrl.get(r.url) ?? new Set<string>();
    set.add(r.method);
    byUrl.set(r.url, set);
  }
  for (const [url, allowed] of byUrl) {
    const others = METHODS.filter((m) => !allowed.has(m));
    const allow = [...allowed].join(', ');
    const refuse = async (_request: FastifyRequest, reply: FastifyReply) =>
      sendError(
        reply,
        new GatewayError(405, 'METHOD_NOT_ALLOWED', `This route allows only ${allow}.`, {
          allow,
        }),
      );
    app.route({
      method: others,
      url,
      // Answered before any body is parsed: 405 whatever the body is, never a 415 or 400.
      onRequest: refuse,
      handler: refuse,
    });
  }
}
