import { randomBytes, timingSafeEqual } from 'node:crypto';
import { TPM_CC, TPM_ST, TPMA_SESSION } from './constants.ts';
import { DIGEST_BYTES, cfb, hmac, sha256 } from './kdf.ts';
import { Reader, Writer } from './marshal.ts';
import { TpmError } from './rc.ts';
import type { Session } from './session.ts';
import { type SendOptions, type TpmTransport, TpmTransportError } from './transport/index.ts';

/**
 * One execute path for every command (after go-tpm's "direct" API): a command is plain data
 * (handles with their Names, marshalled parameters, how to parse the answer); this function
 * adds the sessions, encrypts the first parameter for decrypt sessions, computes and checks
 * HMACs over cpHash/rpHash, and decrypts the first response parameter for encrypt sessions.
 */
export interface HandleArg {
  handle: number;
  /** The entity's Name, which cpHash covers; defaults to the handle itself (hierarchies, PCRs, sessions). */
  name?: Uint8Array;
}

export interface Command<R> {
  name: string;
  code: number;
  handles: HandleArg[];
  /** How many of the leading handles need an authorization. */
  authHandles: number;
  params: Uint8Array;
  /** Whether the first command/response parameter is a TPM2B that a session may encrypt. */
  encryptsCommand?: boolean;
  encryptsResponse?: boolean;
  responseHandles?: number;
  /**
   * Whether the TPM may take long (generating an RSA key): the client then waits longer
   * before it calls the TPM frozen.
   */
  slow?: boolean;
  parse(response: { handles: number[]; params: Reader }): R;
}

export interface Authorization {
  session: Session;
  /** The authorized entity's authValue (empty for all our objects). */
  authValue?: Uint8Array;
}

export function handleName(handle: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(handle >>> 0);
  return b;
}

