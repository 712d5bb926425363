import { TPM_ALG, TPM_CC, TPM_RH, TPM_ST } from './constants.ts';
import { type Command, type HandleArg, handleName } from './execute.ts';
import { Reader, Writer } from './marshal.ts';
import {
  type PublicArea,
  objectName,
  parsePublic,
  pcrSelection,
  readPcrSelection,
} from './structures.ts';

/** TPM 2.0 commands as data (Part 3): handles, parameters, and how to read the answer. */

export function getRandom(bytes: number): Command<Buffer> {
  return {
    name: 'GetRandom',
    code: TPM_CC.GetRandom,
    handles: [],
    authHandles: 0,
    params: new Writer().u16(bytes).done(),
    parse: ({ params }) => params.tpm2b(),
  };
}

export function startup(): Command<void> {
  return {
    name: 'Startup',
    code: 0x144,
    handles: [],
    authHandles: 0,
    params: new Writer().u16(0).done(), // TPM_SU_CLEAR
    parse: () => undefined,
  };
}

export function flushContext(handle: number): Command<void> {
  return {
    name: 'FlushContext',
    code: TPM_CC.FlushContext,
    handles: [],
    authHandles: 0,
    params: handleName(handle), // the handle is a parameter here, not in the handle area
    parse: () => undefined,
  };
}

export function startAuthSession(
  handles: number[],
  params: Buffer,
): Command<{ handle: number; nonceTPM: Buffer }> {
  return {
    name: 'StartAuthSession',
    code: TPM_CC.StartAuthSession,
    handles: handles.map((handle) => ({ handle })),
    authHandles: 0,
    params,
    responseHandles: 1,
    parse: ({ handles: [handle = 0], params: p }) => ({ handle, nonceTPM: p.tpm2b() }),
  };
}

export interface CreatedObject {
  handle: number;
  public: PublicArea;
  name: Buffer;
}

function sensitiveCreate(data: Uint8Array): (w: Writer) => void {
  return (w) => w.sized((s) => s.tpm2b(new Uint8Array()).tpm2b(data));
}

export function createPrimary(hierarchy: number, template: Uint8Array): Command<CreatedObject> {
  return {
    name: 'CreatePrimary',
    code: TPM_CC.CreatePrimary,
    handles: [{ handle: hierarchy }],
    authHandles: 1,
    params: withParams(sensitiveCreate(new Uint8Array()), (w) =>
      w.tpm2b(template).tpm2b(new Uint8Array()).u32(0),
    ),
    encryptsCommand: true,
    encryptsResponse: true,
    responseHandles: 1,
    parse: ({ handles: [handle = 0], params: p }) => {
      const pub = parsePublic(p.tpm2b());
      p.tpm2b(); // creationData
      p.tpm2b(); // creationHash
      skipTicket(p);
      const name = p.tpm2b();
      if (!name.equals(objectName(pub.raw)))
        throw new Error('TPM2_CreatePrimary: the returned Name does not match the public area');
      return { handle, public: pub, name };
    },
  };
}

export interface KeyBlobs {
  private: Buffer;
  public: Buffer;
}

/** TPM2_Create: a new object under `parent`; `data` is sealed into it when given. */
export function create(
  parent: HandleArg,
  template: Uint8Array,
  data: Uint8Array = new Uint8Array(),
): Command<KeyBlobs> {
  return {
    name: 'Create',
    code: TPM_CC.Create,
    handles: [parent],
    authHandles: 1,
    params: withParams(sensitiveCreate(data), (w) =>
      w.tpm2b(template).tpm2b(new Uint8Array()).u32(0),
    ),
    encryptsCommand: true,
    encryptsResponse: true,
    parse: ({ params: p }) => ({ private: p.tpm2b(), public: p.tpm2b() }),
  };
}

export function load(
  parent: HandleArg,
  blobs: KeyBlobs,
): Command<{ handle: number; name: Buffer }> {
  return {
    name: 'Load',
    code: TPM_CC.Load,
    handles: [parent],
    authHandles: 1,
    params: new Writer().tpm2b(blobs.private).tpm2b(blobs.public).done(),
    encryptsCommand: true,
    encryptsResponse: true,
    responseHandles: 1,
    parse: ({ handles: [handle = 0], params: p }) => {
      const name = p.tpm2b();
      if (!name.equals(objectName(blobs.public)))
        throw new Error('TPM2_Load: the returned Name does not match the public area');
      return { handle, name };
    },
  };
}

export function unseal(item: HandleArg): Command<Buffer> {
  return {
    name: 'Unseal',
    code: TPM_CC.Unseal,
    handles: [item],
    authHandles: 1,
    params: Buffer.alloc(0),
    encryptsResponse: true,
    parse: ({ params: p }) => p.tpm2b(),
  };
}

