/**
 * Remote attestation between endpoints, over Olm-encrypted to-device messages: the
 * verifier's side (ask a peer device to prove its keys live in a genuine, measured TPM, check
 * the answer with the pure verifier in attestation/) and the attester's side (answer with a
 * quote from our vault). The protocol's messages, the verifier and the enrolment maths are in
 * attestation/; this file only carries them between the engine, the vault and the store.
 *
 * Who is asked and who answered come from the Olm layer, never from the message: a response is
 * taken only from the device the request went to, and the keys the quote must bind are the
 * ones the crypto core holds for that device (checked against the Olm sender key).
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import {
  ATTESTATION_PCRS_DEFAULT,
  AttestationCode,
  ChallengeBook,
  REQUEST_TYPE,
  RESPONSE_TYPE,
  type AttestationFailure,
  type AttesterIdentity,
  type ClockHistory,
  type VerifierPolicy,
  type PendingActivation,
  attestationRequest,
  attestationResponse,
  checkProof,
  createEvidence,
  enrolmentFor,
  statementAkName,
  evidenceToJson,
  verifyEvidence,
} from '../../attestation/index.ts';
import type { Vault } from '../../keyvault/vault.ts';
import type { CryptoEngine, PrivateToDeviceMessage } from '../crypto/engine.ts';
import type { AppState } from '../store/index.ts';

export interface AttestationView {
  userId: string;
  deviceId: string;
  state: 'passed' | 'failed' | 'pending';
  /** When the result was reached (ms since the epoch). */
  at: number;
  failures: AttestationFailure[];
  /** What a passing (or failing but signed) quote established. */
  facts?: {
    akName: string;
    enrolment: string;
    manufacturer?: string;
    pcrs: { pcr: number; digest: string }[];
    rebooted: boolean;
    eventLog: string;
  };
  /** The device keys the result is about: a result for other keys is stale. */
  deviceKeys?: { ed25519: string; curve25519: string };
}

const viewSchema: z.ZodType<AttestationView> = z.object({
  userId: z.string(),
  deviceId: z.string(),
  state: z.enum(['passed', 'failed', 'pending']),
  at: z.number(),
  failures: z.array(z.object({ code: z.string(), message: z.string() })) as z.ZodType<
    AttestationFailure[]
  >,
  facts: z
    .object({
      akName: z.string(),
      enrolment: z.string(),
      manufacturer: z.string().optional(),
      pcrs: z.array(z.object({ pcr: z.number(), digest: z.string() })),
      rebooted: z.boolean(),
      eventLog: z.string(),
    })
    .optional(),
  deviceKeys: z.object({ ed25519: z.string(), curve25519: z.string() }).optional(),
}) as z.ZodType<AttestationView>;
const historySchema = z.object({
  clock: z.string(),
  resetCount: z.number(),
  restartCount: z.number(),
});

export interface AttestationOptions {
  engine: CryptoEngine;
  vault: Pick<Vault, 'quote' | 'attestationIdentity' | 'activateCredential'>;
  /** Our AK certificate from an institution's attestation CA (DER), sent with our evidence. */
  akCertificate?: Uint8Array;
  state: AppState;
  self: { userId: string; deviceId: string };
  /** The verifier policy (endpoint config); without one we answer but never verify. */
  policy?: VerifierPolicy;
  /** PCRs we ask peers to quote. */
  pcrs?: number[];
  /** Our TCG event log, sent with our evidence (verifiers replay it against the quote). */
  eventLog?: Uint8Array;
  logger?: { warn(message: string): void };
  now?: () => number;
}

/**
 * Per asking device, at most ANSWER_BURST answers in ANSWER_WINDOW_MS: each costs a TPM quote
 * (or an activation). An attestation takes one or two requests (first contact: activation).
 */
const ANSWER_BURST = 4;
const ANSWER_WINDOW_MS = 10_000;
/** How long attest() waits for a peer: below the gateway's 30 s call deadline. */
const WAIT_MS = 20_000;

