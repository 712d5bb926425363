/**
 * Keyvault benchmark (issue 3): median and p99 latency per operation and backend, and the
 * ratio of our TPM client to tpm2-tools doing the same operation on the same swtpm in the same
 * run. tpm2-tools starts a process per operation; that is what a shell script using it pays,
 * so it is reported as it is, not subtracted.
 *
 *   node test/bench/keyvault.ts [--runs N] [--json]
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify, parseArgs } from 'node:util';
import type { Pkcs11Config, TpmConfig } from '../../keyvault/config.ts';
import { TpmClient, pcrPolicyDigest, sealTemplate } from '../../keyvault/tpm/index.ts';
import { openTpmVault } from '../../keyvault/tpm/backend.ts';
import type { VaultBackend } from '../../keyvault/vault.ts';
import { startSoftHsm, startSwtpm } from '../fixtures/index.ts';
import { TEST_OWNER } from '../fixtures/sign-inputs.ts';

const exec = promisify(execFile);
const { values: args } = parseArgs({
  options: { runs: { type: 'string' }, json: { type: 'boolean' } },
});
const RUNS = Number(args.runs ?? 100);
if (!Number.isInteger(RUNS) || RUNS < 5) {
  process.stderr.write('bench: --runs must be an integer >= 5\n');
  process.exit(2);
}
const PCR = 16;

interface Row {
  operation: string;
  backend: string;
  medianMs: number;
  p99Ms: number;
  /** Ours divided by tpm2-tools (below 1 is faster). */
  ratioToTpm2Tools?: number;
}