export function policyPcr(session: number, pcrs: readonly number[]): Command<void> {
  return {
    name: 'PolicyPCR',
    code: TPM_CC.PolicyPCR,
    handles: [{ handle: session }],
    authHandles: 0,
    // An empty pcrDigest makes the TPM use the current values.
    params: new Writer().tpm2b(new Uint8Array()).bytes(pcrSelection(pcrs)).done(),
    encryptsCommand: true,
    parse: () => undefined,
  };
}

export function policyGetDigest(session: number): Command<Buffer> {
  return {
    name: 'PolicyGetDigest',
    code: TPM_CC.PolicyGetDigest,
    handles: [{ handle: session }],
    authHandles: 0,
    params: Buffer.alloc(0),
    encryptsResponse: true,
    parse: ({ params: p }) => p.tpm2b(),
  };
}

/** TPM2_PCR_Read of SHA-256 PCRs (at most 8 per call, the TPM's limit). */
export function pcrRead(pcrs: readonly number[]): Command<{ pcr: number; digest: Buffer }[]> {
  return {
    name: 'PCR_Read',
    code: TPM_CC.PCR_Read,
    handles: [],
    authHandles: 0,
    params: pcrSelection(pcrs),
    parse: ({ params: p }) => {
      p.u32(); // pcrUpdateCounter
      const selected = readPcrSelection(p);
      const count = p.u32();
      const out: { pcr: number; digest: Buffer }[] = [];
      for (let i = 0; i < count; i++) out.push({ pcr: selected[i] ?? -1, digest: p.tpm2b() });
      return out;
    },
  };
}

export function pcrExtend(pcr: number, digest: Uint8Array): Command<void> {
  return {
    name: 'PCR_Extend',
    code: TPM_CC.PCR_Extend,
    handles: [{ handle: pcr }],
    authHandles: 1,
    params: new Writer().u32(1).u16(TPM_ALG.SHA256).bytes(digest).done(),
    parse: () => undefined,
  };
}

export interface QuoteResult {
  attest: Buffer;
  signature: Buffer;
}

export function quote(
  signer: HandleArg,
  qualifyingData: Uint8Array,
  pcrs: readonly number[],
): Command<QuoteResult> {
  return {
    name: 'Quote',
    code: TPM_CC.Quote,
    handles: [signer],
    authHandles: 1,
    params: new Writer().tpm2b(qualifyingData).u16(TPM_ALG.NULL).bytes(pcrSelection(pcrs)).done(),
    encryptsCommand: true,
    encryptsResponse: true,
    parse: ({ params: p }) => {
      const attest = p.tpm2b();
      return { attest, signature: p.rest() };
    },
  };
}

/** TPM2_Sign of a SHA-512 digest with RSASSA-PSS; returns the raw signature bytes. */
export function signRsaPss(key: HandleArg, digest: Uint8Array): Command<Buffer> {
  return {
    name: 'Sign',
    code: TPM_CC.Sign,
    handles: [key],
    authHandles: 1,
    params: new Writer()
      .tpm2b(digest)
      .u16(TPM_ALG.RSAPSS)
      .u16(TPM_ALG.SHA512)
      .u16(TPM_ST.HASHCHECK)
      .u32(TPM_RH.NULL)
      .tpm2b(new Uint8Array())
      .done(),
    encryptsCommand: true,
    parse: ({ params: p }) => {
      const alg = p.u16();
      const hash = p.u16();
      if (alg !== TPM_ALG.RSAPSS || hash !== TPM_ALG.SHA512)
        throw new Error('TPM2_Sign: unexpected signature scheme');
      return p.tpm2b();
    },
  };
}

export interface NvPublic {
  index: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  dataSize: number;
  /** The marshalled TPMS_NV_PUBLIC the Name is the hash of. */
  raw: Buffer;
  name: Buffer;
}

export function nvReadPublic(index: number): Command<NvPublic> {
  return {
    name: 'NV_ReadPublic',
    code: TPM_CC.NV_ReadPublic,
    handles: [{ handle: index }],
    authHandles: 0,
    params: Buffer.alloc(0),
    parse: ({ params: p }) => {
      const pub = p.tpm2b();
      const r = new Reader(pub);
      const idx = r.u32();
      const nameAlg = r.u16();
      const attributes = r.u32();
      const authPolicy = r.tpm2b();
      const dataSize = r.u16();
      const name = p.tpm2b();
      // The Name is what sessions bind to: it must be the hash of the public area we were shown.
      if (idx !== index || (nameAlg === TPM_ALG.SHA256 && !name.equals(objectName(pub)))) {
        throw new Error('TPM2_NV_ReadPublic: the returned Name does not match the public area');
      }
      return { index: idx, nameAlg, attributes, authPolicy, dataSize, raw: pub, name };
    },
  };
}

/**
 * TPM2_NV_DefineSpace. `authValue` is the index's own authorization value, the first
 * parameter: a session with the decrypt attribute sends it encrypted.
 */