export class AttestationService {
  readonly #o: AttestationOptions;
  readonly #book: ChallengeBook;
  readonly #waiters = new Map<string, ((view: AttestationView) => void)[]>();
  readonly #answers = new Map<string, number[]>();
  readonly #listeners = new Set<(view: AttestationView) => void>();
  readonly #now: () => number;

  constructor(options: AttestationOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#book = new ChallengeBook((options.policy?.nonceTtlSeconds ?? 300) * 1000);
  }

  /** The to-device types the engine must pass on (encrypted only). */
  static readonly types: ReadonlySet<string> = new Set([REQUEST_TYPE, RESPONSE_TYPE]);

  onResult(listener: (view: AttestationView) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The last result for a peer device, if its keys are still the ones it was about. */
  async last(userId: string, deviceId: string): Promise<AttestationView | undefined> {
    const view = await this.#o.state.get(resultKey(userId, deviceId), viewSchema);
    if (!view) return undefined;
    const keys = await this.#o.engine.deviceKeys(userId, deviceId);
    if (
      view.deviceKeys &&
      (keys?.ed25519 !== view.deviceKeys.ed25519 || keys.curve25519 !== view.deviceKeys.curve25519)
    ) {
      return undefined; // the device's keys changed: re-attest
    }
    return view;
  }

  /**
   * Attests, in the background, each of these devices that is not attested now and has no
   * attempt in flight: an `attested-only` room asks for this when a send waits on them (a
   * first contact, an expired verdict, or keys that changed). Failures are recorded as usual.
   */
  attestMissing(devices: { userId: string; deviceId: string }[]): void {
    for (const d of devices.slice(0, 16)) {
      const key = peerKey(d.userId, d.deviceId);
      if (this.#waiters.has(key) || this.#book.pending(d.userId, d.deviceId)) continue;
      void this.attest(d.userId, d.deviceId).catch((e: unknown) => {
        this.#o.logger?.warn(
          `attestation: attesting ${d.userId} ${d.deviceId} failed (${e instanceof Error ? e.message : 'error'})`,
        );
      });
    }
  }

  /** Whether a peer device holds a fresh passing result (for `attested-only` room rules). */
  async isAttested(userId: string, deviceId: string): Promise<boolean> {
    const view = await this.last(userId, deviceId);
    const ttl = (this.#o.policy?.resultTtlSeconds ?? 86_400) * 1000;
    return view?.state === 'passed' && this.#now() - view.at <= ttl;
  }

  /**
   * Asks a peer device for evidence and waits for the verdict (or a timeout). A first contact
   * whose AK is known only by its EK certificate takes a second round trip: credential
   * activation, then the verdict.
   */
  async attest(userId: string, deviceId: string): Promise<AttestationView> {
    const policy = this.#o.policy;
    if (!policy) {
      return this.#record({
        userId,
        deviceId,
        state: 'failed',
        at: this.#now(),
        failures: [
          {
            code: AttestationCode.PolicyInvalid,
            message: 'no verifier policy is configured (attestation.policy in the endpoint config)',
          },
        ],
      });
    }
    const keys = await this.#o.engine.deviceKeys(userId, deviceId);
    if (!keys) {
      return this.#record({
        userId,
        deviceId,
        state: 'failed',
        at: this.#now(),
        failures: [{ code: AttestationCode.WrongSubject, message: 'no such device is known' }],
      });
    }
    const result = new Promise<AttestationView>((resolve) => {
      const list = this.#waiters.get(peerKey(userId, deviceId)) ?? [];
      list.push(resolve);
      this.#waiters.set(peerKey(userId, deviceId), list);
    });
    await this.#request(userId, deviceId);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<AttestationView>((resolve) => {
      timer = setTimeout(() => {
        resolve({
          userId,
          deviceId,
          state: 'failed',
          at: this.#now(),
          failures: [
            {
              code: AttestationCode.NoAnswer,
              message: `the device did not answer within ${WAIT_MS / 1000} s`,
            },
          ],
        });
      }, WAIT_MS);
    });
    try {
      return await Promise.race([result, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Our own evidence, for a verifier of our choosing (offline checks, the CLI). */
  async ownEvidence(
    nonce: Uint8Array,
    verifier: { userId: string; deviceId: string },
  ): Promise<string> {
    const evidence = await createEvidence(this.#o.vault, {
      nonce,
      verifier,
      self: await this.#selfIdentity(),
      pcrs: this.#o.pcrs ?? ATTESTATION_PCRS_DEFAULT,
      ...(this.#o.eventLog ? { eventLog: this.#o.eventLog } : {}),
      ...(this.#o.akCertificate ? { akCertificate: this.#o.akCertificate } : {}),
    });
    return JSON.stringify(evidenceToJson(evidence));
  }

  /** Credential activation for an attestation CA (the vault answers the proof). */
  activate(request: {
    credentialBlob: Uint8Array;
    encryptedSecret: Uint8Array;
    challengeId: string;
  }): Promise<Uint8Array> {
    return this.#o.vault.activateCredential(request);
  }

  async handle(messages: PrivateToDeviceMessage[]): Promise<void> {
    for (const m of messages) {
      try {
        if (m.type === REQUEST_TYPE) await this.#answer(m);
        else if (m.type === RESPONSE_TYPE) await this.#receive(m);
      } catch (e) {
        this.#o.logger?.warn(
          `attestation: ${m.type} from ${m.sender} ${m.senderDevice} failed (${e instanceof Error ? e.message : 'error'})`,
        );
      }
    }
  }

  async #request(userId: string, deviceId: string, activation?: PendingActivation): Promise<void> {
    const pcrs = [...(this.#o.pcrs ?? ATTESTATION_PCRS_DEFAULT)];
    const challenge = this.#book.issue(
      userId,
      deviceId,
      pcrs,
      this.#now(),
      activation && {
        challengeId: activation.challengeId,
        credential: activation.credential,
        akName: activation.akName,
        ekSha256: activation.ekSha256,
      },
    );
    await this.#o.engine.sendEncryptedToDevice(
      userId,
      deviceId,
      REQUEST_TYPE,
      {
        request_id: challenge.requestId,
        nonce: challenge.nonce.toString('base64'),
        pcrs,
        ...(activation
          ? {
              activation: {
                challenge_id: activation.challengeId,
                credential_blob: activation.credentialBlob.toString('base64'),
                encrypted_secret: activation.encryptedSecret.toString('base64'),
              },
            }
          : {}),
      },
      `mte.att.${randomBytes(12).toString('hex')}`,
    );
  }

  /** The attester's side: quote for whoever asked, over the keys Olm says they have. */
  async #answer(m: PrivateToDeviceMessage): Promise<void> {
    const parsed = attestationRequest.safeParse(m.content);
    if (!parsed.success) return; // malformed: no answer (nothing to bind an error to)
    const request = parsed.data;
    const peer = peerKey(m.sender, m.senderDevice);
    const now = this.#now();
    const recent = (this.#answers.get(peer) ?? []).filter((t) => now - t < ANSWER_WINDOW_MS);
    const reply = (content: Record<string, unknown>) =>
      this.#o.engine.sendEncryptedToDevice(
        m.sender,
        m.senderDevice,
        RESPONSE_TYPE,
        { request_id: request.request_id, ...content },
        `mte.att.${randomBytes(12).toString('hex')}`,
      );
    if (recent.length >= ANSWER_BURST) {
      await reply({
        error: { code: 'RATE_LIMITED', message: `at most ${ANSWER_BURST} answers in 10 s` },
      });
      return;
    }
    recent.push(now);
    this.#answers.set(peer, recent);
    if (this.#answers.size > 1024) this.#answers.delete(this.#answers.keys().next().value ?? '');
    try {
      let activation: { challenge_id: string; proof: string } | undefined;
      if (request.activation) {
        // The vault answers with the proof; the credential never reaches this process.
        const proof = await this.#o.vault.activateCredential({
          credentialBlob: Buffer.from(request.activation.credential_blob, 'base64'),
          encryptedSecret: Buffer.from(request.activation.encrypted_secret, 'base64'),
          challengeId: request.activation.challenge_id,
        });
        activation = {
          challenge_id: request.activation.challenge_id,
          proof: Buffer.from(proof).toString('base64'),
        };
      }
      const evidence = await createEvidence(this.#o.vault, {
        nonce: Buffer.from(request.nonce, 'base64'),
        verifier: { userId: m.sender, deviceId: m.senderDevice },
        self: await this.#selfIdentity(),
        pcrs: request.pcrs,
        ...(this.#o.eventLog ? { eventLog: this.#o.eventLog } : {}),
        ...(this.#o.akCertificate ? { akCertificate: this.#o.akCertificate } : {}),
      });
      await reply({
        evidence: JSON.stringify(evidenceToJson(evidence)),
        ...(activation ? { activation } : {}),
      });
    } catch (e) {
      const code =
        typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string'
          ? e.code
          : 'ATTESTATION_FAILED';
      await reply({
        error: {
          code: /^[A-Z][A-Z0-9_]{0,63}$/.test(code) ? code : 'ATTESTATION_FAILED',
          message: 'this endpoint cannot produce evidence right now',
        },
      });
    }
  }

  /** The verifier's side: a response from the device we asked. */
  async #receive(m: PrivateToDeviceMessage): Promise<void> {
    const parsed = attestationResponse.safeParse(m.content);
    if (!parsed.success) return;
    const response = parsed.data;
    const now = this.#now();
    const taken = this.#book.take(
      response.request_id,
      { userId: m.sender, deviceId: m.senderDevice },
      now,
    );
    if (!taken.ok) {
      // An answer to nobody's question (replayed, late, or from another device) decides
      // nothing; recorded only when it concerns a device we are waiting for, and no newer
      // question to it is still open (a stale answer must not fail the fresh attempt).
      const newer = this.#book.pending(m.sender, m.senderDevice);
      if (!newer && this.#waiters.has(peerKey(m.sender, m.senderDevice))) {
        await this.#finish({
          userId: m.sender,
          deviceId: m.senderDevice,
          state: 'failed',
          at: now,
          failures: [{ code: taken.code, message: taken.message }],
        });
      }
      return;
    }
    const { challenge } = taken;
    const base = { userId: m.sender, deviceId: m.senderDevice, at: now };
    if ('error' in response) {
      challenge.activation?.credential.fill(0);
      await this.#finish({
        ...base,
        state: 'failed',
        failures: [
          {
            code: AttestationCode.PeerRefused,
            message: `the device refused: ${response.error.code}`,
          },
        ],
      });
      return;
    }
    const policy = this.#o.policy;
    const keys = await this.#o.engine.deviceKeys(m.sender, m.senderDevice);
    if (!policy || !keys?.masterKey) {
      await this.#finish({
        ...base,
        state: 'failed',
        failures: [
          {
            code: AttestationCode.DeviceKeysMismatch,
            message: 'the device or its cross-signing identity is not known',
          },
        ],
      });
      return;
    }
    const failures: AttestationFailure[] = [];
    if (keys.curve25519 !== m.senderCurve25519) {
      failures.push({
        code: AttestationCode.DeviceKeysMismatch,
        message: "the answer's Olm sender key is not the device's",
      });
    }
    // Credential activation: the proof shows the AK we named sits on the EK's TPM.
    const enrolled = new Map<string, string>();
    for (const k of await this.#o.state.keys()) {
      if (!k.startsWith(ENROLLED)) continue;
      const ek = await this.#o.state.get(k, z.string()).catch(() => undefined);
      if (ek) enrolled.set(k.slice(ENROLLED.length), ek);
    }
    if (challenge.activation) {
      const a = challenge.activation;
      const proof = response.activation;
      const good =
        proof !== undefined &&
        proof.challenge_id === a.challengeId &&
        checkProof({
          credential: a.credential,
          akName: Buffer.from(a.akName, 'hex'),
          challengeId: a.challengeId,
          proof: Buffer.from(proof.proof, 'base64'),
        });
      a.credential.fill(0);
      if (good) {
        await this.#o.state.put(`${ENROLLED}${a.akName}`, a.ekSha256);
        enrolled.set(a.akName, a.ekSha256);
      } else {
        failures.push({
          code: AttestationCode.AkNotEnrolled,
          message: 'credential activation failed: the AK is not on the TPM that holds this EK',
        });
      }
    }
    const expected: AttesterIdentity = {
      userId: m.sender,
      deviceId: m.senderDevice,
      ed25519: keys.ed25519,
      curve25519: keys.curve25519,
      masterKey: keys.masterKey,
    };
    const historyKey = (ak: string) => `${HISTORY}${ak}`;
    const claimedAk = statementAkName(response.evidence);
    const h =
      claimedAk === undefined
        ? undefined
        : await this.#o.state.get(historyKey(claimedAk), historySchema).catch(() => undefined);
    const history: ClockHistory | undefined = h && {
      clock: BigInt(h.clock),
      resetCount: h.resetCount,
      restartCount: h.restartCount,
    };
    const result = await verifyEvidence(response.evidence, {
      nonce: challenge.nonce,
      issuedAt: challenge.issuedAt,
      now,
      verifier: this.#o.self,
      expected,
      policy,
      enrolled,
      ...(history ? { history } : {}),
    });
    failures.push(...result.failures);

    // First contact: the EK is trusted but the AK is not yet enrolled. Run the activation
    // round trip (once: a second AK_NOT_ENROLLED after an activation is a failure).
    const onlyEnrolment =
      failures.length > 0 && failures.every((f) => f.code === AttestationCode.AkNotEnrolled);
    if (onlyEnrolment && !challenge.activation && result.evidence && result.facts) {
      const enrolment = await enrolmentFor(result.evidence, result.facts.akName, policy, now);
      if (enrolment.ok) {
        await this.#request(m.sender, m.senderDevice, enrolment.activation);
        return;
      }
      failures.push(...enrolment.failures);
    }
    if (result.ok && failures.length === 0 && result.facts) {
      await this.#o.state.put(historyKey(result.facts.akName), {
        clock: result.facts.clock.clock.toString(),
        resetCount: result.facts.clock.resetCount,
        restartCount: result.facts.clock.restartCount,
      });
    }
    await this.#finish({
      ...base,
      state: failures.length === 0 ? 'passed' : 'failed',
      failures,
      ...(result.facts
        ? {
            facts: {
              akName: result.facts.akName,
              enrolment: result.facts.enrolment,
              ...(result.facts.manufacturer ? { manufacturer: result.facts.manufacturer } : {}),
              pcrs: result.facts.pcrs,
              rebooted: result.facts.rebooted,
              eventLog: result.facts.eventLog,
            },
          }
        : {}),
      deviceKeys: { ed25519: keys.ed25519, curve25519: keys.curve25519 },
    });
  }

  async #selfIdentity(): Promise<AttesterIdentity> {
    const keys = await this.#o.engine.deviceKeys(this.#o.self.userId, this.#o.self.deviceId);
    if (!keys?.masterKey) {
      throw new Error('our own device keys or cross-signing identity are not known yet');
    }
    return { ...this.#o.self, ...keys, masterKey: keys.masterKey };
  }

  async #finish(view: AttestationView): Promise<void> {
    await this.#record(view);
    const waiters = this.#waiters.get(peerKey(view.userId, view.deviceId)) ?? [];
    this.#waiters.delete(peerKey(view.userId, view.deviceId));
    for (const w of waiters) w(view);
  }

  async #record(view: AttestationView): Promise<AttestationView> {
    await this.#o.state.put(resultKey(view.userId, view.deviceId), view);
    for (const l of [...this.#listeners]) l(view);
    return view;
  }
}

const ENROLLED = 'attestation/enrolled/';
const HISTORY = 'attestation/history/';

function peerKey(userId: string, deviceId: string): string {
  return `${userId}\u0000${deviceId}`;
}

function resultKey(userId: string, deviceId: string): string {
  return `attestation/result/${encodeURIComponent(userId)}/${encodeURIComponent(deviceId)}`;
}
