import { createHash, timingSafeEqual } from 'node:crypto';
import { formatZodIssues } from '../keyvault/common/zod-issues.ts';
import { qualifyingData } from './binding.ts';
import { type AttestationFailure, AttestationCode as C } from './codes.ts';
import { type Evidence, MAX_EVIDENCE_BYTES, evidenceSchema } from './evidence.ts';
import type { VerifierPolicy } from './policy.ts';
import { checkAkTrust } from './trust.ts';
import { checkEventLog } from './measured.ts';
import {
  type AkPublic,
  type QuoteAttest,
  TpmParseError,
  akAttributeProblems,
  parseAkPublic,
  parseQuoteAttest,
  sha256Selection,
  verifyQuoteSignature,
} from './tpm/index.ts';

/**
 * The verifier: pure (no I/O, no clock of its own, no randomness), so an institution can run
 * exactly what an endpoint runs over stored evidence, and a test can show each refusal. It
 * checks everything itself, from the raw bytes the TPM produced; nothing the evidence says
 * about itself is believed until a check has tied it to the TPM's signature or to what the
 * verifier knows by other means.
 */
export interface AttesterIdentity {
  userId: string;
  deviceId: string;
  ed25519: string;
  curve25519: string;
  masterKey: string;
}

export interface ClockHistory {
  clock: bigint;
  resetCount: number;
  restartCount: number;
}

export interface VerifyContext {
  /** The nonce this verifier sent, and when (ms since the epoch). */
  nonce: Uint8Array;
  issuedAt: number;
  now: number;
  verifier: { userId: string; deviceId: string };
  /** Who answered, as the verifier knows them: the Olm sender and its device keys. */
  expected: AttesterIdentity;
  policy: VerifierPolicy;
  /** The last accepted clock of this AK, to refuse a TPM whose counters went backwards. */
  history?: ClockHistory;
  /** AKs enrolled by credential activation: AK Name (hex) → SHA-256 (hex) of the EK certificate. */
  enrolled?: ReadonlyMap<string, string>;
}

export interface VerifiedFacts {
  akName: string;
  /** How the AK is known to be in a genuine TPM. */
  enrolment: 'ak-certificate' | 'credential-activation' | 'none';
  ekCertificateSha256?: string;
  manufacturer?: string;
  pcrs: { pcr: number; digest: string }[];
  clock: ClockHistory;
  firmwareVersion: string;
  /** The TPM was reset (rebooted) since the last accepted quote. */
  rebooted: boolean;
  eventLog: 'replayed' | 'absent';
}

export interface VerifyResult {
  ok: boolean;
  failures: AttestationFailure[];
  /** What the evidence established; present once the quote's signature verified. */
  facts?: VerifiedFacts;
  /** The parsed statement (for the enrolment step, which needs its EK certificate). */
  evidence?: Evidence;
}

const fail = (failures: AttestationFailure[]): VerifyResult => ({ ok: false, failures });

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function parseStatement(
  input: string | Uint8Array,
): { evidence: Evidence } | { failure: AttestationFailure } {
  const size = typeof input === 'string' ? Buffer.byteLength(input, 'utf8') : input.byteLength;
  if (size > MAX_EVIDENCE_BYTES) {
    return {
      failure: {
        code: C.TooLarge,
        message: `the evidence is ${size} bytes; at most ${MAX_EVIDENCE_BYTES} are accepted`,
      },
    };
  }
  let json: unknown;
  try {
    json = JSON.parse(typeof input === 'string' ? input : Buffer.from(input).toString('utf8'));
  } catch {
    return { failure: { code: C.Malformed, message: 'the evidence is not JSON' } };
  }
  const parsed = evidenceSchema.safeParse(json);
  if (!parsed.success) {
    return {
      failure: {
        code: C.Malformed,
        message: `the evidence is malformed: ${formatZodIssues(parsed.error)}`,
      },
    };
  }
  return { evidence: parsed.data };
}

/**
 * The Name of the AK a statement carries, before any check: to look up what this verifier
 * keeps per AK (its last clock) so the statement is verified once, with that history.
 * Nothing is believed from it; undefined when the statement does not parse.
 */
export function statementAkName(input: string | Uint8Array): string | undefined {
  const statement = parseStatement(input);
  if ('failure' in statement) return undefined;
  try {
    return parseAkPublic(statement.evidence.ak.public).name.toString('hex');
  } catch {
    return undefined;
  }
}

