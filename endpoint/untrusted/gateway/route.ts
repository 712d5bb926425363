import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify';
import { z } from 'zod';
import { bearerToken } from './auth.ts';
import { GatewayError, internal } from './errors.ts';
import type { EndpointCalls } from './forward.ts';
import type { Limits } from './limits.ts';
import { parseInput, singleValuedQuery } from './validate.ts';

/** What every route handler may use: the endpoint (through the in-flight bound) and the limits. */
export interface GatewayContext {
  calls: EndpointCalls;
  limits: Limits;
}

/**
 * A route as data: the same object registers the route and describes it in the OpenAPI
 * document, so the two cannot drift. Schemas are zod, mostly picked from the endpoint
 * contract's own params and results.
 */
export interface RouteDoc {
  method: 'GET' | 'POST';
  /** fastify's form: `/v1/rooms/:roomId/timeline`. */
  url: string;
  operationId: string;
  summary: string;
  description?: string;
  /** The capability the endpoint's policy requires (documentation only: it decides). */
  capability: string | null;
  /** The endpoint RPC method this route forwards to. */
  rpc: string | null;
  /** Needs `Authorization: Bearer <token>`. */
  auth: boolean;
  params?: z.ZodObject;
  query?: z.ZodObject;
  /** Request headers that matter, documented as parameters (e.g. Last-Event-ID). */
  headers?: z.ZodObject;
  body?: z.ZodType;
  /** A body-taking route that also accepts no body at all (treated as `{}`). */
  bodyOptional?: boolean;
  /**
   * The body is raw bytes of any media type (an attachment), streamed by the route itself;
   * the JSON parser never sees it (routes/attachments.ts).
   */
  binaryBody?: boolean;
  status: number;
  /** The success body (JSON); absent for the event stream and for binary answers. */
  response?: z.ZodType;
  /** The success answer's media type: JSON, the event stream, or a file's bytes. */
  contentType: 'application/json' | 'text/event-stream' | 'application/octet-stream';
  /** Headers of the success answer worth documenting (a download's Content-Disposition...). */
  responseHeaders?: Readonly<Record<string, { description: string; schema: z.ZodType }>>;
  /** Named schemas the description refers to (the stream's frames), for components.schemas. */
  schemas?: Readonly<Record<string, z.ZodType>>;
  /** Error statuses beyond those every authenticated route can return. */
  errors?: readonly number[];
}

export interface RouteInput<P, Q, B> {
  token: string;
  params: P;
  query: Q;
  body: B;
}

type Obj = z.ZodObject;
const noQuery = z.object({}).strict();

export interface JsonRoute extends RouteDoc {
  contentType: 'application/json';
  response: z.ZodType;
  handle(input: RouteInput<unknown, unknown, unknown>, ctx: GatewayContext): Promise<unknown>;
}

/** Defines a JSON route, with the handler's input typed from its schemas. */
export function jsonRoute<
  R extends z.ZodType,
  P extends Obj = Obj,
  Q extends Obj = Obj,
  B extends z.ZodType = z.ZodUndefined,
>(
  spec: Omit<RouteDoc, 'params' | 'query' | 'body' | 'response' | 'contentType'> & {
    params?: P;
    query?: Q;
    body?: B;
    response: R;
    handle(
      input: RouteInput<z.output<P>, z.output<Q>, z.output<B>>,
      ctx: GatewayContext,
    ): Promise<z.input<R>>;
  },
): JsonRoute {
  return { ...spec, contentType: 'application/json' } as unknown as JsonRoute;
}

/** The token for an authenticated route (already checked by `requireBearer`). */
export function tokenOf(request: FastifyRequest): string {
  const token = bearerToken(request.headers.authorization);
  if (token instanceof GatewayError) throw token;
  return token;
}

/** onRequest hook: 401 before any body is read and without calling the endpoint. */
export async function requireBearer(request: FastifyRequest): Promise<void> {
  tokenOf(request);
  return Promise.resolve();
}

/** Validates a request's params, query and body against the route's schemas. */
export function routeInput(
  route: RouteDoc,
  request: FastifyRequest,
): RouteInput<unknown, unknown, unknown> {
  const token = route.auth ? tokenOf(request) : '';
  const params = route.params ? parseInput(route.params, request.params, 'path') : {};
  const query = parseInput(route.query ?? noQuery, singleValuedQuery(request.query), 'query');
  let body: unknown = undefined;
  if (route.body) {
    const raw = request.body === undefined && route.bodyOptional ? {} : request.body;
    body = parseInput(route.body, raw, 'body');
  }
  return { token, params, query, body };
}

export function registerJsonRoute(
  app: FastifyInstance,
  route: JsonRoute,
  ctx: GatewayContext,
): void {
  const options: RouteOptions = {
    method: route.method,
    url: route.url,
    handler: async (request, reply) => {
      const input = routeInput(route, request);
      const result = await route.handle(input, ctx);
      // The answer goes out through its schema: nothing the schema does not name leaves.
      const out = route.response.safeParse(result);
      if (!out.success) throw internal();
      return reply
        .code(route.status)
        .type('application/json; charset=utf-8')
        .send(JSON.stringify(out.data));
    },
  };
  if (route.auth) options.onRequest = requireBearer;
  app.route(options);
}
