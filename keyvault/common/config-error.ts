/**
 * A configuration file or manifest that cannot be used: unreadable, not JSON, or failing its
 * schema. One class for every compartment, so a launcher or CLI prints it as one line and
 * exits 1 without a stack trace. `source` says which kind of file it was.
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
  readonly code = 'CONFIG';
}
