/**
 * Writes endpoint/gateway/openapi.json from the routes' schemas (`npm run openapi`). The file
 * is committed; a unit test fails when it differs from what the code generates.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openApiDocument } from './app.ts';

export const OPENAPI_PATH = join(import.meta.dirname, 'openapi.json');

export function renderOpenApi(): string {
  return `${JSON.stringify(openApiDocument(), null, 2)}\n`;
}

if (process.argv[1] === import.meta.filename) {
  writeFileSync(OPENAPI_PATH, renderOpenApi());
  process.stderr.write(`wrote ${OPENAPI_PATH}\n`);
}
