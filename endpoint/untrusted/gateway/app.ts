import Fastify, { type FastifyInstance } from 'fastify';
import type { RpcClient } from '../../../keyvault/common/rpc/index.ts';
import type { EndpointContract } from '../../contract.ts';
import { singleCredentialsPlugin } from './auth.ts';
import { checkingIntervalMs, shedConnections } from './connections.ts';
import { type EndpointCalls, endpointCalls } from './forward.ts';
import { type BrowserOptions, browserGuardPlugin, staticFilesPlugin } from './browser/index.ts';
import { type Limits, resolveLimits } from './limits.ts';
import { buildOpenApiDocument } from './openapi.ts';
import {
  clientErrorHandler,
  errorsPlugin,
  frameworkErrors,
  methodNotAllowed,
  refuseExpectation,
} from './plugins/errors.ts';
import { headersPlugin } from './plugins/headers.ts';
import { jsonBodyPlugin } from './plugins/json-body.ts';
import type { GatewayContext } from './route.ts';
import { eventsPlugin } from './routes/events.ts';
import { allRoutes, jsonRoutesPlugin } from './routes/index.ts';
import { openApiPlugin } from './routes/openapi.ts';
import { contactRoutes } from './routes/contacts.ts';
import { messageRoutes } from './routes/messages.ts';
import { verificationRoutes } from './routes/verification.ts';
import { attestationRoutes } from './routes/attestation.ts';
import { backupRoutes } from './routes/backup.ts';
import { roomRoutes } from './routes/rooms.ts';
import { outboxRoutes } from './routes/outbox.ts';
import { downloadPlugin, uploadPlugin } from './routes/attachments.ts';
import { statusRoutes } from './routes/status.ts';
import { Subscribers } from './sse.ts';

export interface GatewayOptions {
  endpoint: RpcClient<EndpointContract>;
  limits?: Partial<Limits>;
  /**
   * The calls of another app of this gateway (the Unix socket's, for the web UI's listener):
   * one set of per-token slots for both, so a token gets no more of the endpoint by using two.
   */
  calls?: EndpointCalls;
  /** Makes this app the web UI's loopback listener: browser defences and the UI's files. */
  browser?: BrowserOptions;
}

/** The OpenAPI document the gateway serves (and endpoint/untrusted/gateway/openapi.json holds). */
export function openApiDocument(): Record<string, unknown> {
  return buildOpenApiDocument(allRoutes);
}

/**
 * The gateway as a fastify app, not yet listening (see listenGateway). It holds no secret and
 * decides nothing: each route validates its input against the endpoint contract's schemas and
 * forwards one call, with the caller's token, to the endpoint, which authorises it.
 */
export function buildGateway(options: GatewayOptions): FastifyInstance {
  const limits = resolveLimits(options.limits);
  const headersTimeout = Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs);
  const app = Fastify({
    // No logger at all: a request log would hold tokens (headers) or messages (bodies).
    logger: false,
    http: {
      // The cut-offs hold at the stated time, not at Node's next 30 s sweep (connections.ts).
      connectionsCheckingInterval: checkingIntervalMs(headersTimeout),
      headersTimeout,
      // Refused in plugins/headers.ts instead, with the API's error body (Node's is empty).
      requireHostHeader: false,
    },
    bodyLimit: limits.bodyLimitBytes,
    routerOptions: { maxParamLength: limits.maxParamLength },
    connectionTimeout: limits.idleTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    exposeHeadRoutes: false,
    // plugins/errors.ts answers those 503s, in the API's error shape.
    return503OnClosing: false,
    forceCloseConnections: true,
    // Ids are not a secret, but neither is there any need to trust client-chosen ones.
    requestIdHeader: false,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    frameworkErrors,
    // Malformed HTTP and the cut-offs, below fastify: the same error shape as everything else.
    clientErrorHandler,
  });
  shedConnections(app.server, limits.maxConnections);
  app.server.on('checkExpectation', refuseExpectation);

  const calls = options.calls ?? endpointCalls(options.endpoint, limits);
  const ctx: GatewayContext = { calls, limits };
  void app.register(errorsPlugin);
  void app.register(headersPlugin);
  if (options.browser) {
    void app.register(browserGuardPlugin, options.browser);
    void app.register(staticFilesPlugin, { files: options.browser.files });
  }
  void app.register(singleCredentialsPlugin);
  void app.register(jsonBodyPlugin, { bodyLimit: limits.bodyLimitBytes });
  void app.register(jsonRoutesPlugin, { ctx, routes: statusRoutes });
  void app.register(jsonRoutesPlugin, { ctx, routes: roomRoutes });
  void app.register(jsonRoutesPlugin, { ctx, routes: messageRoutes });
  void app.register(jsonRoutesPlugin, { ctx, routes: outboxRoutes });
  // Attachments are bytes, not JSON: each is its own plugin (the upload with its own parser).
  void app.register(uploadPlugin, { ctx });
  void app.register(downloadPlugin, { ctx });
  void app.register(jsonRoutesPlugin, { ctx, routes: contactRoutes });
  void app.register(jsonRoutesPlugin, { ctx, routes: verificationRoutes });
  void app.register(jsonRoutesPlugin, { ctx, routes: attestationRoutes });
  void app.register(jsonRoutesPlugin, { ctx, routes: backupRoutes });
  void app.register(eventsPlugin, { ctx, subscribers: new Subscribers(limits) });
  void app.register(openApiPlugin, { document: openApiDocument() });
  methodNotAllowed(app, allRoutes);
  return app;
}
