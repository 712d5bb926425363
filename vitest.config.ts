import { defineConfig } from 'vitest/config';

// Three projects: fast unit tests; integration tests that start real Synapse, swtpm and
// SoftHSM2; and the end-to-end suites again on Dendrite, the second homeserver (the fixtures
// read MTE_HOMESERVER). Each integration file starts its services once; files run in separate
// processes (forks) so an interrupted file's services die with it (see test/fixtures/process.ts).
const integration = { testTimeout: 120_000, hookTimeout: 180_000 };
/** The suites whose homeserver is a parameter: what a user does, on either server. */
export const ON_EVERY_HOMESERVER = [
  'test/integration/endpoint-e2ee.test.ts',
  'test/integration/verification.test.ts',
  'test/integration/identity-race.test.ts',
  'test/integration/everyday-messaging.test.ts',
];
export default defineConfig({
  test: {
    globalSetup: ['test/fixtures/global-setup.ts'],
    pool: 'forks',
    maxWorkers: 2,
    // matrix-js-sdk pins some child loggers to DEBUG; their lines bury real failures.
    onConsoleLog: (log) => !/^(\[MatrixRTCSession|Error decrypting event)/.test(log),
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['test/unit/**/*.test.ts'], testTimeout: 10_000 },
      },
      {
        extends: true,
        test: { name: 'integration', include: ['test/integration/**/*.test.ts'], ...integration },
      },
      {
        extends: true,
        test: {
          name: 'dendrite',
          include: ON_EVERY_HOMESERVER,
          env: { MTE_HOMESERVER: 'dendrite' },
          ...integration,
        },
      },
    ],
  },
});
