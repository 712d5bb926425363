/** Our TPM 2.0 client (no usable one exists on npm): commands as data, one execute path. */
export {
  COMMAND_TIMEOUT_MS,
  COUNTER_ATTRIBUTES,
  SLOW_COMMAND_TIMEOUT_MS,
  TpmClient,
  type NvRef,
  type TpmClientOptions,
} from './client.ts';
export {
  execute,
  handleName,
  type Command,
  type Authorization,
  type HandleArg,
} from './execute.ts';
export * as commands from './commands.ts';
export type { CreatedObject, KeyBlobs, NvPublic, QuoteResult } from './commands.ts';
export { TpmError, decodeRc, RC, type DecodedRc } from './rc.ts';
export { passwordSession, type Session } from './session.ts';
export {
  akTemplate,
  objectName,
  parsePublic,
  pcrPolicyDigest,
  pcrSelection,
  rsaPssTemplate,
  sealTemplate,
  srkTemplate,
  type PublicArea,
} from './structures.ts';
export { TPM_ALG, TPM_RH, TPM_CC, TPMA_NV } from './constants.ts';
export * from './transport/index.ts';
