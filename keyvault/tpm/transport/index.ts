export {
  type SendOptions,
  type TpmTransport,
  TpmTransportError,
  type TransportErrorCode,
} from './transport.ts';
export {
  type SwtpmAddress,
  type SwtpmTransport,
  SwtpmControl,
  connectSwtpm,
} from './swtpm-socket.ts';
export { openTpmDevice } from './device.ts';
