import * as cmd from './commands.ts';
import { HT_TRANSIENT, TPM_CAP, TPM_PT, TPM_RH, TPMA_NV, TPMA_SESSION } from './constants.ts';
import { type Authorization, type Command, type HandleArg, execute } from './execute.ts';
import { RC, TpmError } from './rc.ts';
import { type Session, passwordSession, saltedSessionRequest } from './session.ts';
import { type CreatedObject, type KeyBlobs, type NvPublic } from './commands.ts';
import { srkTemplate } from './structures.ts';
import { type TpmTransport, TpmTransportError } from './transport/index.ts';

/**
 * How long one command may take before the TPM counts as not answering (frozen or busy). Far
 * below the vault RPC's deadlines (the client's 10 s, the server's 60 s), so a frozen TPM is
 * reported as such rather than as a generic RPC timeout. Common TPMs answer the commands the
 * vault sends at run time (ECC primaries, loads, sessions, NV, RSA signatures) in well under a
 * second: 5 s is a wide margin, and still leaves the RPC client time to hear the answer.
 */
export const COMMAND_TIMEOUT_MS = 5_000;
/** For commands marked slow: RSA key generation (provisioning only) can take a TPM ~a minute. */
export const SLOW_COMMAND_TIMEOUT_MS = 120_000;

export interface TpmClientOptions {
  commandTimeoutMs?: number;
  slowCommandTimeoutMs?: number;
}

/**
 * The attributes of a vault's anti-rollback counter: a counter index (only ever goes up), not
 * ORDERLY (an orderly counter may lose increments on an unclean shutdown), written and read
 * with the index's own authValue (only the vault that defined it knows it; not OWNERWRITE, so
 * the owner hierarchy's usually empty auth cannot move it), readable by the owner as well (so
 * tpm2_nvread -C o can check it), and NO_DA: a wrong authValue must not push the whole TPM
 * towards dictionary-attack lockout (the authValue is 32 random bytes: nothing to guess).
 */
export const COUNTER_ATTRIBUTES =
  TPMA_NV.TPM_NT_COUNTER | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA;

/** An NV index as commands name it: its handle and its current Name. */
export interface NvRef {
  handle: number;
  name: Uint8Array;
}

/**
 * A TPM 2.0 client over any transport. Every transient object and session it creates is
 * flushed in a finally block, because swtpm (and /dev/tpm0) have no resource manager: a leak
 * would end in "out of object memory" on a long run.
 *
 * Every command has a deadline (COMMAND_TIMEOUT_MS). After one passes, the client stops
 * flushing (the TPM is not answering; each flush would wait out another deadline) and, before
 * its next command, flushes whatever transient objects and sessions the TPM still holds:
 * the commands it gave up on may have run late, and nobody else owns what they made (swtpm
 * serves one connection at a time; /dev/tpmrm0 shows each file only its own handles).
 */
export class TpmClient {
  readonly transport: TpmTransport;
  readonly commandTimeoutMs: number;
  readonly slowCommandTimeoutMs: number;
  #abandoned = false;
  #recovering = false;

  constructor(transport: TpmTransport, options: TpmClientOptions = {}) {
    this.transport = transport;
    this.commandTimeoutMs = options.commandTimeoutMs ?? COMMAND_TIMEOUT_MS;
    this.slowCommandTimeoutMs = options.slowCommandTimeoutMs ?? SLOW_COMMAND_TIMEOUT_MS;
  }

  async run<R>(
    command: Command<R>,
    auths: Authorization[] = [],
    extra: Session[] = [],
  ): Promise<R> {
    if (this.#abandoned && !this.#recovering) await this.#recover();
    try {
      return await execute(this.transport, command, auths, extra, {
        timeoutMs: command.slow ? this.slowCommandTimeoutMs : this.commandTimeoutMs,
      });
    } catch (e) {
      if (e instanceof TpmTransportError && e.code === 'TPM_TIMEOUT') this.#abandoned = true;
      throw e;
    }
  }

  async #recover(): Promise<void> {
    this.#recovering = true;
    try {
      await this.flushLeftovers();
      this.#abandoned = false;
    } finally {
      this.#recovering = false;
    }
  }

