import * as cmd from './commands.ts';
import { HT_TRANSIENT, TPM_CAP, TPM_PT, TPM_RH, TPMA_NV, TPMA_SESSION } from './constants.ts';
import { type Authorization, type Command, type HandleArg, execute } from './execute.ts';
import { RC, TpmError } from './rc.ts';
import { type Session, passwordSession, saltedSessionRequest } from './session.ts';
import { type CreatedObject, type KeyBlobs, type NvPublic } from './commands.ts';
import { srkTemplate } from './structures.ts';
import type { TpmTransport } from './transport/index.ts';

/**
 * A TPM 2.0 client over any transport. Every transient object and session it creates is
 * flushed in a finally block, because swtpm (and /dev/tpm0) have no resource manager: a leak
 * would end in "out of object memory" on a long run.
 */
export class TpmClient {
  readonly transport: TpmTransport;

  constructor(transport: TpmTransport) {
    this.transport = transport;
  }

  run<R>(command: Command<R>, auths: Authorization[] = [], extra: Session[] = []): Promise<R> {
    return execute(this.transport, command, auths, extra);
  }

  /** TPM2_Startup(CLEAR), tolerating a TPM that has already started. */
  async startup(): Promise<void> {
    try {
      await this.run(cmd.startup());
    } catch (e) {
      if (!(e instanceof TpmError && e.rc === RC.INITIALIZE)) throw e;
    }
  }