export function nvDefineSpace(
  auth: number,
  index: number,
  attributes: number,
  dataSize: number,
  authValue: Uint8Array = new Uint8Array(),
): Command<void> {
  return {
    name: 'NV_DefineSpace',
    code: TPM_CC.NV_DefineSpace,
    handles: [{ handle: auth }],
    authHandles: 1,
    params: new Writer()
      .tpm2b(authValue)
      .sized((w) =>
        w.u32(index).u16(TPM_ALG.SHA256).u32(attributes).tpm2b(new Uint8Array()).u16(dataSize),
      )
      .done(),
    encryptsCommand: true,
    parse: () => undefined,
  };
}

/** TPM2_NV_UndefineSpace by the owner (or platform) hierarchy. */
export function nvUndefineSpace(auth: number, index: HandleArg): Command<void> {
  return {
    name: 'NV_UndefineSpace',
    code: TPM_CC.NV_UndefineSpace,
    handles: [{ handle: auth }, index],
    authHandles: 1,
    params: Buffer.alloc(0),
    parse: () => undefined,
  };
}

/** `auth` is a hierarchy (OWNERWRITE) or the index itself (AUTHWRITE, with its Name). */
export function nvIncrement(auth: HandleArg, index: HandleArg): Command<void> {
  return {
    name: 'NV_Increment',
    code: TPM_CC.NV_Increment,
    handles: [auth, index],
    authHandles: 1,
    params: Buffer.alloc(0),
    parse: () => undefined,
  };
}

/** `auth` is a hierarchy (OWNERREAD) or the index itself (AUTHREAD, with its Name). */
export function nvRead(
  auth: HandleArg,
  index: HandleArg,
  size: number,
  offset = 0,
): Command<Buffer> {
  return {
    name: 'NV_Read',
    code: TPM_CC.NV_Read,
    handles: [auth, index],
    authHandles: 1,
    params: new Writer().u16(size).u16(offset).done(),
    encryptsResponse: true,
    parse: ({ params: p }) => p.tpm2b(),
  };
}

export function getCapability(
  capability: number,
  property: number,
  count: number,
): Command<{ more: boolean; data: Reader }> {
  return {
    name: 'GetCapability',
    code: TPM_CC.GetCapability,
    handles: [],
    authHandles: 0,
    params: new Writer().u32(capability).u32(property).u32(count).done(),
    // A copy: execute() zeroises its buffers once parse returns.
    parse: ({ params: p }) => ({ more: p.u8() !== 0, data: new Reader(p.rest()) }),
  };
}

function withParams(...parts: ((w: Writer) => void)[]): Buffer {
  const w = new Writer();
  for (const part of parts) part(w);
  return w.done();
}

function skipTicket(p: Reader): void {
  p.u16();
  p.u32();
  p.tpm2b();
}

/** TPM2_ReadPublic: an object's public area and Name (for a persistent key such as the EK). */
export function readPublic(handle: number): Command<{ public: PublicArea; name: Buffer }> {
  return {
    name: 'ReadPublic',
    code: TPM_CC.ReadPublic,
    handles: [{ handle }],
    authHandles: 0,
    params: new Uint8Array(),
    parse: ({ params: p }) => {
      const pub = parsePublic(p.tpm2b());
      const name = p.tpm2b();
      p.tpm2b(); // qualifiedName
      if (!name.equals(objectName(pub.raw)))
        throw new Error('TPM2_ReadPublic: the returned Name does not match the public area');
      return { public: pub, name };
    },
  };
}

/**
 * TPM2_PolicySecret: asserts knowledge of `authHandle`'s authorization in a policy session
 * (the default EK's policy is PolicySecret(TPM_RH_ENDORSEMENT)). No expiry, no cpHash.
 */
export function policySecret(authHandle: number, session: number): Command<void> {
  return {
    name: 'PolicySecret',
    code: TPM_CC.PolicySecret,
    handles: [{ handle: authHandle }, { handle: session }],
    authHandles: 1,
    params: new Writer()
      .tpm2b(new Uint8Array()) // nonceTPM: not needed without an expiry
      .tpm2b(new Uint8Array()) // cpHashA
      .tpm2b(new Uint8Array()) // policyRef
      .u32(0) // expiration
      .done(),
    parse: () => undefined,
  };
}

/**
 * TPM2_ActivateCredential: recovers a credential a verifier made (TPM2_MakeCredential, in
 * software) for `activate`'s Name and `key`'s public key. The TPM answers only if both are
 * loaded here: the proof that this AK lives on the TPM that holds this EK. `credentialBlob`
 * and `secret` are the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, size fields included.
 */
export function activateCredential(
  activate: HandleArg,
  key: HandleArg,
  credentialBlob: Uint8Array,
  secret: Uint8Array,
): Command<Buffer> {
  return {
    name: 'ActivateCredential',
    code: TPM_CC.ActivateCredential,
    handles: [activate, key],
    authHandles: 2,
    params: Buffer.concat([credentialBlob, secret]),
    encryptsCommand: true,
    encryptsResponse: true,
    parse: ({ params: p }) => p.tpm2b(),
  };
}
