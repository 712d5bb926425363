/**
 * The Matrix client-server client: the endpoint's only way to the homeserver. Everything it
 * returns has passed the schemas in schemas.ts; everything it throws is a MatrixApiError.
 */
export type {
  CreateRoomOptions,
  HomeserverApi,
  JoinedRoom,
  LoginResult,
  Member,
  MessagesPage,
  RoomEvent,
  StrippedEvent,
  SyncResponse,
  ToDeviceEvent,
  UiaAuth,
} from './api.ts';
export { HomeserverClient, type HomeserverClientOptions } from './client.ts';
export { ClientCode, type ClientErrorCode, MatrixApiError, isMatrixApiError } from './errors.ts';
export { type HomeserverLogger, type RetryTiming, defaultTiming } from './http.ts';