  async getRandom(n: number): Promise<Buffer> {
    const out: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const chunk = await this.run(cmd.getRandom(Math.min(32, n - have)));
      if (chunk.length === 0) throw new Error('TPM2_GetRandom returned no bytes');
      out.push(chunk);
      have += chunk.length;
    }
    return Buffer.concat(out).subarray(0, n);
  }

  async pcrRead(pcrs: readonly number[]): Promise<{ pcr: number; digest: Buffer }[]> {
    const sorted = [...new Set(pcrs)].sort((a, b) => a - b);
    const out: { pcr: number; digest: Buffer }[] = [];
    // A TPM returns at most 8 digests per call; ask again for what it left out.
    while (out.length < sorted.length) {
      const missing = sorted.filter((p) => !out.some((o) => o.pcr === p));
      const got = await this.run(cmd.pcrRead(missing));
      if (got.length === 0) throw new Error('TPM2_PCR_Read returned no values');
      out.push(...got);
    }
    return out.sort((a, b) => a.pcr - b.pcr);
  }

  pcrExtend(pcr: number, digest: Uint8Array): Promise<void> {
    return this.run(cmd.pcrExtend(pcr, digest), [{ session: passwordSession() }]);
  }

  async flush(handle: number): Promise<void> {
    try {
      await this.run(cmd.flushContext(handle));
    } catch (e) {
      // Already gone (a session the TPM closed itself) is fine; anything else is not.
      if (!(e instanceof TpmError && (e.base === RC.HANDLE || e.base === RC.VALUE))) throw e;
    }
  }

  /** Creates a primary key from `template` in `hierarchy` for the duration of `use`. */
  async withPrimary<R>(
    hierarchy: number,
    template: Uint8Array,
    use: (key: CreatedObject) => Promise<R>,
  ): Promise<R> {
    const key = await this.run(cmd.createPrimary(hierarchy, template), [
      { session: passwordSession() },
    ]);
    try {
      return await use(key);
    } finally {
      await this.flush(key.handle);
    }
  }

  withSrk<R>(use: (srk: CreatedObject) => Promise<R>): Promise<R> {
    return this.withPrimary(TPM_RH.OWNER, srkTemplate(), use);
  }

  /** A session salted to `saltKey` (ECC P-256), so its key is unknown to a bus observer. */
  async withSession<R>(
    kind: 'hmac' | 'policy',
    saltKey: CreatedObject,
    use: (session: Session) => Promise<R>,
  ): Promise<R> {
    const { ecc } = saltKey.public;
    if (!ecc) throw new Error('sessions can only be salted to an ECC key here');
    const request = saltedSessionRequest(kind, { handle: saltKey.handle, x: ecc.x, y: ecc.y });
    const started = await this.run(cmd.startAuthSession(request.handles, request.params));
    const session = request.finish(started.handle, started.nonceTPM);
    try {
      return await use(session);
    } finally {
      session.sessionKey.fill(0);
      await this.flush(session.handle);
    }
  }

  async withLoaded<R>(
    parent: CreatedObject,
    blobs: KeyBlobs,
    use: (key: HandleArg) => Promise<R>,
  ): Promise<R> {
    const loaded = await this.run(cmd.load({ handle: parent.handle, name: parent.name }, blobs), [
      { session: passwordSession() },
    ]);
    try {
      return await use({ handle: loaded.handle, name: loaded.name });
    } finally {
      await this.flush(loaded.handle);
    }
  }

  /**
   * Seals `secret` under the SRK into an object only `policy` can open. The secret crosses to
   * the TPM encrypted (a salted HMAC session with the decrypt attribute).
   */
  seal(srk: CreatedObject, secret: Uint8Array, template: Uint8Array): Promise<KeyBlobs> {
    return this.withSession('hmac', srk, (session) => {
      session.attributes = TPMA_SESSION.continueSession | TPMA_SESSION.decrypt;
      return this.run(cmd.create({ handle: srk.handle, name: srk.name }, template, secret), [
        { session },
      ]);
    });
  }

  /** Creates a key under the SRK (nothing secret goes in; the TPM generates it). */
  createKey(srk: CreatedObject, template: Uint8Array): Promise<KeyBlobs> {
    return this.withSession('hmac', srk, (session) =>
      this.run(cmd.create({ handle: srk.handle, name: srk.name }, template), [{ session }]),
    );
  }

  /**
   * Unseals a PCR-policy object. The secret comes back encrypted (a salted policy session with
   * the encrypt attribute) and is decrypted only here.
   */
  unseal(srk: CreatedObject, blobs: KeyBlobs, pcrs: readonly number[]): Promise<Buffer> {
    return this.withLoaded(srk, blobs, (item) =>
      this.withSession('policy', srk, async (session) => {
        await this.run(cmd.policyPcr(session.handle, pcrs));
        session.attributes = TPMA_SESSION.continueSession | TPMA_SESSION.encrypt;
        return this.run(cmd.unseal(item), [{ session }]);
      }),
    );
  }

  /** Transient objects currently loaded (should be zero between operations). */
  async transientHandles(): Promise<number[]> {
    const { data } = await this.run(cmd.getCapability(TPM_CAP.HANDLES, HT_TRANSIENT << 24, 64));
    data.u32();
    const count = data.u32();
    return Array.from({ length: count }, () => data.u32());
  }

  async loadedSessions(): Promise<number[]> {
    const { data } = await this.run(cmd.getCapability(TPM_CAP.HANDLES, 0x02000000, 64));
    data.u32();
    const count = data.u32();
    return Array.from({ length: count }, () => data.u32());
  }

  /** Manufacturer and firmware, e.g. "IBM 20191023". */
  async identity(): Promise<string> {
    const { data } = await this.run(
      cmd.getCapability(TPM_CAP.TPM_PROPERTIES, TPM_PT.MANUFACTURER, 8),
    );
    data.u32();
    const count = data.u32();
    const props = new Map<number, number>();
    for (let i = 0; i < count; i++) props.set(data.u32(), data.u32());
    const ascii = (v: number | undefined): string =>
      v === undefined
        ? ''
        : Buffer.from([v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff])
            .toString('latin1')
            .replace(/\0/g, '')
            .trim();
    const fw1 = props.get(TPM_PT.FIRMWARE_VERSION_1) ?? 0;
    const fw2 = props.get(TPM_PT.FIRMWARE_VERSION_2) ?? 0;
    return `${ascii(props.get(TPM_PT.MANUFACTURER))} ${ascii(props.get(TPM_PT.VENDOR_STRING_1))}${ascii(props.get(TPM_PT.VENDOR_STRING_2))} firmware ${fw1 >>> 16}.${fw1 & 0xffff}.${fw2 >>> 16}`.trim();
  }

  /** An NV counter owned by the owner hierarchy; incremented once so it can be read. */
  async defineCounter(index: number): Promise<'created' | 'exists'> {
    let existing;
    try {
      existing = await this.run(cmd.nvReadPublic(index));
    } catch (e) {
      if (!(e instanceof TpmError && e.base === RC.HANDLE)) throw e;
    }
    if (existing) {
      checkCounter(existing);
      return 'exists';
    }
    // Not ORDERLY: an orderly counter may lose increments on an unclean shutdown.
    const attributes =
      TPMA_NV.TPM_NT_COUNTER |
      TPMA_NV.OWNERWRITE |
      TPMA_NV.OWNERREAD |
      TPMA_NV.AUTHREAD |
      TPMA_NV.AUTHWRITE |
      TPMA_NV.NO_DA;
    await this.run(cmd.nvDefineSpace(TPM_RH.OWNER, index, attributes, 8), [
      { session: passwordSession() },
    ]);
    await this.counterIncrement(index);
    return 'created';
  }

  async counterIncrement(index: number): Promise<void> {
    const pub = await this.run(cmd.nvReadPublic(index));
    checkCounter(pub);
    await this.run(cmd.nvIncrement(TPM_RH.OWNER, { handle: index, name: pub.name }), [
      { session: passwordSession() },
    ]);
  }

  async counterRead(index: number): Promise<bigint> {
    const pub = await this.run(cmd.nvReadPublic(index));
    checkCounter(pub);
    const value = await this.run(cmd.nvRead(TPM_RH.OWNER, { handle: index, name: pub.name }, 8), [
      { session: passwordSession() },
    ]);
    return value.readBigUInt64BE(0);
  }

  /**
   * Reads a whole NV index (owner-authorized, in chunks a TPM accepts), or undefined when the
   * index is not defined.
   */
  async nvReadAll(index: number): Promise<Buffer | undefined> {
    let pub;
    try {
      pub = await this.run(cmd.nvReadPublic(index));
    } catch (e) {
      if (e instanceof TpmError && e.base === RC.HANDLE) return undefined;
      throw e;
    }
    const chunks: Buffer[] = [];
    for (let offset = 0; offset < pub.dataSize; offset += 512) {
      const size = Math.min(512, pub.dataSize - offset);
      chunks.push(
        await this.run(cmd.nvRead(TPM_RH.OWNER, { handle: index, name: pub.name }, size, offset), [
          { session: passwordSession() },
        ]),
      );
    }
    return Buffer.concat(chunks);
  }

  close(): Promise<void> {
    return this.transport.close();
  }
}

/**
 * An anti-rollback counter must be a TPM counter index: only those are guaranteed never to go
 * down (a new one starts at the highest value any counter on this TPM has had). Someone who
 * deleted ours and put an ordinary index holding a chosen value in its place is caught here.
 */
export function checkCounter(pub: NvPublic): void {
  const type = (pub.attributes >> 4) & 0xf;
  if (type !== 1 || pub.attributes & TPMA_NV.ORDERLY || pub.dataSize !== 8) {
    throw new NvCounterError(
      `NV index 0x${pub.index.toString(16)} is not a non-orderly 8-byte counter (attributes 0x${pub.attributes.toString(16)})`,
    );
  }
}

export class NvCounterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NvCounterError';
  }
}
