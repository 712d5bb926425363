/**
 * `node attestation/main.ts`: remote attestation from a terminal.
 *
 * `verify` is the standalone verifier for institutions and researchers: it checks stored
 * evidence against a verifier policy with no Matrix connection and no endpoint, running the
 * same pure verifier an endpoint runs. `attest`, `status` and `evidence` are ordinary clients
 * of an endpoint's local API (the gateway's socket and a token with the `attestation`
 * capability), authorised and audited like any UI.
 */
import { createPrivateKey } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import { UsageError, parseCommandLine, pickCommand, runMain } from '../keyvault/common/cli-main.ts';
import { type GatewayTarget, gatewayRequest } from '../endpoint/untrusted/gateway/client.ts';
import { evidenceSchema } from './evidence.ts';
import { loadVerifierPolicy } from './policy-file.ts';
import { type AttesterIdentity, verifyEvidence } from './verify.ts';
import { enrolEndpoint } from './enrol-endpoint.ts';

const COMMANDS = {
  verify: 'check stored evidence against a verifier policy, offline',
  attest: "ask a contact's device to attest now (through the endpoint's API)",
  status: "a contact's device's last attestation verdict (through the API)",
  evidence: "this endpoint's own evidence for your nonce (through the API), to verify offline",
  enrol: 'an attestation CA enrols this endpoint: evidence, credential activation, AK certificate',
} as const;
type Command = keyof typeof COMMANDS;

const API_OPTIONS = `  --socket PATH       the gateway's Unix socket (default: api.sock)
  --token-file FILE   a file holding a token with the attestation capability (or set
                      MTE_TOKEN); never on the command line, where other users could read it`;

const HELP = `Usage: node attestation/main.ts COMMAND [ARGS] [OPTIONS]

Remote attestation: TPM evidence that an endpoint's device keys live in a genuine, measured TPM.

Commands:
${Object.entries(COMMANDS)
  .map(([name, what]) => `  ${name.padEnd(10)}${what}`)
  .join('\n')}

Options:
  --json        machine-readable output on stdout
  -h, --help    this text; "COMMAND --help" for one command

Exit status: 0 when the evidence passes (or the command succeeded), 1 when it fails, 2 for a
usage error.`;

const ENROL_HELP = `Usage: node attestation/main.ts enrol --policy FILE --subject FILE --ca-key FILE --ca-cert FILE --out FILE [OPTIONS]

Run by an institution's attestation CA against one endpoint's local API: asks for evidence
for a fresh nonce, checks it against the policy's EK roots and PCR rules (everything must pass
but the AK's enrolment itself), runs credential activation (the endpoint's vault proves the AK
is on the TPM of the certified EK), and only then issues an AK certificate (PEM) into FILE.
Set it as "attestation.akCertificate" in the endpoint's config; verifiers whose policy lists
this CA in "akRoots" then accept the AK without a round trip.

  --policy FILE           verifier policy with the EK roots (ekRoots) the CA trusts
  --subject FILE          the endpoint's device as the CA knows it (see verify --help)
  --ca-key FILE           the CA's private key (PKCS#8 PEM; RSA or ECDSA P-256/P-384)
  --ca-cert FILE          the CA's certificate (PEM)
  --dn TEXT               the certificate's subject (default "CN=attestation key of USER DEVICE")
  --days N                validity (default 365)
  --verifier USER:DEVICE  the CA's own identity bound into the evidence (default @ca:local:CA)
  --out FILE              where to write the AK certificate (PEM)
${API_OPTIONS}`;

const COMMAND_HELP: Record<Command, string> = {
  enrol: ENROL_HELP,
  verify: `Usage: node attestation/main.ts verify EVIDENCE --policy FILE --nonce B64 [OPTIONS]

Checks a stored evidence statement (JSON, attestation/README.md) with the verifier every
endpoint runs, and prints each failure with its code. Nothing is trusted for what the evidence
says about itself: give what you know independently.

  --policy FILE           the verifier policy (JSON: trusted EK roots and/or attestation CAs,
                          required PCRs and golden values)
  --nonce B64             the 32-byte nonce you chose when you asked for the evidence
  --subject FILE          the device as you know it: {"userId", "deviceId", "ed25519",
                          "curve25519", "masterKey"} (from its owner, or your own /keys/query);
                          without it the evidence's own claim is used, and the output says the
                          identity was not checked
  --verifier USER:DEVICE  who the evidence was made for (default: its own claim)
  --issued-at ISO         when you sent the nonce (default: now; the policy's nonceTtlSeconds
                          applies)
  --enrolled FILE         AKs enrolled by credential activation: {"<AK Name hex>": "<EK cert
                          SHA-256 hex>"}; offline, an AK is otherwise trusted only through an
                          attestation CA's certificate
  --json                  the verdict as JSON`,
  attest: `Usage: node attestation/main.ts attest USER DEVICE [--socket PATH] [--token-file FILE] [--json]

Asks USER's device DEVICE to attest over Matrix (Olm-encrypted to-device messages) and prints
the verdict. Takes up to 20 s; a first contact also runs credential activation.

${API_OPTIONS}`,
  status: `Usage: node attestation/main.ts status USER DEVICE [--socket PATH] [--token-file FILE] [--json]

The last verdict for USER's DEVICE (none if it never attested or its keys changed since).

${API_OPTIONS}`,
  evidence: `Usage: node attestation/main.ts evidence --nonce B64 --verifier USER:DEVICE [--out FILE] [--socket PATH] [--token-file FILE]

This endpoint's own evidence, bound to your nonce and to the verifier you name, as JSON (on
stdout, or in FILE). Check it with "verify".

${API_OPTIONS}`,
};

