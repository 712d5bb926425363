// The compartments' "never" arrows (DESIGN.md §2-3) as lint errors, one block per folder.
// Patterns are regexes on the import specifier, so they catch relative paths at any depth.
// test/unit/lint-boundaries.test.ts shows each rule refusing a forbidden import.

const ENGINE = {
  regex: '^@matrix-org/matrix-sdk-crypto-wasm',
  message: 'the crypto engine lives in the endpoint core only',
};
const rule = (...patterns) => ({ 'no-restricted-imports': ['error', { patterns }] });

export const boundaries = [
  {
    // The untrusted-facing side: the gateway and the user-facing CLIs. They hold no secret, so
    // they may import the endpoint's contract (and the spawner of an unlaunched endpoint) and
    // the shared channel, never the vault, the store, the engine or the policy's files.
    files: ['endpoint/untrusted/**/*.ts'],
    rules: rule(
      {
        regex: '(^|/)keyvault/(?!common/)',
        message: 'the gateway and the CLIs never import the vault (only keyvault/common/)',
      },
      {
        regex: '(^|/)(store|crypto|matrix|sync|verification|api)/',
        message:
          'the gateway and the CLIs never import the endpoint core (only endpoint/contract.ts)',
      },
      {
        regex: '(^|/)endpoint/(?!contract\\.ts$|spawn\\.ts$|untrusted/)',
        message:
          'only endpoint/contract.ts and endpoint/spawn.ts are visible from endpoint/untrusted/',
      },
      {
        regex: '^(\\.\\./){2,3}(device|service|outbox|main|config)\\.ts$',
        message:
          'the gateway and the CLIs never import the endpoint core (only endpoint/contract.ts)',
      },
      {
        regex: '(^|/)(policy|attestation)/',
        message: "policy decisions are the endpoint's: the gateway never loads the policy",
      },
      ENGINE,
    ),
  },
  {
    // The vault answers the endpoint; it never depends on it, the policy or anything above it.
    files: ['keyvault/**/*.ts'],
    ignores: ['keyvault/common/**'],
    rules: rule(
      {
        regex: '(^|/)(endpoint|policy|attestation|deploy)/',
        message: 'the vault never imports endpoint, policy, attestation or deploy',
      },
      { regex: '^(fastify|matrix-js-sdk)', message: 'the vault has no HTTP and no Matrix' },
      ENGINE,
    ),
  },
  {
    // The shared channel is owned by no compartment: it imports none of them.
    files: ['keyvault/common/*.ts'],
    rules: rule(
      { regex: '^\\.\\./', message: 'keyvault/common imports nothing of the compartments' },
      ENGINE,
    ),
  },
  {
    files: ['keyvault/common/*/**/*.ts'],
    rules: rule(
      { regex: '^\\.\\./\\.\\./', message: 'keyvault/common imports nothing of the compartments' },
      ENGINE,
    ),
  },
  {
    // Policy is pure decisions with its own types: nothing of the endpoint, nothing of the vault.
    files: ['policy/**/*.ts'],
    rules: rule(
      {
        regex: '(^|/)endpoint/',
        message:
          'policy imports nothing of endpoint (it has its own types; the endpoint maps them)',
      },
      {
        regex: '(^|/)keyvault/(?!common/)',
        message: 'policy never imports the vault (only keyvault/common/)',
      },
      ENGINE,
    ),
  },
];
