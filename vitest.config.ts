import { defineConfig } from 'vitest/config';

// Two projects: fast unit tests, and integration tests that start real Synapse, swtpm and
// SoftHSM2. Each integration file starts its services once; files run in separate processes
// (forks) so an interrupted file's services die with it (see test/fixtures/process.ts).
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
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
        },
      },
    ],
  },
});
