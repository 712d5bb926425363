import { z } from 'zod';
import { MAX_TOKEN_CHARS } from '../../contract.ts';
import { errorBody } from './errors.ts';
import type { RouteDoc } from './route.ts';

/**
 * The OpenAPI 3.1 document, generated from the same route objects (and so the same zod
 * schemas, most of them the endpoint contract's own) that validate requests: it cannot
 * describe a different API from the one served. JSON Schema draft 2020-12, as OpenAPI 3.1 uses.
 */

type Json = Record<string, unknown>;

const REASONS: Readonly<Record<number, string>> = {
  200: 'OK',
  201: 'Created',
  202: 'Accepted: durably queued',
  400: 'INVALID_REQUEST (names the field; also two Authorization headers or two bearer values) or INVALID_JSON',
  401: 'UNAUTHENTICATED: no, malformed, unknown or revoked bearer token',
  403: 'FORBIDDEN_CAPABILITY or FORBIDDEN_ROOM: the policy does not allow it',
  404: 'NOT_FOUND (or NOT_INVITED: there is no invitation to answer)',
  409: 'CONFLICT, IDENTITY_CHANGED, ROOM_NOT_ENCRYPTED, NOT_OWN_MESSAGE or UPLOAD_INCOMPLETE: the request does not apply to the current state',
  411: 'LENGTH_REQUIRED: an upload needs a Content-Length',
  413: 'BODY_TOO_LARGE, MESSAGE_TOO_LARGE (the encrypted event would pass the homeserver limit) or ATTACHMENT_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE: bodies are application/json (UTF-8); CONTENT_TYPE_MISMATCH: an attachment is not the media type it claims',
  429: 'RATE_LIMITED (or TOO_MANY_STREAMS): see Retry-After',
  500: 'INTERNAL',
  502: 'UPSTREAM_FAILED: the homeserver refused or is unreachable; ATTACHMENT_TAMPERED or ATTACHMENT_INVALID: a file that does not match its event',
  503: 'AUDIT_UNAVAILABLE, VAULT_UNAVAILABLE, STORE_UNAVAILABLE, BUSY, DISCONNECTED (or STREAMS_EXHAUSTED): see Retry-After when given',
  504: 'TIMEOUT: the endpoint did not answer in time',
  507: "STORAGE_FULL: the endpoint's disk is full; nothing was queued; it recovers by itself once space is freed (status shows health.storage)",
};

/** What every authenticated route can answer besides success. */
const AUTHENTICATED_ERRORS = [400, 401, 403, 404, 429, 500, 502, 503, 504];
const BODY_ERRORS = [413, 415];
const BINARY_BODY_ERRORS = [411, 413, 415];

/** Raw bytes, as OpenAPI describes a file: any media type, the route says which it takes. */
const BINARY = { type: 'string', format: 'binary' };
const binaryContent = (): Json => ({
  'application/octet-stream': { schema: BINARY },
  '*/*': { schema: BINARY },
});

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Json {
  const out = z.toJSONSchema(schema, {
    target: 'draft-2020-12',
    io,
    unrepresentable: 'throw',
  }) as Json;
  delete out.$schema;
  return out;
}

function parameters(where: 'path' | 'query' | 'header', schema: z.ZodObject | undefined): Json[] {
  if (!schema) return [];
  const json = jsonSchema(schema, 'input');
  const properties = (json.properties ?? {}) as Record<string, Json>;
  const required = new Set((json.required ?? []) as string[]);
  return Object.entries(properties).map(([name, property]) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    ...(typeof property.description === 'string' ? { description: property.description } : {}),
    schema: property,
  }));
}

function errorResponse(status: number): Json {
  const headers: Json = {};
  if (status === 401) {
    headers['WWW-Authenticate'] = {
      description: 'Always `Bearer`.',
      schema: { type: 'string', const: 'Bearer' },
    };
  }
  if (status === 429 || status === 503) {
    headers['Retry-After'] = {
      description: 'Seconds to wait before trying again.',
      schema: { type: 'string', pattern: '^[0-9]+$' },
    };
  }
  return {
    description: REASONS[status] ?? 'Error',
    ...(Object.keys(headers).length > 0 ? { headers } : {}),
    content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
  };
}