async function time(
  runs: number,
  op: () => Promise<unknown>,
  untimedCleanup: () => Promise<unknown> = () => Promise.resolve(),
): Promise<{ median: number; p99: number }> {
  await op(); // warm-up
  await untimedCleanup();
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await op();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
    await untimedCleanup();
  }
  samples.sort((a, b) => a - b);
  const at = (q: number): number =>
    samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? NaN;
  return { median: at(0.5), p99: at(0.99) };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'mte-bench-'));
  const swtpm = await startSwtpm();
  const hsm = await startSoftHsm();
  const rows: Row[] = [];
  const add = (operation: string, backend: string, t: { median: number; p99: number }): void => {
    rows.push({ operation, backend, medianMs: t.median, p99Ms: t.p99 });
    if (!args.json)
      process.stderr.write(`  ${operation} (${backend}): median ${t.median.toFixed(2)} ms\n`);
  };
  try {
    const tpmConfig: TpmConfig = {
      backend: 'tpm',
      owner: { userId: TEST_OWNER },
      stateDir: join(dir, 'tpm'),
      transport: { swtpm: { host: swtpm.host, port: swtpm.port, ctrlPort: swtpm.ctrlPort } },
      pcrs: [PCR],
      nvCounterIndex: 0x01a0cafe,
    };
    const expensive = Math.max(5, Math.floor(RUNS / 5));

    const secret = randomBytes(32);
    const nonce = randomBytes(32);
    // tpm2-tools on the same swtpm (each operation is a process, as in a shell script).
    const env = { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti };
    const t2 = (...a: string[]): Promise<unknown> =>
      exec(a[0] ?? '', a.slice(1), { env, cwd: dir });
    // Without a resource manager, tpm2-tools leaves what it loads in the TPM: flush it between
    // operations, outside the timed part.
    const flush = async (): Promise<void> => {
      for (const what of ['-t', '-l', '-s']) await t2('tpm2_flushcontext', what);
    };
    await writeFile(join(dir, 'secret'), secret);
    await writeFile(join(dir, 'msg'), nonce);
    const seal = [
      'tpm2_create',
      '-Q',
      '-C',
      'srk.ctx',
      '-L',
      'pcr.policy',
      '-i',
      'secret',
      '-u',
      's.pub',
      '-r',
      's.priv',
    ];
    const ak = 'restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda';
    // Each operation's preparation runs just before it is measured, flushed after every step.
    const tools: [string, string[][], string[]][] = [
      [
        'seal 32 bytes to a PCR policy',
        [
          [
            'tpm2_createprimary',
            '-Q',
            '-C',
            'o',
            '-g',
            'sha256',
            '-G',
            'ecc256:aes128cfb',
            '-c',
            'srk.ctx',
          ],
          ['tpm2_pcrread', '-Q', `sha256:${PCR}`, '-o', 'pcr.bin'],
          [
            'tpm2_createpolicy',
            '-Q',
            '--policy-pcr',
            '-l',
            `sha256:${PCR}`,
            '-f',
            'pcr.bin',
            '-L',
            'pcr.policy',
          ],
        ],
        seal,
      ],
      [
        'unseal under the PCR policy',
        [
          seal,
          ['tpm2_load', '-Q', '-C', 'srk.ctx', '-u', 's.pub', '-r', 's.priv', '-c', 'sealed.ctx'],
        ],
        ['tpm2_unseal', '-Q', '-c', 'sealed.ctx', '-p', `pcr:sha256:${PCR}`],
      ],
      [
        'quote',
        [
          [
            'tpm2_createprimary',
            '-Q',
            '-C',
            'e',
            '-G',
            'ecc256:ecdsa-sha256:null',
            '-a',
            ak,
            '-c',
            'ak.ctx',
          ],
        ],
        [
          'tpm2_quote',
          '-Q',
          '-c',
          'ak.ctx',
          '-l',
          `sha256:${PCR}`,
          '-q',
          nonce.toString('hex'),
          '-m',
          'q.msg',
          '-s',
          'q.sig',
        ],
      ],
      [
        'RSA-PSS sign',
        [
          [
            'tpm2_create',
            '-Q',
            '-C',
            'srk.ctx',
            '-G',
            'rsa2048:rsapss-sha512:null',
            '-u',
            'r.pub',
            '-r',
            'r.priv',
          ],
          ['tpm2_load', '-Q', '-C', 'srk.ctx', '-u', 'r.pub', '-r', 'r.priv', '-c', 'rsa.ctx'],
        ],
        ['tpm2_sign', '-Q', '-c', 'rsa.ctx', '-g', 'sha512', '-s', 'rsapss', '-o', 'sig', 'msg'],
      ],
      [
        'counter increment',
        [
          [
            'tpm2_nvdefine',
            '-Q',
            '-C',
            'o',
            '-s',
            '8',
            '-a',
            'nt=counter|ownerwrite|ownerread|no_da',
            '0x01a0caff',
          ],
        ],
        ['tpm2_nvincrement', '-Q', '-C', 'o', '0x01a0caff'],
      ],
    ];
    const toolRuns = Math.max(5, Math.floor(RUNS / 4));
    for (const [operation, setup, argv] of tools) {
      for (const step of setup) {
        await t2(...step);
        await flush();
      }
      const t = await time(toolRuns, () => t2(...argv), flush);
      add(operation, 'tpm2-tools', t);
    }

    // Our TPM client, through the raw client for seal/unseal and the vault for the rest.
    const client = new TpmClient(await swtpm.connect());
    const values = await client.pcrRead([PCR]);
    const template = sealTemplate(
      pcrPolicyDigest(
        [PCR],
        values.map((v) => v.digest),
      ),
    );
    const blobs = await client.withSrk((srk) => client.seal(srk, secret, template));
    add(
      'seal 32 bytes to a PCR policy',
      'tpm',
      await time(RUNS, () => client.withSrk((srk) => client.seal(srk, secret, template))),
    );
    add(
      'unseal under the PCR policy',
      'tpm',
      await time(RUNS, () => client.withSrk((srk) => client.unseal(srk, blobs, [PCR]))),
    );
    await client.close();

    // The backends themselves, below openVault's purpose check (keyvault/purposes, microseconds
    // beside a signature): a nonce stands in for the key object the vault would insist on.
    const tpmVault = await openTpmVault(tpmConfig);
    await tpmVault.provision();
    add(
      'quote',
      'tpm',
      await time(RUNS, () => tpmVault.quote(nonce, { hash: 'sha256', pcrs: [PCR] })),
    );
    add(
      'Ed25519 sign (sealed seed, in-process)',
      'tpm',
      await time(RUNS, () => tpmVault.sign('cross-signing-master', nonce)),
    );
    add('RSA-PSS sign', 'tpm', await time(expensive, () => tpmVault.sign('x509-identity', nonce)));
    add('counter increment', 'tpm', await time(RUNS, () => tpmVault.counterIncrement()));
    await tpmVault.close();

    for (const r of rows.filter((row) => row.backend === 'tpm')) {
      const tools = rows.find(
        (row) => row.backend === 'tpm2-tools' && row.operation === r.operation,
      );
      if (tools) r.ratioToTpm2Tools = r.medianMs / tools.medianMs;
    }

    // PKCS#11 on SoftHSM2 (the backend is loaded only if it is present in this checkout).
    process.env.SOFTHSM2_CONF = hsm.env.SOFTHSM2_CONF;
    const { openPkcs11Vault } = await import('../../keyvault/pkcs11/index.ts');
    const pkcs11Config: Pkcs11Config = {
      backend: 'pkcs11',
      owner: { userId: TEST_OWNER },
      stateDir: join(dir, 'pkcs11'),
      module: hsm.modulePath,
      token: `pkcs11:token=${hsm.label}`,
      pin: { file: hsm.pinFile },
    };
    const p11: VaultBackend = await openPkcs11Vault(pkcs11Config);
    await p11.provision();
    add('Ed25519 sign', 'pkcs11', await time(RUNS, () => p11.sign('cross-signing-master', nonce)));
    add('RSA-PSS sign', 'pkcs11', await time(RUNS, () => p11.sign('x509-identity', nonce)));
    add('counter increment', 'pkcs11', await time(RUNS, () => p11.counterIncrement()));
    await p11.close();
  } finally {
    await swtpm.stop();
    await hsm.stop();
    await rm(dir, { recursive: true, force: true });
  }

  if (args.json) {
    process.stdout.write(`${JSON.stringify({ runs: RUNS, rows }, null, 2)}\n`);
    return;
  }
  const header = ['operation', 'backend', 'median ms', 'p99 ms', 'ours / tpm2-tools'];
  const table = rows.map((r) => [
    r.operation,
    r.backend,
    r.medianMs.toFixed(2),
    r.p99Ms.toFixed(2),
    r.ratioToTpm2Tools === undefined ? '' : r.ratioToTpm2Tools.toFixed(3),
  ]);
  const widths = header.map((h, i) =>
    Math.max(h.length, ...table.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: string[]): string =>
    cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ');
  process.stdout.write(
    `${line(header)}\n${line(widths.map((w) => '-'.repeat(w)))}\n${table.map(line).join('\n')}\n`,
  );
  process.stdout.write(
    '\nOurs seals and unseals through salted sessions with AES-CFB parameter encryption; tpm2-tools runs with its defaults and starts a process per operation.\n',
  );
  process.stdout.write(
    `${RUNS} runs per operation (RSA sign on the TPM: ${Math.max(5, Math.floor(RUNS / 5))}; tpm2-tools: ${Math.max(5, Math.floor(RUNS / 4))}).\n`,
  );
}

await main();
process.exit(0);
