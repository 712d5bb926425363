import { join } from 'node:path';
import { ESLint } from 'eslint';
import tseslint from 'typescript-eslint';
import { describe, expect, it } from 'vitest';
import { boundaries } from '../../eslint.boundaries.js';

const root = join(import.meta.dirname, '..', '..');
const eslint = new ESLint({
  cwd: root,
  overrideConfigFile: true,
  overrideConfig: [{ languageOptions: { parser: tseslint.parser } }, ...boundaries],
});

/** The boundary messages ESLint reports for one import line in a file at `path`. */
async function lint(path: string, specifier: string): Promise<string[]> {
  const [result] = await eslint.lintText(`import x from '${specifier}';\nexport default x;\n`, {
    filePath: join(root, path),
  });
  return (result?.messages ?? [])
    .filter((m) => m.ruleId === 'no-restricted-imports')
    .map((m) => m.message);
}

describe('lint: the compartments\' "never" arrows are errors', () => {
  it.each([
    ['endpoint/untrusted/gateway/app.ts', '../../../keyvault/vault.ts', /never import the vault/],
    ['endpoint/untrusted/gateway/routes/x.ts', '../../../../keyvault/tpm/backend.ts', /vault/],
    ['endpoint/untrusted/gateway/app.ts', '../../store/durable-store.ts', /endpoint core/],
    ['endpoint/untrusted/gateway/app.ts', '../../crypto/engine.ts', /endpoint core/],
    ['endpoint/untrusted/gateway/app.ts', '../../device.ts', /endpoint core/],
    ['endpoint/untrusted/cli/verify.ts', '../../service.ts', /endpoint core/],
    ['endpoint/untrusted/gateway/app.ts', '@matrix-org/matrix-sdk-crypto-wasm', /crypto engine/],
    ['endpoint/untrusted/gateway/app.ts', '../../../policy/load.ts', /never loads the policy/],
    ['keyvault/tpm/backend.ts', '../../endpoint/contract.ts', /vault never imports/],
    ['keyvault/server.ts', '../policy/index.ts', /vault never imports/],
    ['keyvault/common/lock.ts', '../vault.ts', /imports nothing of the compartments/],
    ['keyvault/common/rpc/server.ts', '../../config.ts', /imports nothing of the compartments/],
    ['policy/evaluate.ts', '../endpoint/crypto/settings.ts', /policy imports nothing of endpoint/],
    ['policy/audit.ts', '../keyvault/vault.ts', /policy never imports the vault/],
  ])('%s may not import %s', async (path, specifier, message) => {
    const messages = await lint(path, specifier);
    expect(messages).toHaveLength(1);
    expect(messages[0]).toMatch(message);
  });

  it.each([
    ['endpoint/untrusted/gateway/app.ts', '../../contract.ts'],
    ['endpoint/untrusted/gateway/routes/x.ts', '../../../../keyvault/common/rpc/index.ts'],
    ['endpoint/untrusted/gateway/app.ts', './routes/index.ts'],
    ['keyvault/tpm/backend.ts', '../common/rpc/index.ts'],
    ['keyvault/common/rpc/server.ts', '../zod-issues.ts'],
    ['policy/audit.ts', '../keyvault/common/lock.ts'],
    ['endpoint/device.ts', './store/durable-store.ts'],
  ])('%s may import %s', async (path, specifier) => {
    expect(await lint(path, specifier)).toEqual([]);
  });
});
