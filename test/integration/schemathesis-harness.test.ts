import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runSchemathesis, type SchemathesisResult } from '../fixtures/schemathesis.ts';

// The fuzzing harness itself, against a throwaway API with one deliberate bug: GET /items/{id}
// answers 500 when the id is longer than 10 characters. Everything else is correct, and
// documented exactly (OpenAPI 3.1), so even the conformance checks must pass on it. POST
// /files takes a raw binary body, as the gateway's attachment upload does.

const TOKEN = 'harness-test-token';
const json = (schema: object) => ({ content: { 'application/json': { schema } } });
const errorBody = {
  type: 'object',
  properties: { error: { type: 'string' }, message: { type: 'string' } },
};
// The coverage phase also sends requests without the declared token, so 401 is documented.
const documented4xx = {
  '400': { description: 'rejected input', ...json(errorBody) },
  '401': { description: 'no token', ...json(errorBody) },
};
const openapi = {
  openapi: '3.1.0',
  info: { title: 'schemathesis harness test', version: '1' },
  components: {
    securitySchemes: { token: { type: 'apiKey', in: 'header', name: 'X-Test-Token' } },
  },
  security: [{ token: [] }],
  paths: {
    '/echo': {
      post: {
        operationId: 'echo',
        requestBody: {
          required: true,
          ...json({
            type: 'object',
            required: ['name'],
            properties: {
              name: { type: 'string', maxLength: 50 },
              tag: { type: ['string', 'null'] },
            },
            additionalProperties: false,
          }),
        },
        responses: {
          '200': {
            description: 'the name back',
            ...json({
              type: 'object',
              required: ['name'],
              properties: { name: { type: 'string' } },
              additionalProperties: false,
            }),
          },
          ...documented4xx,
          '415': { description: 'not JSON', ...json(errorBody) },
        },
      },
    },
    '/count': {
      get: {
        operationId: 'count',
        parameters: [
          {
            name: 'limit',
            in: 'query',
            required: true,
            schema: { type: 'integer', minimum: 1, maximum: 100 },
            example: 5,
          },
        ],
        responses: {
          '200': {
            description: 'the limit back',
            ...json({
              type: 'object',
              required: ['limit'],
              properties: { limit: { type: 'integer' } },
            }),
          },
          ...documented4xx,
        },
      },
    },
    '/files': {
      post: {
        operationId: 'putFile',
        requestBody: {
          required: true,
          content: {
            'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
          },
        },
        responses: {
          '200': {
            description: 'the size back',
            ...json({
              type: 'object',
              required: ['size'],
              properties: { size: { type: 'integer', minimum: 0 } },
              additionalProperties: false,
            }),
          },
          ...documented4xx,
          '415': { description: 'not binary', ...json(errorBody) },
        },
      },
    },
    '/items/{id}': {
      get: {
        operationId: 'getItem',
        parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }],
        responses: {
          '200': {
            description: 'the item',
            ...json({ type: 'object', required: ['id'], properties: { id: { type: 'string' } } }),
          },
          '401': documented4xx['401'],
        },
      },
    },
  },
};

