import { z } from 'zod';

// Only the parts read here; the crypto core parses the rest itself.
const queryBody = z.object({ device_keys: z.record(z.string(), z.unknown()) });
const queryResponse = z.object({ failures: z.record(z.string(), z.unknown()).optional() });

/** The server part of a user id (`@alice:example.org:8448` → `example.org:8448`). */
function serverOf(userId: string): string {
  return userId.slice(userId.indexOf(':') + 1);
}

/**
 * Users whose device list our homeserver could not fetch the last time we asked for it: their
 * server did not answer it over federation (a timeout, a refused connection), so
 * `/keys/query` listed that server under `failures`. The crypto core then knows no devices
 * for them and shares no room key with them, which is safe; this lets a send say why ("their
 * server did not answer") rather than "they have no devices", which would be a different fact.
 */
export class DeviceListFailures {
  readonly #users = new Set<string>();

  /** Takes one /keys/query request body and its response; malformed ones change nothing. */
  record(requestBody: string, responseBody: string): void {
    const users = parseJson(queryBody, requestBody)?.device_keys;
    if (!users) return;
    const failed = new Set(Object.keys(parseJson(queryResponse, responseBody)?.failures ?? {}));
    for (const userId of Object.keys(users)) {
      if (failed.has(serverOf(userId))) this.#users.add(userId);
      else this.#users.delete(userId);
    }
  }

  unavailable(userId: string): boolean {
    return this.#users.has(userId);
  }
}

function parseJson<T>(schema: z.ZodType<T>, text: string): T | undefined {
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}