const subjectSchema = z
  .object({
    userId: z.string().min(1),
    deviceId: z.string().min(1),
    ed25519: z.string(),
    curve25519: z.string(),
    masterKey: z.string(),
  })
  .strict();
const enrolledSchema = z.record(
  z.string().regex(/^[0-9a-f]{68}$/),
  z.string().regex(/^[0-9a-f]{64}$/),
);

async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new UsageError(`cannot read the ${what} ${path}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${path}: not valid JSON`);
  }
}

function nonceOf(value: string | undefined): Buffer {
  if (value === undefined) throw new UsageError('--nonce B64 is required');
  const bytes = Buffer.from(value, 'base64');
  if (
    bytes.length !== 32 ||
    bytes.toString('base64') !== value.replace(/=*$/, '').padEnd(44, '=')
  ) {
    throw new UsageError('--nonce: expected 32 bytes in base64');
  }
  return bytes;
}

function pair(value: string, option: string): { userId: string; deviceId: string } {
  const at = value.lastIndexOf(':');
  // A user id has a colon itself (@user:server): the device id is after the last one.
  if (at <= 0 || !value.startsWith('@') || value.slice(0, at).indexOf(':') < 0) {
    throw new UsageError(`${option}: expected @user:server:DEVICE`);
  }
  return { userId: value.slice(0, at), deviceId: value.slice(at + 1) };
}

