import { formatZodIssues } from '../../keyvault/common/zod-issues.ts';
import { z } from 'zod';
import { mxcUri } from '../media/index.ts';
import type {
  JoinedRoom,
  MessagesPage,
  RoomEvent,
  StrippedEvent,
  SyncResponse,
  ToDeviceEvent,
} from './api.ts';
import { ClientCode, MatrixApiError, redact } from './errors.ts';

/**
 * The trust boundary: every homeserver response is checked here before the endpoint sees it.
 * Unknown fields are dropped. Optional fields use exactOptional so the parsed values match the
 * interfaces in api.ts under exactOptionalPropertyTypes (absent, never `undefined`).
 *
 * Lists of events are lenient: one malformed event is dropped and reported, not fatal. Events
 * reach the homeserver from other servers over federation, and a sync that failed on one bad
 * event would fail the same way on every retry from the same token, wedging the sync loop.
 * Everything else (next_batch, the shape of rooms, ids we asked for) is strict.
 */

/** Matrix identifiers are at most 255 bytes (spec, "Identifier grammar"). */
const id = z.string().min(1).max(255);
export const jsonObject = z.record(z.string(), z.unknown());

/** Called with a description of what was dropped and how many, for the client's logger. */
export type DropReporter = (what: string, count: number) => void;

function lenientList<T>(item: z.ZodType<T>, what: string, report: DropReporter) {
  return z.array(z.unknown()).transform((items): T[] => {
    const kept: T[] = [];
    for (const entry of items) {
      const parsed = item.safeParse(entry);
      if (parsed.success) kept.push(parsed.data);
    }
    if (kept.length < items.length) report(what, items.length - kept.length);
    return kept;
  });
}

const roomEventShape = {
  type: z.string(),
  event_id: id,
  sender: id,
  origin_server_ts: z.number(),
  content: jsonObject,
  state_key: z.string().exactOptional(),
  // Kept whole, not reshaped: the sync loop and history read redacted_because and m.relations.
  unsigned: jsonObject.exactOptional(),
  redacts: id.exactOptional(),
};
const roomEvent: z.ZodType<RoomEvent> = z.object(roomEventShape);

/** GET /rooms/{roomId}/event/{eventId}: one event, strict, with the room it claims to be in. */
export const eventResponse: z.ZodType<RoomEvent & { room_id?: string }> = z.object({
  ...roomEventShape,
  room_id: id.exactOptional(),
});

const strippedEvent: z.ZodType<StrippedEvent> = z.object({
  type: z.string(),
  sender: id,
  state_key: z.string(),
  content: jsonObject,
});

const toDeviceEvent: z.ZodType<ToDeviceEvent> = z.object({
  type: z.string(),
  sender: id,
  content: jsonObject,
});

const memberEvent = z.object({
  state_key: id,
  content: z.object({ membership: z.string() }),
});

/** Response schemas that contain event lists; built per client so drops reach its logger. */
export function eventSchemas(report: DropReporter) {
  const events = (what: string) => lenientList(roomEvent, what, report);
  const joinedRoom: z.ZodType<JoinedRoom> = z.object({
    timeline: z
      .object({
        events: events('timeline event').exactOptional(),
        limited: z.boolean().exactOptional(),
        prev_batch: z.string().exactOptional(),
      })
      .exactOptional(),
    state: z.object({ events: events('state event').exactOptional() }).exactOptional(),
  });
  const sync: z.ZodType<SyncResponse> = z.object({
    next_batch: z.string().min(1),
    rooms: z
      .object({
        join: z.record(z.string(), joinedRoom).exactOptional(),
        invite: z
          .record(
            z.string(),
            z.object({
              invite_state: z
                .object({
                  events: lenientList(strippedEvent, 'invite state event', report).exactOptional(),
                })
                .exactOptional(),
            }),
          )
          .exactOptional(),
        leave: z
          .record(
            z.string(),
            z.object({
              timeline: z
                .object({ events: events('timeline event').exactOptional() })
                .exactOptional(),
            }),
          )
          .exactOptional(),
      })
      .exactOptional(),
    to_device: z
      .object({ events: lenientList(toDeviceEvent, 'to-device event', report).exactOptional() })
      .exactOptional(),
    device_lists: z
      .object({ changed: z.array(id).exactOptional(), left: z.array(id).exactOptional() })
      .exactOptional(),
    device_one_time_keys_count: z.record(z.string(), z.number().int().min(0)).exactOptional(),
    device_unused_fallback_key_types: z.array(z.string()).exactOptional(),
  });
  const messages: z.ZodType<MessagesPage> = z.object({
    chunk: events('message'),
    start: z.string(),
    end: z.string().exactOptional(),
  });
  const members = z.object({ chunk: lenientList(memberEvent, 'member event', report) });
  return { sync, messages, members };
}