export async function verifyEvidence(
  input: string | Uint8Array,
  ctx: VerifyContext,
): Promise<VerifyResult> {
  const statement = parseStatement(input);
  if ('failure' in statement) return fail([statement.failure]);
  const { evidence } = statement;
  const failures: AttestationFailure[] = [];

  // Freshness and subject: cheap, and the reasons a relayed or replayed statement fails.
  if (!same(evidence.nonce, ctx.nonce)) {
    failures.push({ code: C.NonceMismatch, message: 'the evidence answers a different challenge' });
  }
  if (ctx.now - ctx.issuedAt > ctx.policy.nonceTtlSeconds * 1000) {
    failures.push({
      code: C.NonceExpired,
      message: `the challenge expired (older than ${ctx.policy.nonceTtlSeconds} s)`,
    });
  }
  const s = evidence.subject;
  const e = ctx.expected;
  if (s.userId !== e.userId || s.deviceId !== e.deviceId) {
    failures.push({
      code: C.WrongSubject,
      message: `the evidence is about ${s.userId} ${s.deviceId}, not ${e.userId} ${e.deviceId}`,
    });
  }
  if (
    evidence.verifier.userId !== ctx.verifier.userId ||
    evidence.verifier.deviceId !== ctx.verifier.deviceId
  ) {
    failures.push({ code: C.WrongSubject, message: 'the evidence was made for another verifier' });
  }
  if (s.ed25519 !== e.ed25519 || s.curve25519 !== e.curve25519 || s.masterKey !== e.masterKey) {
    failures.push({
      code: C.DeviceKeysMismatch,
      message: "the evidence names device or master keys that are not this Matrix device's",
    });
  }

  let ak: AkPublic;
  try {
    ak = parseAkPublic(evidence.ak.public);
  } catch (err) {
    return fail([...failures, { code: C.AkMalformed, message: parseMessage(err, 'the AK') }]);
  }
  const attributeProblems = akAttributeProblems(ak.attributes);
  if (attributeProblems.length > 0) {
    failures.push({
      code: C.AkNotRestricted,
      message: `the AK is not a restricted TPM-resident signing key (${attributeProblems.join(', ')})`,
    });
  }
  let attest: QuoteAttest;
  try {
    attest = parseQuoteAttest(evidence.quote.attest);
  } catch (err) {
    return fail([
      ...failures,
      { code: C.AttestMalformed, message: parseMessage(err, 'the quote') },
    ]);
  }
  try {
    if (!verifyQuoteSignature(evidence.quote.attest, evidence.quote.signature, ak.key)) {
      return fail([
        ...failures,
        { code: C.SignatureInvalid, message: "the quote's signature does not verify with the AK" },
      ]);
    }
  } catch (err) {
    return fail([
      ...failures,
      { code: C.SignatureMalformed, message: parseMessage(err, 'the signature') },
    ]);
  }

  // From here on the TPMS_ATTEST is the TPM's word (if the AK is a TPM's: trust, below).
  const selection = sha256Selection(attest);
  const listed = evidence.pcrs.values.map((v) => v.pcr);
  const ascending = [...listed].sort((a, b) => a - b);
  if (
    !selection ||
    selection.length !== listed.length ||
    selection.some((p, i) => p !== ascending[i]) ||
    new Set(listed).size !== listed.length
  ) {
    failures.push({
      code: C.PcrSelectionMismatch,
      message: 'the listed PCRs are not the quoted SHA-256 selection',
    });
  }
  const binding = qualifyingData({
    nonce: ctx.nonce,
    verifier: ctx.verifier,
    attester: e,
    pcrs: selection ?? [],
    akName: ak.name,
  });
  if (!same(attest.extraData, binding)) {
    failures.push({
      code: C.BindingMismatch,
      message:
        "the quote's qualifying data does not bind this challenge, this verifier, this device's keys and this AK",
    });
  }
  const byPcr = new Map(evidence.pcrs.values.map((v) => [v.pcr, Buffer.from(v.digest)]));
  if (selection) {
    const digest = createHash('sha256');
    for (const p of selection) digest.update(byPcr.get(p) ?? Buffer.alloc(0));
    if (!same(digest.digest(), attest.pcrDigest)) {
      failures.push({
        code: C.PcrDigestMismatch,
        message: "the listed PCR values do not hash to the quote's PCR digest",
      });
    }
  }
  const missing = ctx.policy.pcrs.required.filter((p) => !selection?.includes(p));
  if (missing.length > 0) {
    failures.push({
      code: C.PcrRequiredMissing,
      message: `PCR ${missing.join(', ')} must be quoted`,
    });
  }
  for (const [pcrText, accepted] of Object.entries(ctx.policy.pcrs.golden)) {
    const pcr = Number(pcrText);
    const value = byPcr.get(pcr);
    if (!value) {
      failures.push({ code: C.PcrRequiredMissing, message: `PCR ${pcr} must be quoted` });
    } else if (!accepted.includes(value.toString('hex'))) {
      failures.push({
        code: C.PcrValueRejected,
        message: `PCR ${pcr} holds a value the policy does not accept`,
      });
    }
  }

  const clock: ClockHistory = {
    clock: attest.clock,
    resetCount: attest.resetCount,
    restartCount: attest.restartCount,
  };
  const h = ctx.history;
  if (h && wentBackwards(h, clock)) {
    failures.push({
      code: C.ClockWentBackwards,
      message: "the TPM's clock or reset counters are behind an earlier quote from this AK",
    });
  }

  const trust = await checkAkTrust(evidence, ak, ctx);
  failures.push(...trust.failures);
  const measured = checkEventLog(evidence, byPcr, selection ?? [], ctx.policy);
  failures.push(...measured.failures);

  const facts: VerifiedFacts = {
    akName: ak.name.toString('hex'),
    enrolment: trust.enrolment,
    ...(trust.ekCertificateSha256 ? { ekCertificateSha256: trust.ekCertificateSha256 } : {}),
    ...(trust.manufacturer ? { manufacturer: trust.manufacturer } : {}),
    pcrs: (selection ?? []).map((p) => ({
      pcr: p,
      digest: (byPcr.get(p) ?? Buffer.alloc(0)).toString('hex'),
    })),
    clock,
    firmwareVersion: `0x${attest.firmwareVersion.toString(16)}`,
    rebooted: h !== undefined && clock.resetCount > h.resetCount,
    eventLog: measured.replayed ? 'replayed' : 'absent',
  };
  return { ok: failures.length === 0, failures, facts, evidence };
}

function wentBackwards(before: ClockHistory, now: ClockHistory): boolean {
  if (now.resetCount !== before.resetCount) return now.resetCount < before.resetCount;
  if (now.restartCount !== before.restartCount) return now.restartCount < before.restartCount;
  return now.clock < before.clock;
}

function parseMessage(err: unknown, what: string): string {
  if (err instanceof TpmParseError) return `${what} does not parse (${err.message})`;
  return `${what} does not parse`;
}