async function verify(args: string[], values: Record<string, string | boolean | undefined>) {
  const [file] = args;
  if (file === undefined) throw new UsageError('verify: give the evidence file');
  if (typeof values.policy !== 'string') throw new UsageError('verify: --policy FILE is required');
  const nonce = nonceOf(typeof values.nonce === 'string' ? values.nonce : undefined);
  const policy = await loadVerifierPolicy(values.policy);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    throw new UsageError(`cannot read the evidence ${file}`);
  }
  // The evidence's own claims stand in only for what the caller did not give; said so below.
  const claimed = (() => {
    try {
      const parsed = evidenceSchema.safeParse(JSON.parse(text));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  })();
  const unchecked: string[] = [];
  let expected: AttesterIdentity | undefined;
  if (typeof values.subject === 'string') {
    const parsed = subjectSchema.safeParse(await readJson(values.subject, 'subject'));
    if (!parsed.success)
      throw new Error(
        `${values.subject}: not a subject (userId, deviceId, ed25519, curve25519, masterKey)`,
      );
    expected = parsed.data;
  } else if (claimed) {
    expected = claimed.subject;
    unchecked.push('the device identity (no --subject): the evidence\u2019s own claim was used');
  }
  let verifier: { userId: string; deviceId: string } | undefined;
  if (typeof values.verifier === 'string') verifier = pair(values.verifier, '--verifier');
  else if (claimed) {
    verifier = claimed.verifier;
    unchecked.push('who it was made for (no --verifier): the evidence\u2019s own claim was used');
  }
  const enrolled = new Map<string, string>();
  if (typeof values.enrolled === 'string') {
    const parsed = enrolledSchema.safeParse(await readJson(values.enrolled, 'enrolment file'));
    if (!parsed.success)
      throw new Error(`${values.enrolled}: expected {"<AK Name hex>": "<EK cert SHA-256 hex>"}`);
    for (const [k, v] of Object.entries(parsed.data)) enrolled.set(k, v);
  }
  const issuedAt =
    typeof values['issued-at'] === 'string' ? Date.parse(values['issued-at']) : Date.now();
  if (!Number.isFinite(issuedAt)) throw new UsageError('--issued-at: expected an ISO date');
  const blank = { userId: '', deviceId: '' };
  const result = await verifyEvidence(text, {
    nonce,
    issuedAt,
    now: Date.now(),
    verifier: verifier ?? blank,
    expected: expected ?? { ...blank, ed25519: '', curve25519: '', masterKey: '' },
    policy,
    enrolled,
  });
  const verdict = {
    ok: result.ok,
    failures: result.failures,
    ...(result.facts
      ? {
          facts: {
            ...result.facts,
            clock: {
              clock: result.facts.clock.clock.toString(),
              resetCount: result.facts.clock.resetCount,
              restartCount: result.facts.clock.restartCount,
            },
          },
        }
      : {}),
    notCheckedIndependently: unchecked,
  };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(verdict, null, 2)}\n`);
  } else {
    process.stdout.write(result.ok ? 'PASSED\n' : 'FAILED\n');
    for (const f of result.failures) process.stdout.write(`  ${f.code}: ${f.message}\n`);
    if (result.facts) {
      process.stdout.write(
        `  AK ${result.facts.akName.slice(0, 16)}… trusted by ${result.facts.enrolment}` +
          `${result.facts.manufacturer ? `, TPM manufacturer ${result.facts.manufacturer}` : ''}\n`,
      );
      for (const p of result.facts.pcrs) process.stdout.write(`  PCR ${p.pcr}: ${p.digest}\n`);
    }
    for (const u of unchecked) process.stdout.write(`  warning: not checked independently: ${u}\n`);
  }
  return result.ok ? 0 : 1;
}

async function readToken(file: string | undefined): Promise<string> {
  let token = process.env.MTE_TOKEN;
  if (file !== undefined) {
    try {
      token = await readFile(file, 'utf8');
    } catch {
      throw new UsageError(`cannot read the token file ${file}`);
    }
  }
  token = token?.trim();
  if (!token) throw new UsageError('no token: give --token-file FILE or set MTE_TOKEN');
  return token;
}

async function api(
  target: GatewayTarget,
  token: string,
  method: string,
  path: string,
  body?: object,
): Promise<unknown> {
  let res;
  try {
    res = await gatewayRequest(target, path, {
      method,
      token,
      ...(body ? { body } : {}),
      timeoutMs: 45_000,
      maxResponseBytes: 1 << 20,
    });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      code === 'ENOENT' || code === 'ECONNREFUSED'
        ? 'cannot reach the gateway: is it running, and is --socket right?'
        : `the gateway request failed (${code ?? 'error'})`,
      { cause: e },
    );
  }
  let parsed: unknown;
  try {
    parsed = res.json();
  } catch {
    parsed = undefined;
  }
  if (res.status >= 400) {
    const error = z
      .object({ error: z.object({ code: z.string(), message: z.string() }) })
      .safeParse(parsed);
    throw new Error(
      error.success
        ? `${error.data.error.code}: ${error.data.error.message}`
        : `HTTP ${res.status}`,
    );
  }
  return parsed;
}

const verdictSchema = z.object({
  state: z.string(),
  failures: z.array(z.object({ code: z.string(), message: z.string() })),
  facts: z
    .object({ enrolment: z.string(), manufacturer: z.string().optional() })
    .loose()
    .optional(),
});

function printVerdict(json: boolean, value: unknown, who: string): number {
  const parsed = verdictSchema.safeParse(value);
  if (!parsed.success) throw new Error('the endpoint answered something that is not a verdict');
  if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else {
    process.stdout.write(`${who}: ${parsed.data.state.toUpperCase()}\n`);
    for (const f of parsed.data.failures) process.stdout.write(`  ${f.code}: ${f.message}\n`);
    if (parsed.data.facts) {
      process.stdout.write(`  AK trusted by ${parsed.data.facts.enrolment}\n`);
    }
  }
  return parsed.data.state === 'passed' ? 0 : 1;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, {
    help: { type: 'boolean', short: 'h' },
    json: { type: 'boolean' },
    policy: { type: 'string' },
    nonce: { type: 'string' },
    subject: { type: 'string' },
    verifier: { type: 'string' },
    'issued-at': { type: 'string' },
    enrolled: { type: 'string' },
    socket: { type: 'string' },
    'token-file': { type: 'string' },
    out: { type: 'string' },
    'ca-key': { type: 'string' },
    'ca-cert': { type: 'string' },
    dn: { type: 'string' },
    days: { type: 'string' },
  });
  const [name, ...args] = positionals;
  const picked = pickCommand(name === undefined ? [] : [name], values.help === true, {
    main: HELP,
    commands: COMMAND_HELP,
  });
  if ('help' in picked) {
    process.stdout.write(`${picked.help}\n`);
    return 0;
  }
  const json = values.json === true;
  if (picked.command === 'verify') {
    if (args.length !== 1) throw new UsageError('verify: give exactly one evidence file');
    return verify(args, values);
  }
  const target: GatewayTarget = { socketPath: values.socket ?? 'api.sock' };
  const token = await readToken(values['token-file']);
  if (picked.command === 'enrol') {
    if (args.length > 0) throw new UsageError('enrol: unexpected arguments');
    return enrol(target, token, values);
  }
  if (picked.command === 'evidence') {
    if (args.length > 0) throw new UsageError('evidence: unexpected arguments');
    const nonce = nonceOf(values.nonce).toString('base64');
    if (values.verifier === undefined)
      throw new UsageError('evidence: --verifier USER:DEVICE is required');
    const answer = z.object({ evidence: z.string() }).parse(
      await api(target, token, 'POST', '/v1/attestation/evidence', {
        nonce,
        verifier: pair(values.verifier, '--verifier'),
      }),
    );
    if (values.out) await writeFile(values.out, `${answer.evidence}\n`, { mode: 0o600 });
    else process.stdout.write(`${answer.evidence}\n`);
    return 0;
  }
  const [user, device, ...extra] = args;
  if (user === undefined || device === undefined || extra.length > 0) {
    throw new UsageError(`${picked.command}: give USER and DEVICE`);
  }
  const path = `/v1/contacts/${encodeURIComponent(user)}/devices/${encodeURIComponent(device)}/attestation`;
  if (picked.command === 'attest') {
    return printVerdict(json, await api(target, token, 'POST', path), `${user} ${device}`);
  }
  const last = z
    .object({ result: z.unknown().optional() })
    .parse(await api(target, token, 'GET', path));
  if (last.result === undefined) {
    process.stdout.write(
      json ? '{}\n' : `${user} ${device}: no verdict (never attested, or its keys changed)\n`,
    );
    return 1;
  }
  return printVerdict(json, last.result, `${user} ${device}`);
}

async function enrol(
  target: GatewayTarget,
  token: string,
  values: Record<string, string | boolean | undefined>,
): Promise<number> {
  const need = (name: string): string => {
    const v = values[name];
    if (typeof v !== 'string') throw new UsageError(`enrol: --${name} is required`);
    return v;
  };
  const policy = await loadVerifierPolicy(need('policy'));
  const subjectFile = need('subject');
  const parsed = subjectSchema.safeParse(await readJson(subjectFile, 'subject'));
  if (!parsed.success)
    throw new Error(
      `${subjectFile}: not a subject (userId, deviceId, ed25519, curve25519, masterKey)`,
    );
  const out = need('out');
  let caKey;
  try {
    caKey = createPrivateKey(await readFile(need('ca-key')));
  } catch {
    throw new UsageError('enrol: --ca-key is not a readable private key');
  }
  let caCert: string;
  try {
    caCert = await readFile(need('ca-cert'), 'utf8');
  } catch {
    throw new UsageError('enrol: cannot read --ca-cert');
  }
  const days = values.days === undefined ? 365 : Number(values.days);
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new UsageError('--days: 1 to 3650');
  const verifier =
    typeof values.verifier === 'string'
      ? pair(values.verifier, '--verifier')
      : { userId: '@ca:local', deviceId: 'CA' };
  const outcome = await enrolEndpoint(
    {
      evidence: async (nonce, v) =>
        z.object({ evidence: z.string() }).parse(
          await api(target, token, 'POST', '/v1/attestation/evidence', {
            nonce: Buffer.from(nonce).toString('base64'),
            verifier: v,
          }),
        ).evidence,
      activate: async (request) =>
        Buffer.from(
          z.object({ proof: z.string() }).parse(
            await api(target, token, 'POST', '/v1/attestation/activation', {
              credentialBlob: Buffer.from(request.credentialBlob).toString('base64'),
              encryptedSecret: Buffer.from(request.encryptedSecret).toString('base64'),
              challengeId: request.challengeId,
            }),
          ).proof,
          'base64',
        ),
    },
    {
      policy,
      expected: parsed.data,
      verifier,
      caKey,
      caCert,
      subject:
        typeof values.dn === 'string'
          ? values.dn
          : `CN=attestation key of ${parsed.data.userId} ${parsed.data.deviceId}`,
      validityDays: days,
    },
  );
  if (!outcome.ok) {
    if (values.json) process.stdout.write(`${JSON.stringify(outcome, null, 2)}\n`);
    else {
      process.stdout.write('NOT ENROLLED\n');
      for (const f of outcome.failures) process.stdout.write(`  ${f.code}: ${f.message}\n`);
    }
    return 1;
  }
  await writeFile(out, outcome.certificate.pem, { mode: 0o644 });
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ ok: true, akName: outcome.akName, notAfter: outcome.certificate.notAfter.toISOString(), out }, null, 2)}\n`,
    );
  } else {
    process.stdout.write(
      `ENROLLED: AK ${outcome.akName.slice(0, 16)}…, certificate in ${out} (until ${outcome.certificate.notAfter.toISOString()})\n`,
    );
  }
  return 0;
}

runMain('attestation', main);