export const loginResponse = z.object({
  user_id: z.string().regex(/^@[^:]+:.+$/, 'must be a Matrix user id'),
  access_token: z.string().min(1).max(4096),
  device_id: id,
});
export const roomIdResponse = z.object({
  room_id: z.string().startsWith('!', 'must be a room id').max(255),
});
export const eventIdResponse = z.object({
  event_id: z.string().startsWith('$', 'must be an event id').max(255),
});
export const uploadResponse = z.object({ content_uri: mxcUri });
/**
 * GET /media/config. A garbled m.upload.size is treated as not advertised: it only lets us
 * refuse an oversized upload early, and the server enforces its limit anyway.
 */
export const mediaConfigResponse = z.object({
  'm.upload.size': z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional().catch(undefined),
});
/** Endpoints whose success body is `{}`: any JSON object is accepted, its fields ignored. */
export const emptyResponse = z.object({});

// The key endpoints' responses are handed to the crypto engine as text; these check the
// top-level shape the engine will rely on, so a wrong shape fails here with a field path.
const oneTimeKeyCounts = z.record(z.string(), z.number().int().min(0));
const keysByUser = z.record(z.string(), jsonObject);
export const keysUploadResponse = z.object({ one_time_key_counts: oneTimeKeyCounts });
export const backupVersionCreated = z.object({ version: z.string().min(1).max(255) });
export const backupUploaded = z.object({
  etag: z.string().max(255),
  count: z.number().int().nonnegative(),
});
export const keysQueryResponse = z.object({
  device_keys: z.record(z.string(), keysByUser).exactOptional(),
  failures: jsonObject.exactOptional(),
  master_keys: keysByUser.exactOptional(),
  self_signing_keys: keysByUser.exactOptional(),
  user_signing_keys: keysByUser.exactOptional(),
});
export const keysClaimResponse = z.object({
  one_time_keys: z.record(z.string(), z.record(z.string(), jsonObject)),
  failures: jsonObject.exactOptional(),
});
export const signaturesUploadResponse = z.object({ failures: jsonObject.exactOptional() });

/** A user-interactive auth challenge (the body of a 401 that asks for more auth). */
export const uiaChallenge = z.object({
  flows: z.array(z.object({ stages: z.array(z.string()) })),
  session: z.string().max(1024).exactOptional(),
  errcode: z.string().exactOptional(),
});

/**
 * A Matrix error body. Each field is parsed on its own (`catch`), so a malformed field does not
 * hide the others: a 429 with a garbled `error` still has its retry_after_ms honoured.
 */
export const errorBody = z.object({
  errcode: z
    .string()
    .regex(/^[A-Za-z0-9_.]{1,128}$/)
    .optional()
    .catch(undefined),
  error: z.string().optional().catch(undefined),
  retry_after_ms: z.number().int().min(0).optional().catch(undefined),
});

/** Describes schema violations by path and rule, never by value: values may be secrets. */
export function describeIssues(error: z.ZodError): string {
  return formatZodIssues(error);
}

/**
 * Parses a response or throws BAD_RESPONSE naming the endpoint and the failing field paths.
 * Record keys come from the server and appear in paths, so the message is redacted too.
 */
export function validate<T>(
  schema: z.ZodType<T>,
  value: unknown,
  endpoint: string,
  status: number,
  secrets: readonly string[],
): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  return badResponse(
    endpoint,
    status,
    redact(`response violates its schema: ${describeIssues(parsed.error)}`, secrets),
  );
}

export function badResponse(endpoint: string, status: number, what: string): never {
  throw new MatrixApiError({
    status,
    errcode: ClientCode.BadResponse,
    message: `${endpoint}: ${what}`,
    retryable: false,
  });
}
