import { type IncomingMessage, STATUS_CODES, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError, invalidRequest, toGatewayError } from '../errors.ts';
import type { RouteDoc } from '../route.ts';
import { global } from './global.ts';
import { RESPONSE_HEADERS } from './headers.ts';

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
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new GatewayError(400, 'INVALID_REQUEST', 'A path parameter is too long.');
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
  // The security headers again: fastify's framework errors are answered before any hook runs.
  return reply
    .code(error.status)
    .headers(RESPONSE_HEADERS)
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
  // Instead of fastify's return503OnClosing (its own body shape): requests still arriving on
  // open connections while the gateway stops.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
    return Promise.resolve();
  });
  app.addHook('onRequest', async (_request, reply) => {
    if (!closing) return;
    reply.header('connection', 'close');
    throw new GatewayError(503, 'DISCONNECTED', 'The gateway is shutting down.');
  });
  app.setErrorHandler((error: FastifyError, _request, reply) =>
    sendError(reply, fromFastify(error) ?? toGatewayError(error)),
  );
  app.setNotFoundHandler((_request, reply) =>
    sendError(reply, new GatewayError(404, 'NOT_FOUND', 'There is no such route.')),
  );
  return Promise.resolve();
});

/**
 * fastify's errors from before routing (a URL that is not validly encoded, a path parameter
 * over maxParamLength), as ours: the Fastify option `frameworkErrors`.
 */
export function frameworkErrors(
  error: FastifyError,
  _request: FastifyRequest,
  reply: FastifyReply,
): void {
  void sendError(reply, fromFastify(error) ?? invalidRequest('The request is malformed.'));
}

/** What Node's parser refuses (or times out) before fastify sees a request. */
function fromClientError(error: NodeJS.ErrnoException): GatewayError {
  switch (error.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new GatewayError(408, 'REQUEST_TIMEOUT', 'The request did not arrive in time.');
    case 'HPE_HEADER_OVERFLOW':
      return new GatewayError(431, 'HEADERS_TOO_LARGE', 'The request headers are too large.');
    default:
      return invalidRequest('The request is not valid HTTP.');
  }
}

/** An error answer written straight to the socket, closing the connection: nothing follows it. */
function rawAnswer(error: GatewayError): string {
  const body = JSON.stringify(error.body());
  const headers: Record<string, string> = {
    ...RESPONSE_HEADERS,
    ...error.headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
  };
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}`);
  const reason = STATUS_CODES[error.status] ?? 'Error';
  return `HTTP/1.1 ${error.status} ${reason}\r\n${lines.join('\r\n')}\r\n\r\n${body}`;
}

/**
 * The Fastify option `clientErrorHandler`: malformed HTTP, oversized headers and the header
 * and request cut-offs (Node's checks), answered in the API's shape instead of fastify's.
 * Like Node's default it answers only when nothing of a response went out yet, then closes:
 * after a parse error the rest of the stream cannot be trusted to frame a next request.
 */
export function clientErrorHandler(error: NodeJS.ErrnoException, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) {
    socket.destroy();
    return;
  }
  const pending = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (socket.writable && pending?.headersSent !== true) {
    socket.write(rawAnswer(fromClientError(error)));
  }
  // Flush what was written, then close without waiting for the client's FIN (a client that
  // never closes must not hold the connection); the timer covers one that never reads.
  socket.destroySoon();
  setTimeout(() => socket.destroy(), 1_000).unref();
}

/**
 * Node's answer to an `Expect` other than 100-continue is an empty 417; ours has the body
 * (server event `checkExpectation`).
 */
export function refuseExpectation(_request: IncomingMessage, response: ServerResponse): void {
  const error = new GatewayError(
    417,
    'EXPECTATION_FAILED',
    'Only "Expect: 100-continue" is supported.',
  );
  const body = JSON.stringify(error.body());
  response.shouldKeepAlive = false;
  response.writeHead(error.status, {
    ...RESPONSE_HEADERS,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  response.end(body);
}

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
