/**
 * The gateway compartment: the local HTTP API untrusted UIs talk to. It holds no secret and
 * decides nothing; every request is validated against the endpoint contract's schemas and
 * forwarded, with the caller's bearer token, to the endpoint, which authorises it.
 */
export { buildGateway, openApiDocument, type GatewayOptions } from './app.ts';
export {
  checkListenConfig,
  listenGateway,
  ListenError,
  LOOPBACK_HOSTS,
  type ListenConfig,
  type Listening,
} from './listen.ts';
export { DEFAULT_LIMITS, resolveLimits, type Limits } from './limits.ts';
export { GatewayError, RPC_STATUS, errorBody, toGatewayError, type ErrorBody } from './errors.ts';
export {
  loadGatewayConfig,
  gatewayConfigSchema,
  ConfigError,
  type GatewayConfig,
} from './config.ts';
export { spawnGateway, type SpawnedGateway } from './spawn.ts';
export {
  gatewayRequest,
  gatewayStream,
  openEventStream,
  type GatewayTarget,
  type GatewayResponse,
  type EventStream,
  type SseEvent,
  type StreamRequestOptions,
  type StreamResponse,
} from './client.ts';
