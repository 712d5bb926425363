/**
 * Writes endpoint/untrusted/gateway/openapi.json from the routes' schemas (`npm run openapi`), formatted
 * as the repository's prettier config wants it. The file is committed; a unit test fails when
 * it differs from what the code generates.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openApiDocument } from './app.ts';

export const OPENAPI_PATH = join(import.meta.dirname, 'openapi.json');

export async function renderOpenApi(): Promise<string> {
  const text = `${JSON.stringify(openApiDocument(), null, 2)}\n`;
  // prettier is a development dependency, as is this script.
  const prettier = await import('prettier');
  const options = (await prettier.resolveConfig(OPENAPI_PATH)) ?? {};
  return prettier.format(text, { ...options, filepath: OPENAPI_PATH });
}

if (process.argv[1] === import.meta.filename) {
  await writeFile(OPENAPI_PATH, await renderOpenApi());
  process.stderr.write(`wrote ${OPENAPI_PATH}\n`);
}
