/**
 * Attestation benchmark: evidence creation through the TPM vault (attestation
 * identity + quote + PCR read, as an attester answers a request) and verification by the pure
 * verifier, against tpm2-tools doing the nearest equivalent on the same swtpm in the same run
 * (tpm2_quote with a loaded AK; tpm2_checkquote). tpm2-tools starts a process per operation;
 * that is what a script using it pays, so it is reported as it is.
 *
 *   node test/bench/attestation.ts [--runs N] [--json]
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import {
  createEvidence,
  evidenceToJson,
  verifierPolicySchema,
  verifyEvidence,
} from '../../attestation/index.ts';
import type { TpmConfig } from '../../keyvault/config.ts';
import { openVault } from '../../keyvault/open.ts';
import { makeTempDir, startSwtpm } from '../fixtures/index.ts';

const exec = promisify(execFile);
const { values: args } = parseArgs({
  options: { runs: { type: 'string' }, json: { type: 'boolean' } },
});
const RUNS = Number(args.runs ?? 30);
if (!Number.isInteger(RUNS) || RUNS < 5) {
  process.stderr.write('bench: --runs must be an integer >= 5\n');
  process.exit(2);
}
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

async function time(runs: number, op: () => Promise<unknown>): Promise<number> {
  await op();
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await op();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)] ?? NaN;
}

const b64key = () => randomBytes(32).toString('base64').replace(/=+$/, '');
const dir = await makeTempDir('bench-attest');
const tpm = await startSwtpm({ ekCertificate: true });
const self = {
  userId: '@bench:example.org',
  deviceId: 'BENCH',
  ed25519: b64key(),
  curve25519: b64key(),
  masterKey: b64key(),
};
const verifier = { userId: '@auditor:example.org', deviceId: 'AUDIT' };
const config: TpmConfig = {
  backend: 'tpm',
  stateDir: join(dir, 'vault'),
  transport: { swtpm: { host: tpm.host, port: tpm.port, ctrlPort: tpm.ctrlPort } },
  pcrs: [16],
  owner: { userId: self.userId },
};
await writeFile(join(dir, 'vault.json'), JSON.stringify(config));
await exec(process.execPath, [
  join(import.meta.dirname, '../../keyvault/main.ts'),
  'init',
  '--config',
  join(dir, 'vault.json'),
]);
const vault = await openVault(config);
const policy = verifierPolicySchema.parse({ version: 1, ekRoots: [tpm.ekIssuer] });

const nonce = randomBytes(32);
const ours = {
  create: await time(RUNS, () => createEvidence(vault, { nonce, verifier, self, pcrs: PCRS })),
  verify: 0,
};
const evidence = await createEvidence(vault, { nonce, verifier, self, pcrs: PCRS });
const statement = JSON.stringify(evidenceToJson(evidence));
const now = Date.now();
ours.verify = await time(RUNS * 4, () =>
  verifyEvidence(statement, {
    nonce,
    issuedAt: now,
    now,
    verifier,
    expected: self,
    policy,
  }),
);
await vault.close();

// tpm2-tools on the same TPM: an AK made once, then tpm2_quote and tpm2_checkquote per run.
const env = { ...process.env, TPM2TOOLS_TCTI: tpm.tcti };
const tools = (tool: string, argv: string[]) => exec(tool, argv, { cwd: dir, env });
const flush = () => tools('tpm2_flushcontext', ['-t']);
await tools('tpm2_createek', ['-c', 'ek.ctx', '-G', 'rsa', '-u', 'ek.pub']);
await flush();
await tools('tpm2_createak', [
  '-C',
  'ek.ctx',
  '-c',
  'ak.ctx',
  '-G',
  'ecc',
  '-g',
  'sha256',
  '-s',
  'ecdsa',
  '-u',
  'ak.pub',
  '-f',
  'pem',
  '-n',
  'ak.name',
]);
await flush();
const qualification = randomBytes(32).toString('hex');
const quote = () =>
  tools('tpm2_quote', [
    '-c',
    'ak.ctx',
    '-l',
    `sha256:${PCRS.join(',')}`,
    '-q',
    qualification,
    '-m',
    'q.msg',
    '-s',
    'q.sig',
    '-o',
    'q.pcrs',
    '-g',
    'sha256',
  ]).then(flush);
const peer = {
  create: await time(RUNS, quote),
  verify: await time(RUNS, () =>
    tools('tpm2_checkquote', [
      '-u',
      'ak.pub',
      '-m',
      'q.msg',
      '-s',
      'q.sig',
      '-f',
      'q.pcrs',
      '-g',
      'sha256',
      '-q',
      qualification,
    ]),
  ),
};
await tpm.stop();

const rows = [
  {
    operation: 'evidence creation (attester: identity + quote + PCR read)',
    oursMs: ours.create,
    tpm2ToolsMs: peer.create,
    ratio: ours.create / peer.create,
  },
  {
    operation: 'verification (every check, incl. EK certificate chain)',
    oursMs: ours.verify,
    tpm2ToolsMs: peer.verify,
    ratio: ours.verify / peer.verify,
  },
];
if (args.json) {
  process.stdout.write(`${JSON.stringify({ runs: RUNS, rows }, null, 2)}\n`);
} else {
  process.stdout.write(`attestation benchmark, ${RUNS} runs, medians (swtpm; tpm2-tools 5.4)\n\n`);
  process.stdout.write(
    `${'operation'.padEnd(60)}${'ours ms'.padStart(10)}${'tpm2-tools ms'.padStart(15)}${'ratio'.padStart(8)}\n`,
  );
  for (const r of rows) {
    process.stdout.write(
      `${r.operation.padEnd(60)}${r.oursMs.toFixed(2).padStart(10)}${r.tpm2ToolsMs.toFixed(2).padStart(15)}${r.ratio.toFixed(2).padStart(8)}\n`,
    );
  }
  process.stdout.write(
    '\nratio = ours / tpm2-tools (below 1 is faster); tpm2-tools pays a process start per operation,\nand tpm2_checkquote checks the signature, nonce and PCR digest only (no EK chain, no binding).\n',
  );
}
