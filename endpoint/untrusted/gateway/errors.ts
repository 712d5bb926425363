import { z } from 'zod';
import { isRpcError } from '../../../keyvault/common/rpc/index.ts';

/**
 * Errors as values with codes. Every error a client sees is
 * `{ "error": { "code": "UPPER_SNAKE", "message": "one human sentence" } }` with the status
 * below; nothing else (no stack, no echoed value, no token) ever reaches a client.
 */
export const errorBody = z
  .object({
    error: z
      .object({
        code: z.string().regex(/^[A-Z][A-Z0-9_]{0,63}$/),
        message: z.string(),
      })
      .strict(),
  })
  .strict();
export type ErrorBody = z.infer<typeof errorBody>;

export class GatewayError extends Error {
  readonly status: number;
  readonly code: string;
  readonly headers: Readonly<Record<string, string>>;

  constructor(status: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'GatewayError';
    this.status = status;
    this.code = code;
    this.headers = headers;
  }

  body(): ErrorBody {
    return { error: { code: this.code, message: this.message } };
  }
}

/** The endpoint's (and the RPC's) error codes, with the HTTP status each becomes. */
export const RPC_STATUS: Readonly<Record<string, number>> = Object.freeze({
  UNAUTHENTICATED: 401,
  FORBIDDEN_CAPABILITY: 403,
  FORBIDDEN_ROOM: 403,
  RATE_LIMITED: 429,
  INVALID_REQUEST: 400,
  INVALID_PARAMS: 400,
  NOT_FOUND: 404,
  /** The verification or identity is not in a state where this step applies. */
  CONFLICT: 409,
  /** Members of the room changed identity: acknowledge or verify again, then send. */
  IDENTITY_CHANGED: 409,
  /** The room has no m.room.encryption: the endpoint shows such rooms but never sends to them. */
  ROOM_NOT_ENCRYPTED: 409,
  /** Only our own messages can be edited (m.replace from anyone else is ignored by clients). */
  NOT_OWN_MESSAGE: 409,
  /** uploadFinish before every byte announced in uploadStart arrived (or chunks out of order). */
  UPLOAD_INCOMPLETE: 409,
  /** The invitation is not there (never sent, already answered or withdrawn). */
  NOT_INVITED: 404,
  /** The event, once encrypted, would pass the homeserver's 64 KiB event limit. */
  MESSAGE_TOO_LARGE: 413,
  /** Over MAX_ATTACHMENT_BYTES, or over the homeserver's own (smaller) upload limit. */
  ATTACHMENT_TOO_LARGE: 413,
  /** The declared media type is not what the bytes are (e.g. "image/png" that is no PNG). */
  CONTENT_TYPE_MISMATCH: 415,
  /** The downloaded ciphertext does not match the event's SHA-256: nothing of it is served. */
  ATTACHMENT_TAMPERED: 502,
  /** The event's file description (key, iv, hashes, URL) is malformed: nothing to fetch. */
  ATTACHMENT_INVALID: 502,
  UPSTREAM_FAILED: 502,
  AUDIT_UNAVAILABLE: 503,
  /** The vault compartment is down or restarting (endpoint/vault-link.ts). */
  VAULT_UNAVAILABLE: 503,
  /** The endpoint's store cannot be written for a reason other than a full disk. */
  STORE_UNAVAILABLE: 503,
  /** No attestation on this endpoint (no TPM vault, or no verifier policy), or not right now. */
  ATTESTATION_UNAVAILABLE: 503,
  /** No key backup on this endpoint (started without the vault's backup operations). */
  BACKUP_UNAVAILABLE: 503,
  /** The vault has no backup key yet (`vault backup-key create`, or `import` to restore). */
  BACKUP_NO_KEY: 409,
  /** The vault cannot decrypt: only the public half here, or its key file is not right. */
  BACKUP_CANNOT_DECRYPT: 409,
  /** The vault's key is not the current backup's (a wrong recovery key): nothing imported. */
  BACKUP_WRONG_KEY: 409,
  /** The backup is already on with the vault's key (rotate makes a new version). */
  BACKUP_EXISTS: 409,
  /** The vault's key is not in the mode the policy asks for (policy `backup.mode`). */
  BACKUP_MODE_MISMATCH: 409,
  /** A rotation could not upload every key to the new version; the old one was kept. */
  BACKUP_INCOMPLETE: 409,
  /** The homeserver holds no key backup to restore. */
  BACKUP_NONE: 404,
  /** The homeserver's backup is not one we read (another algorithm, or malformed). */
  BACKUP_UNREADABLE: 502,
  /** The endpoint's disk is full; it recovers by itself once space is freed. */
  STORAGE_FULL: 507,
  BUSY: 503,
  DISCONNECTED: 503,
  TIMEOUT: 504,
});

/** A fixed sentence per code where the endpoint's own message is not for the client. */
const GENERIC: Readonly<Record<string, string>> = Object.freeze({
  UNAUTHENTICATED: 'The bearer token is missing, unknown or revoked.',
  // The RPC's schema message may name an unexpected key the client chose: not echoed.
  INVALID_PARAMS: 'The request does not match the API.',
  BUSY: 'The endpoint is busy; try again shortly.',
  DISCONNECTED: 'The endpoint is not reachable right now.',
  TIMEOUT: 'The endpoint did not answer in time.',
  INTERNAL: 'Something went wrong inside the gateway or the endpoint.',
});

/**
 * Anything thrown while serving a request, as the GatewayError the client gets. RPC errors
 * keep their code and (being written for UIs by the endpoint) their message, except where the
 * message could describe internals (protocol and transport failures); everything unknown is
 * INTERNAL with a generic sentence.
 */
export function toGatewayError(e: unknown): GatewayError {
  if (e instanceof GatewayError) return e;
  if (isRpcError(e)) {
    const status = RPC_STATUS[e.code];
    if (status === undefined) return internal();
    const message = GENERIC[e.code] ?? oneSentence(e.message);
    if (e.code === 'UNAUTHENTICATED') {
      return new GatewayError(401, e.code, message, { 'www-authenticate': 'Bearer' });
    }
    if (e.code === 'RATE_LIMITED') {
      const seconds = Math.max(1, Math.ceil((e.retryAfterMs ?? 1000) / 1000));
      return new GatewayError(429, e.code, message, { 'retry-after': String(seconds) });
    }
    // The RPC's INVALID_PARAMS means the params failed the contract's schema; for the client
    // that is just an invalid request.
    const code = e.code === 'INVALID_PARAMS' ? 'INVALID_REQUEST' : e.code;
    return new GatewayError(status, code, message);
  }
  return internal();
}

export function internal(): GatewayError {
  return new GatewayError(500, 'INTERNAL', GENERIC.INTERNAL ?? 'Internal error.');
}

export function unauthenticated(message: string): GatewayError {
  return new GatewayError(401, 'UNAUTHENTICATED', message, { 'www-authenticate': 'Bearer' });
}

export function invalidRequest(message: string): GatewayError {
  return new GatewayError(400, 'INVALID_REQUEST', message);
}

/** One line, bounded, with a full stop: never a multi-line dump from deeper down. */
function oneSentence(message: string): string {
  const line = message
    .replace(/\s*\n\s*/g, ' ')
    .trim()
    .slice(0, 300);
  if (line === '') return 'The request failed.';
  const capital = line.charAt(0).toUpperCase() + line.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}