function successResponse(route: RouteDoc): Json {
  const headers = Object.fromEntries(
    Object.entries(route.responseHeaders ?? {}).map(([name, h]) => [
      name,
      { description: h.description, required: true, schema: jsonSchema(h.schema, 'output') },
    ]),
  );
  const withHeaders = Object.keys(headers).length > 0 ? { headers } : {};
  switch (route.contentType) {
    case 'text/event-stream':
      return {
        description: 'An event stream (text/event-stream) that stays open.',
        ...withHeaders,
        content: { 'text/event-stream': { schema: { type: 'string' } } },
      };
    case 'application/octet-stream':
      return {
        description: `${REASONS[route.status] ?? 'OK'}: the file's bytes, as the Content-Type header says`,
        ...withHeaders,
        content: binaryContent(),
      };
    case 'application/json':
      return {
        description: REASONS[route.status] ?? 'OK',
        ...withHeaders,
        content: {
          'application/json': {
            schema: route.response ? jsonSchema(route.response, 'output') : {},
          },
        },
      };
  }
}

function requestBody(route: RouteDoc): Json | undefined {
  if (route.binaryBody) {
    return {
      required: true,
      description:
        "The file's bytes, sent as they are; Content-Type is the file's media type and Content-Length is required.",
      content: binaryContent(),
    };
  }
  if (!route.body) return undefined;
  return {
    required: route.bodyOptional !== true,
    content: { 'application/json': { schema: jsonSchema(route.body, 'input') } },
  };
}

function operation(route: RouteDoc): Json {
  const success = successResponse(route);
  const errorCodes = new Set<number>([
    ...(route.auth ? AUTHENTICATED_ERRORS : []),
    ...(route.body ? BODY_ERRORS : []),
    ...(route.binaryBody ? BINARY_BODY_ERRORS : []),
    ...(route.errors ?? []),
  ]);
  const responses: Json = { [String(route.status)]: success };
  for (const status of [...errorCodes].sort((a, b) => a - b)) {
    responses[String(status)] = errorResponse(status);
  }
  const extras: string[] = [];
  if (route.capability) extras.push(`Capability: \`${route.capability}\`.`);
  if (route.rpc) extras.push(`Endpoint RPC: \`${route.rpc}\`.`);
  const body = requestBody(route);
  const params = [
    ...parameters('path', route.params),
    ...parameters('query', route.query),
    ...parameters('header', route.headers),
  ];
  return {
    operationId: route.operationId,
    summary: route.summary,
    description: [route.description, ...extras].filter(Boolean).join('\n\n'),
    ...(route.auth ? {} : { security: [] }),
    ...(params.length > 0 ? { parameters: params } : {}),
    ...(body ? { requestBody: body } : {}),
    responses,
  };
}

export function buildOpenApiDocument(routes: readonly RouteDoc[]): Json {
  const paths: Record<string, Json> = {};
  const schemas: Record<string, Json> = { Error: jsonSchema(errorBody, 'output') };
  for (const route of routes) {
    for (const [name, schema] of Object.entries(route.schemas ?? {})) {
      schemas[name] = jsonSchema(schema, 'output');
    }
    const path = route.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const item = paths[path] ?? {};
    item[route.method.toLowerCase()] = operation(route);
    paths[path] = item;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'matrix-trusted-endpoint gateway',
      version: '1',
      description:
        'The local API that untrusted UIs use: a narrow, typed view of one Matrix device. ' +
        'Every call except this document needs `Authorization: Bearer <token>` (a policy token); ' +
        'the endpoint decides what each token may do. Errors are `{"error":{"code","message"}}`.',
    },
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: `A capability token from the policy (at most ${MAX_TOKEN_CHARS} characters).`,
        },
      },
      schemas,
    },
  };
}
