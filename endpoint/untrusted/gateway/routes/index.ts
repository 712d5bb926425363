import type { FastifyInstance } from 'fastify';
import type { GatewayContext, JsonRoute, RouteDoc } from '../route.ts';
import { registerJsonRoute } from '../route.ts';
import { attestationRoutes } from './attestation.ts';
import { backupRoutes } from './backup.ts';
import { downloadRoute, uploadRoute } from './attachments.ts';
import { contactRoutes } from './contacts.ts';
import { eventsRoute } from './events.ts';
import { messageRoutes } from './messages.ts';
import { openApiRoute } from './openapi.ts';
import { outboxRoutes } from './outbox.ts';
import { roomRoutes } from './rooms.ts';
import { statusRoutes } from './status.ts';
import { verificationRoutes } from './verification.ts';

/** The JSON routes that forward one call each to the endpoint. */
export const jsonRoutes: readonly JsonRoute[] = [
  ...statusRoutes,
  ...roomRoutes,
  ...messageRoutes,
  ...outboxRoutes,
  ...contactRoutes,
  ...verificationRoutes,
  ...attestationRoutes,
  ...backupRoutes,
];

/** Every route the gateway serves, in the OpenAPI document's order. */
export const allRoutes: readonly RouteDoc[] = [
  ...jsonRoutes,
  uploadRoute,
  downloadRoute,
  eventsRoute,
  openApiRoute,
];

/** Registers one group of JSON routes (app.ts registers each group as its own plugin). */
export async function jsonRoutesPlugin(
  app: FastifyInstance,
  opts: { ctx: GatewayContext; routes: readonly JsonRoute[] },
): Promise<void> {
  for (const route of opts.routes) registerJsonRoute(app, route, opts.ctx);
  return Promise.resolve();
}