async function startApi(): Promise<{ app: FastifyInstance; baseUrl: string }> {
  const app = Fastify({ logger: false });
  app.addHook('onRequest', async (request, reply) => {
    if (request.url !== '/openapi.json' && request.headers['x-test-token'] !== TOKEN) {
      await reply.code(401).send({ error: 'no token' });
    }
  });
  app.get('/openapi.json', () => openapi);
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_r, body, done) => {
    done(null, body);
  });
  app.post('/files', async (request, reply) => {
    if (!Buffer.isBuffer(request.body)) return reply.code(400).send({ error: 'no body' });
    return { size: request.body.length };
  });
  app.post(
    '/echo',
    {
      schema: {
        body: openapi.paths['/echo'].post.requestBody.content['application/json'].schema,
      },
    },
    (request) => ({ name: (request.body as { name: string }).name }),
  );
  app.get(
    '/count',
    {
      schema: {
        querystring: {
          type: 'object',
          required: ['limit'],
          properties: { limit: { type: 'integer', minimum: 1, maximum: 100 } },
        },
      },
    },
    (request) => ({ limit: (request.query as { limit: number }).limit }),
  );
  app.get('/items/:id', async (request, reply) => {
    const { id } = request.params as { id: string };
    if (id.length > 10) return reply.code(500).send({ error: 'deliberate bug' });
    return { id };
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (!address || typeof address === 'string') throw new Error('no TCP address');
  return { app, baseUrl: `http://127.0.0.1:${address.port}` };
}

describe('schemathesis harness', () => {
  let app: FastifyInstance;
  let baseUrl: string;
  let result: SchemathesisResult;

  beforeAll(async () => {
    ({ app, baseUrl } = await startApi());
    result = await runSchemathesis({
      schema: `${baseUrl}/openapi.json`,
      baseUrl,
      headers: { 'X-Test-Token': TOKEN },
      maxExamples: 200,
      conformance: true,
      seed: 20261123,
      requestTimeoutMs: 5000,
      timeoutMs: 90_000,
    });
  }, 120_000);

  afterAll(async () => {
    await app.close();
  });

  it('counts the cases it ran, as its own summary does', () => {
    expect(result.cases).toBeGreaterThan(0);
    expect(result.cases).toBe(result.reportedCases);
    expect(Object.keys(result.operations).sort()).toEqual([
      'GET /count',
      'GET /items/{id}',
      'POST /echo',
      'POST /files',
    ]);
    for (const [label, op] of Object.entries(result.operations)) {
      expect(op.cases, label).toBeGreaterThan(0);
      expect(op.byPhase.fuzzing, label).toBeGreaterThan(0);
      expect(op.byPhase.coverage, label).toBeGreaterThan(0);
    }
    expect(result.operations['POST /echo']?.byPhase.fuzzing).toBe(200);
    // The binary route got binary bodies (and JSON ones went to JSON).
    expect(
      result.operations['POST /files']?.requestTypes['application/octet-stream'],
    ).toBeGreaterThan(0);
    expect(result.operations['POST /echo']?.requestTypes['application/json']).toBeGreaterThan(0);
    // The parameter's example is tried in the examples phase.
    expect(result.operations['GET /count']?.byPhase.examples).toBeGreaterThan(0);
    // The token went along: every route answered 200 to some cases.
    for (const [label, op] of Object.entries(result.operations)) {
      expect(op.statusCodes['200'], label).toBeGreaterThan(0);
    }
  });

  it('reports the buggy route with a server error and a reproduction', () => {
    expect(result.exitCode).toBe(1);
    expect(result.passed).toBe(false);
    const serverErrors = result.failures.filter((f) => f.check === 'not_a_server_error');
    expect(serverErrors.length).toBe(1);
    const [bug] = serverErrors;
    expect(bug?.operation).toBe('GET /items/{id}');
    expect(bug?.statusCode).toBe(500);
    expect(bug?.code).toBe('ST101');
    expect(bug?.cases).toBe(result.operations['GET /items/{id}']?.statusCodes['500']);
    expect(bug?.reproduction).toMatch(/^curl -X GET 'http:\/\/127\.0\.0\.1:\d+\/items\//);
    expect(bug?.reproduction).not.toContain(TOKEN);
    // And the reproduction does reproduce it.
    const url = /'(http[^']+)'/.exec(bug?.reproduction ?? '')?.[1] ?? '';
    expect(
      decodeURIComponent(new URL(url).pathname.slice('/items/'.length)).length,
    ).toBeGreaterThan(10);
  });

  it('finds nothing wrong with the correct routes', () => {
    const elsewhere = result.failures.filter((f) => f.operation !== 'GET /items/{id}');
    expect(elsewhere).toEqual([]);
    expect(result.errors).toEqual([]);
    for (const label of ['POST /echo', 'GET /count', 'POST /files']) {
      const codes = Object.keys(result.operations[label]?.statusCodes ?? {});
      expect(
        codes.filter((c) => c.startsWith('5')),
        label,
      ).toEqual([]);
    }
  });

  it('leaves the API serving', async () => {
    const response = await fetch(`${baseUrl}/items/short`, { headers: { 'X-Test-Token': TOKEN } });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ id: 'short' });
  });
});
