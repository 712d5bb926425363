/** The dev backend's user-facing texts, importable without loading the backend itself. */
export const DEV_WARNING =
  'insecure dev backend: keys are in software files, not hardware; for development only';
export const DEV_REFUSED =
  'the dev backend keeps keys in software and requires "allowInsecureDevBackend": true, for development only';
