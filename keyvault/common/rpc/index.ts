/**
 * The compartments' typed RPC (DESIGN.md §2): length-prefixed JSON frames, request ids, every
 * message validated with zod on receipt, typed errors, bounded frames, timeouts.
 */
export { RpcCode, RpcError, isRpcError, type ProtocolCode } from './errors.ts';
export { DEFAULT_MAX_FRAME_BYTES, encodeFrame } from './frame.ts';
export { type FrameChannel, type ChannelOptions, socketChannel, inProcessPair } from './channel.ts';
export {
  type Contract,
  type MethodSpec,
  type Params,
  type Result,
  defineContract,
  bytes,
  noParams,
} from './contract.ts';
export {
  type Handlers,
  type CallContext,
  type ServerOptions,
  type ServerConnection,
  serve,
} from './server.ts';
export { type RpcClient, type ClientOptions, type CallOptions, createClient } from './client.ts';
export { listenUnix, connectUnix } from './unix.ts';
export {
  type OneAtATime,
  type OneAtATimeOptions,
  type PeerEnd,
  serveOneAtATime,
} from './one-at-a-time.ts';