  /**
   * Flushes every transient object and loaded session the TPM holds. Only for a TPM this
   * client has to itself (swtpm's one connection, /dev/tpm0's one open; /dev/tpmrm0 shows a
   * connection only its own handles): what is there then was left by a process that died
   * before its finally blocks ran (a killed vault), and nothing can use it any more, while
   * the TPM's few object slots (3 in swtpm) stay taken until it is reset.
   */
  async flushLeftovers(): Promise<void> {
    const leftovers = [...(await this.transientHandles()), ...(await this.loadedSessions())];
    for (const handle of leftovers) await this.flush(handle);
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
    // The TPM did not answer a moment ago: the next command flushes everything left over.
    if (this.#abandoned && !this.#recovering) return;
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

  /**
   * The storage primary for the duration of `use`: tpm2-tools' default SRK, or with `unique`
   * a vault's own (see srkTemplate).
   */
  withSrk<R>(use: (srk: CreatedObject) => Promise<R>, unique?: Uint8Array): Promise<R> {
    return this.withPrimary(TPM_RH.OWNER, srkTemplate(unique), use);
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

  /**
   * Creates a key under the SRK (nothing secret goes in; the TPM generates it). Key generation
   * (RSA above all) may take a TPM long: this command gets the slow deadline.
   */
  createKey(srk: CreatedObject, template: Uint8Array): Promise<KeyBlobs> {
    return this.withSession('hmac', srk, (session) =>
      this.run({ ...cmd.create({ handle: srk.handle, name: srk.name }, template), slow: true }, [
        { session },
      ]),
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

  /** An NV index's public area and Name, or undefined when no such index is defined. */
  async nvPublic(index: number): Promise<NvPublic | undefined> {
    try {
      return await this.run(cmd.nvReadPublic(index));
    } catch (e) {
      if (e instanceof TpmError && e.base === RC.HANDLE) return undefined;
      throw e;
    }
  }

  /**
   * Defines a counter at `index` with COUNTER_ATTRIBUTES and `authValue` (at most 32 bytes),
   * then increments it once (a counter cannot be read before). The owner authorizes the
   * definition through a session salted to `saltKey`, and the authValue, the command's first
   * parameter, crosses the bus encrypted. Answers the public area after the first increment
   * (TPMA_NV_WRITTEN set: the Name the index keeps from then on). An index that exists
   * already fails with TPM_RC_NV_DEFINED: nothing is adopted.
   */
  async defineCounter(
    index: number,
    authValue: Uint8Array,
    saltKey: CreatedObject,
  ): Promise<NvPublic> {
    await this.withSession('hmac', saltKey, (session) => {
      session.attributes = TPMA_SESSION.continueSession | TPMA_SESSION.decrypt;
      return this.run(cmd.nvDefineSpace(TPM_RH.OWNER, index, COUNTER_ATTRIBUTES, 8, authValue), [
        { session },
      ]);
    });
    const defined = await this.nvPublic(index);
    if (!defined)
      throw new Error(`NV index 0x${index.toString(16)} vanished right after TPM2_NV_DefineSpace`);
    await this.counterIncrement({ handle: index, name: defined.name }, authValue, saltKey);
    const written = await this.nvPublic(index);
    if (!written)
      throw new Error(`NV index 0x${index.toString(16)} vanished after its first increment`);
    return written;
  }

  /**
   * Increments a counter authorized by its own authValue, in an HMAC session salted to
   * `saltKey`: the authValue itself never crosses the bus, and a different index in its place
   * (whatever its public area) fails the HMAC check (TPM_RC_BAD_AUTH).
   */
  counterIncrement(ref: NvRef, authValue: Uint8Array, saltKey: CreatedObject): Promise<void> {
    return this.withSession('hmac', saltKey, (session) =>
      this.run(cmd.nvIncrement(ref, ref), [{ session, authValue }]),
    );
  }

  /**
   * Reads a counter with its own authValue (as counterIncrement): the response HMAC, keyed
   * with the authValue, proves the value comes from the index that knows it.
   */
  async counterRead(ref: NvRef, authValue: Uint8Array, saltKey: CreatedObject): Promise<bigint> {
    const value = await this.withSession('hmac', saltKey, (session) =>
      this.run(cmd.nvRead(ref, ref, 8), [{ session, authValue }]),
    );
    if (value.length !== 8) throw new Error(`TPM2_NV_Read returned ${value.length} bytes, not 8`);
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
        await this.run(
          cmd.nvRead({ handle: TPM_RH.OWNER }, { handle: index, name: pub.name }, size, offset),
          [{ session: passwordSession() }],
        ),
      );
    }
    return Buffer.concat(chunks);
  }

  close(): Promise<void> {
    return this.transport.close();
  }
}
