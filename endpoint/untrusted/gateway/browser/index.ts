export { allowedHosts, refusal, REFUSAL_MESSAGES, type BrowserOrigins } from './checks.ts';
export {
  BROWSER_HEADERS,
  UI_CSP,
  browserGuardPlugin,
  refusalReporter,
  staticFilesPlugin,
  type BrowserOptions,
} from './plugin.ts';
export { loadStaticFiles, StaticFilesError, type StaticFile } from './static-files.ts';