export async function execute<R>(
  tpm: TpmTransport,
  cmd: Command<R>,
  auths: Authorization[] = [],
  extraSessions: Session[] = [],
  options: SendOptions = {},
): Promise<R> {
  if (auths.length !== cmd.authHandles) {
    throw new Error(
      `TPM2_${cmd.name} needs ${cmd.authHandles} authorization(s), got ${auths.length}`,
    );
  }
  const all: Authorization[] = [...auths, ...extraSessions.map((session) => ({ session }))];
  for (const a of all) {
    if (a.session.kind !== 'password') a.session.nonceCaller = randomBytes(DIGEST_BYTES);
  }
  const decryptIndex = all.findIndex((a) => a.session.attributes & TPMA_SESSION.decrypt);
  const encryptIndex = all.findIndex((a) => a.session.attributes & TPMA_SESSION.encrypt);
  if (decryptIndex >= 0 && !cmd.encryptsCommand)
    throw new Error(`TPM2_${cmd.name} has no parameter to encrypt`);
  if (encryptIndex >= 0 && !cmd.encryptsResponse)
    throw new Error(`TPM2_${cmd.name} has no response parameter to encrypt`);

  // Plaintext copies of parameters may hold a secret being sealed or just unsealed: every one
  // this function makes is zeroised before it returns.
  const scratch: Buffer[] = [];
  try {
    let params: Buffer = Buffer.from(cmd.params);
    scratch.push(params);
    if (decryptIndex >= 0) {
      const a = all[decryptIndex] as Authorization;
      params = transformFirst(params, (plain) =>
        cfb('encrypt', sessionValue(a), a.session.nonceCaller, a.session.nonceTPM, plain),
      );
      scratch.push(params);
    }

    const names = cmd.handles.map((h) => Buffer.from(h.name ?? handleName(h.handle)));
    const cpHash = sha256(handleName(cmd.code), ...names, params);

    const authArea = new Writer();
    all.forEach((a, i) => {
      const s = a.session;
      let mac: Uint8Array;
      if (s.kind === 'password') {
        mac = a.authValue ?? new Uint8Array();
      } else {
        const extra: Uint8Array[] = [];
        // The first session's HMAC also covers the nonces of separate decrypt/encrypt sessions.
        if (i === 0 && decryptIndex > 0)
          extra.push((all[decryptIndex] as Authorization).session.nonceTPM);
        if (i === 0 && encryptIndex > 0 && encryptIndex !== decryptIndex) {
          extra.push((all[encryptIndex] as Authorization).session.nonceTPM);
        }
        mac = hmac(
          hmacKey(a),
          cpHash,
          s.nonceCaller,
          s.nonceTPM,
          ...extra,
          Buffer.from([s.attributes]),
        );
      }
      authArea.u32(s.handle).tpm2b(s.nonceCaller).u8(s.attributes).tpm2b(mac);
    });

    const body = new Writer();
    for (const h of cmd.handles) body.u32(h.handle);
    if (all.length > 0) body.u32(authArea.length).bytes(authArea.done());
    body.bytes(params);
    const bodyBytes = body.done();
    const command = new Writer()
      .u16(all.length > 0 ? TPM_ST.SESSIONS : TPM_ST.NO_SESSIONS)
      .u32(10 + bodyBytes.length)
      .u32(cmd.code)
      .bytes(bodyBytes)
      .done();
    scratch.push(bodyBytes, command);

    const raw = Buffer.from(await tpm.send(command, options));
    scratch.push(raw);
    const response = new Reader(raw);
    const tag = response.u16();
    response.u32(); // size: the transport already framed the response by it
    const rc = response.u32();
    if (rc !== 0) throw new TpmError(cmd.name, rc);

    const handles: number[] = [];
    for (let i = 0; i < (cmd.responseHandles ?? 0); i++) handles.push(response.u32());
    try {
      // A response without sessions to a command with sessions would skip the HMAC checks:
      // the tag must match what we sent, and the auth area must be exactly what we expect.
      const expectedTag = all.length > 0 ? TPM_ST.SESSIONS : TPM_ST.NO_SESSIONS;
      if (tag !== expectedTag)
        throw badResponse(
          cmd.name,
          `tag 0x${tag.toString(16)} where 0x${expectedTag.toString(16)} was due`,
        );
      let rparams: Buffer;
      if (tag === TPM_ST.SESSIONS) {
        rparams = response.bytes(response.u32());
        scratch.push(rparams);
        const rpHash = sha256(handleName(0), handleName(cmd.code), rparams);
        for (const a of all) {
          const s = a.session;
          const nonceTPM = response.tpm2b();
          const attributes = response.u8();
          const mac = response.tpm2b();
          if (s.kind === 'password') continue;
          s.nonceTPM = nonceTPM;
          const expected = hmac(
            hmacKey(a),
            rpHash,
            s.nonceTPM,
            s.nonceCaller,
            Buffer.from([attributes]),
          );
          if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) {
            throw badResponse(
              cmd.name,
              'the response HMAC does not verify: the answer was altered or is not from this TPM',
            );
          }
        }
        if (response.remaining !== 0)
          throw badResponse(cmd.name, `${response.remaining} bytes after the authorization area`);
      } else {
        rparams = response.rest();
        scratch.push(rparams);
      }
      if (encryptIndex >= 0) {
        const a = all[encryptIndex] as Authorization;
        rparams = transformFirst(rparams, (secret) =>
          cfb('decrypt', sessionValue(a), a.session.nonceTPM, a.session.nonceCaller, secret),
        );
        scratch.push(rparams);
      }
      return cmd.parse({ handles, params: new Reader(rparams) });
    } catch (e) {
      // The TPM did create what the response names: flush it, or it stays loaded forever.
      for (const handle of handles) await flushQuietly(tpm, handle, options);
      throw e;
    }
  } finally {
    for (const b of scratch) b.fill(0);
  }
}

function badResponse(command: string, why: string): TpmTransportError {
  return new TpmTransportError('TPM_BAD_RESPONSE', `TPM2_${command}: ${why}`);
}

async function flushQuietly(
  tpm: TpmTransport,
  handle: number,
  options: SendOptions,
): Promise<void> {
  const flush = new Writer()
    .u16(TPM_ST.NO_SESSIONS)
    .u32(14)
    .u32(TPM_CC.FlushContext)
    .u32(handle)
    .done();
  await tpm.send(flush, options).catch(() => undefined);
}

/**
 * sessionKey || authValue. The TPM keeps an authValue without its trailing zero octets and
 * keys HMACs with what it kept: so must we, or a random authValue ending in 0x00 would fail
 * as a wrong one.
 */
function hmacKey(a: Authorization): Buffer {
  if (!a.session.includeAuth) return a.session.sessionKey;
  const auth = a.authValue ?? new Uint8Array();
  let end = auth.length;
  while (end > 0 && auth[end - 1] === 0) end--;
  return Buffer.concat([a.session.sessionKey, auth.subarray(0, end)]);
}

/** sessionKey || authValue: the key material for parameter encryption. */
function sessionValue(a: Authorization): Buffer {
  return hmacKey(a);
}

/** Applies `f` to the contents of the leading TPM2B of `params`. */
function transformFirst(params: Buffer, f: (inner: Buffer) => Buffer): Buffer {
  const size = params.readUInt16BE(0);
  const out = Buffer.from(params);
  const transformed = f(params.subarray(2, 2 + size));
  transformed.copy(out, 2);
  transformed.fill(0);
  return out;
}
