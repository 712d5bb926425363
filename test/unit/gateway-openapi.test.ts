import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { openApiDocument } from '../../endpoint/untrusted/gateway/index.ts';
import { OPENAPI_PATH, renderOpenApi } from '../../endpoint/untrusted/gateway/write-openapi.ts';
import { bearer, fakeEndpoint } from './gateway-helpers.ts';
import { buildGateway } from '../../endpoint/untrusted/gateway/index.ts';
import { allRoutes } from '../../endpoint/untrusted/gateway/routes/index.ts';

type Json = Record<string, unknown>;
const doc = openApiDocument() as {
  openapi: string;
  paths: Record<string, Record<string, Json>>;
  components: { securitySchemes: Json; schemas: Json };
  security: unknown;
};

describe('gateway OpenAPI document', () => {
  it('the committed openapi.json is what the code generates (run `npm run openapi`)', async () => {
    const committed = await readFile(OPENAPI_PATH, 'utf8');
    expect(JSON.parse(committed)).toEqual(doc);
    expect(committed).toBe(await renderOpenApi());
  });

  it('is OpenAPI 3.1 with a bearer scheme required everywhere but the document itself', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.components.securitySchemes).toMatchObject({
      bearer: { type: 'http', scheme: 'bearer' },
    });
    expect(doc.security).toEqual([{ bearer: [] }]);
    expect(doc.paths['/v1/openapi.json']?.get?.security).toEqual([]);
  });

  it('documents every route with parameters, bodies and responses that have schemas', () => {
    const operations = Object.entries(doc.paths).flatMap(([path, item]) =>
      Object.entries(item).map(([method, op]) => ({ path, method, op })),
    );
    expect(operations.map((o) => `${o.method} ${o.path}`).sort()).toEqual(
      [
        'get /v1/contacts',
        'get /v1/contacts/{userId}',
        'get /v1/contacts/{userId}/devices/{deviceId}/attestation',
        'get /v1/events',
        'get /v1/openapi.json',
        'get /v1/rooms',
        'get /v1/rooms/{roomId}/timeline',
        'get /v1/status',
        'post /v1/rooms',
        'post /v1/rooms/{roomId}/invite',
        'post /v1/rooms/{roomId}/leave',
        'post /v1/rooms/{roomId}/join',
        'post /v1/rooms/{roomId}/decline',
        'post /v1/rooms/{roomId}/messages',
        'post /v1/rooms/{roomId}/reactions',
        'post /v1/rooms/{roomId}/events/{eventId}/redact',
        'post /v1/rooms/{roomId}/attachments',
        'get /v1/rooms/{roomId}/events/{eventId}/attachment',
        'get /v1/outbox/failed',
        'post /v1/outbox/failed/{txnId}/retry',
        'post /v1/outbox/failed/{txnId}/discard',
        'get /v1/verifications',
        'get /v1/verifications/{flowId}',
        'post /v1/verifications',
        'post /v1/verifications/{flowId}/accept',
        'post /v1/verifications/{flowId}/confirm',
        'post /v1/verifications/{flowId}/cancel',
        'post /v1/attestation/activation',
        'post /v1/attestation/evidence',
        'get /v1/backup',
        'post /v1/backup',
        'post /v1/backup/rotate',
        'post /v1/backup/recover',
        'post /v1/contacts/{userId}/devices/{deviceId}/attestation',
        'post /v1/contacts/{userId}/identity/acknowledge',
        'post /v1/contacts/{userId}/identity/withdraw-verification',
      ].sort(),
    );
    for (const { path, op } of operations) {
      const params = (op.parameters ?? []) as { name: string; in: string; schema: Json }[];
      for (const name of [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1])) {
        expect(params.find((p) => p.in === 'path' && p.name === name)).toBeDefined();
      }
      for (const p of params) expect(p.schema).toBeTypeOf('object');
      const responses = op.responses as Record<string, { content?: Record<string, Json> }>;
      for (const [status, response] of Object.entries(responses)) {
        const content = Object.values(response.content ?? {});
        // A file is any media type: application/octet-stream and */*, both binary.
        const binary = Object.keys(response.content ?? {}).includes('application/octet-stream');
        expect(content.length, `${path} ${status}`).toBe(binary ? 2 : 1);
        for (const c of content) expect(c.schema).toBeTypeOf('object');
        if (Number(status) >= 400) {
          expect(content[0]?.schema).toEqual({ $ref: '#/components/schemas/Error' });
        }
      }
      if (op.security === undefined) {
        for (const status of ['400', '401', '403', '429', '500', '503', '504']) {
          expect(responses[status], `${path} ${status}`).toBeDefined();
        }
      }
      if (op.requestBody) {
        expect(responses['413']).toBeDefined();
        expect(responses['415']).toBeDefined();
      }
    }
  });

  it('uses the contract schemas: bounds and patterns appear in the document', () => {
    const send = doc.paths['/v1/rooms/{roomId}/messages']?.post as {
      parameters: { name: string; schema: Json }[];
      requestBody: { content: { 'application/json': { schema: Json } } };
      responses: Record<string, Json>;
    };
    expect(send.parameters[0]?.schema).toMatchObject({ type: 'string', maxLength: 255 });
    expect(send.parameters[0]?.schema.pattern).toBeTypeOf('string');
    expect(send.requestBody.content['application/json'].schema).toMatchObject({
      type: 'object',
      required: ['body'],
      additionalProperties: false,
      properties: { body: { type: 'string', minLength: 1, maxLength: 32768 } },
    });
    expect(Object.keys(send.responses)).toContain('202');
    const timeline = doc.paths['/v1/rooms/{roomId}/timeline']?.get as {
      parameters: { name: string; in: string; required: boolean; schema: Json }[];
    };
    expect(timeline.parameters.find((p) => p.name === 'limit')).toMatchObject({
      in: 'query',
      required: false,
      schema: { type: 'integer', minimum: 1, maximum: 100, default: 50 },
    });
    const events = doc.paths['/v1/events']?.get as {
      parameters: { name: string; in: string }[];
      responses: Record<string, { content: Json }>;
    };
    expect(events.parameters).toMatchObject([{ name: 'Last-Event-ID', in: 'header' }]);
    expect(Object.keys(events.responses['200']?.content ?? {})).toEqual(['text/event-stream']);
  });

  it('documents the attachment routes as binary, with their limits and headers', () => {
    type Op = {
      requestBody?: { required: boolean; content: Record<string, { schema: Json }> };
      parameters: { name: string; in: string; required: boolean; schema: Json }[];
      responses: Record<string, { headers?: Record<string, Json>; content?: Record<string, Json> }>;
    };
    const upload = doc.paths['/v1/rooms/{roomId}/attachments']?.post as Op;
    expect(upload.requestBody?.required).toBe(true);
    expect(upload.requestBody?.content).toEqual({
      'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
      '*/*': { schema: { type: 'string', format: 'binary' } },
    });
    expect(upload.parameters.find((p) => p.name === 'name')).toMatchObject({
      in: 'query',
      required: true,
      schema: { type: 'string', maxLength: 255 },
    });
    expect(upload.parameters.find((p) => p.name === 'caption')?.required).toBe(false);
    for (const status of ['202', '411', '413', '415'])
      expect(upload.responses[status]).toBeDefined();
    expect(Object.keys(upload.responses['202']?.content ?? {})).toEqual(['application/json']);

    const download = doc.paths['/v1/rooms/{roomId}/events/{eventId}/attachment']?.get as Op;
    expect(download.requestBody).toBeUndefined();
    const ok = download.responses['200'];
    expect(ok?.content).toEqual({
      'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
      '*/*': { schema: { type: 'string', format: 'binary' } },
    });
    expect(Object.keys(ok?.headers ?? {}).sort()).toEqual([
      'Content-Disposition',
      'Content-Length',
      'Content-Security-Policy',
      'X-Content-Type-Options',
    ]);
    expect(ok?.headers?.['Content-Security-Policy']).toMatchObject({
      required: true,
      schema: { const: "sandbox; default-src 'none'" },
    });
    expect(download.responses['502']).toBeDefined();
  });

  it('documents every event type of the stream, and the frames as schemas', () => {
    const events = doc.paths['/v1/events']?.get as { description: string };
    for (const type of [
      'message',
      'room',
      'member',
      'verification',
      'identity',
      'health',
      'attestation',
      'edit',
      'reaction',
      'redaction',
      'gap',
      'sent',
      'send-failed',
    ]) {
      expect(events.description).toContain(`\`${type}\``);
    }
    expect(Object.keys(doc.components.schemas).sort()).toEqual([
      'Error',
      'StreamError',
      'StreamEvent',
      'StreamGap',
    ]);
  });

  it('the served document is the generated one', async () => {
    const fake = fakeEndpoint();
    const app = buildGateway({ endpoint: fake.client });
    const res = await app.inject({ url: '/v1/openapi.json', headers: bearer('ignored') });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual(doc);
    expect(fake.calls).toEqual([]);
    await app.close();
    fake.close();
  });
});

describe('every documented route is served', () => {
  it('the gateway registers each route the OpenAPI document describes', async () => {
    const fake = fakeEndpoint();
    const app = buildGateway({ endpoint: fake.client });
    await app.ready();
    try {
      expect(
        allRoutes.map((r) => `${r.method} ${r.url.replace(/:(\w+)/g, '{$1}')}`).sort(),
      ).toEqual(
        Object.entries(doc.paths)
          .flatMap(([path, item]) => Object.keys(item).map((m) => `${m.toUpperCase()} ${path}`))
          .sort(),
      );
      const missing = allRoutes.filter(
        (route) => !app.hasRoute({ method: route.method, url: route.url }),
      );
      expect(missing.map((r) => `${r.method} ${r.url}`)).toEqual([]);
    } finally {
      await app.close();
      fake.close();
    }
  });
});
