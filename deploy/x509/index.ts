/** The certificate tool's library: CAs, leaves for Matrix users, and the acceptance check. */
export { X509Error, type X509ErrorCode } from './errors.ts';
export { type Mxid, emailForm, matrixUri, parseMxid } from './names.ts';
export {
  KEY_TYPES,
  type KeyType,
  type SigningKey,
  generateKey,
  isKeyType,
  loadSigningKey,
  parsePublicKey,
  readText,
  writePrivateKey,
  writePublicFile,
} from './keys.ts';
export {
  type CaOptions,
  type Issued,
  type Issuer,
  type LeafOptions,
  type Validity,
  createIntermediateCa,
  createRootCa,
  issueLeaf,
  skiBase64,
} from './issue.ts';
export {
  type CheckInput,
  type CheckReport,
  type Problem,
  type ProblemCode,
  assertAccepted,
  checkChain,
  derSetOrder,
  splitPem,
} from './check.ts';
