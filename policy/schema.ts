import { z } from 'zod';

/**
 * The policy file (JSON): which local UI clients may do what, and how room keys are shared.
 * Tokens are never in this file, only the SHA-256 of each (hex), so reading the file does not
 * let anyone act as a client. Every field an operator may leave out has the safe default.
 */

/** What a UI client may ask of the endpoint. A fixed set: unknown names are refused. */
export const CAPABILITIES = [
  'rooms.read',
  'messages.read',
  'messages.send',
  'rooms.create',
  /** Invite to and leave rooms. */
  'rooms.manage',
  /** Accept or decline invitations (narrower than rooms.manage: it cannot invite anyone). */
  'rooms.join',
  'contacts.read',
  'verification',
  'attestation',
  'events.stream',
  /** See and manage the server-side key backup: status, create, rotate, recover. */
  'backup',
] as const;
export type Capability = (typeof CAPABILITIES)[number];

export function isCapability(value: unknown): value is Capability {
  return typeof value === 'string' && (CAPABILITIES as readonly string[]).includes(value);
}

/**
 * Who receives room keys when we encrypt:
 * - `verified-only`: only devices we verified (interactively, or via a verified identity);
 * - `cross-signed`: devices their owner cross-signed (MSC4153, Element X's default);
 * - `tofu`: the same as `cross-signed` (kept for older policies): every rule pins the first
 *   identity seen for a user, and sending to a room is blocked while a member's identity changed
 *   and nobody with the `verification` capability acknowledged it.
 */
/**
 * `attested-only`: as `cross-signed`, and every device the room key would go to must hold a
 * fresh passing remote attestation (attestation/README.md); otherwise the message waits.
 */
export const ROOM_KEY_RECIPIENTS = [
  'verified-only',
  'cross-signed',
  'tofu',
  'attested-only',
] as const;
export type RoomKeyRecipients = (typeof ROOM_KEY_RECIPIENTS)[number];

/** Client names: short, printable, safe to put in logs and in the audit log. */
export const CLIENT_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const clientName = z
  .string()
  .regex(CLIENT_NAME, 'expected 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit');

/**
 * A Matrix room id: `!opaque:server`, or `!opaque` alone in room version 12. Printable ASCII,
 * at most 255 bytes as the spec bounds it.
 */
export const ROOM_ID = /^![\x21-\x7e]{1,254}$/;
export const roomId = z.string().regex(ROOM_ID, 'expected a room id such as "!abc:example.org"');

export const sha256Hex = z
  .string()
  .regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits (the SHA-256 of the token)');

const capability = z.enum(CAPABILITIES, {
  error: () => `expected one of ${CAPABILITIES.join(', ')}`,
});

/** Used when a client has no `rateLimit`: no client is ever unlimited. */
export const DEFAULT_RATE_LIMIT = { requestsPerMinute: 300 } as const;

const rateLimit = z
  .object({
    /** Sustained rate; tokens refill continuously at requestsPerMinute / 60 per second. */
    requestsPerMinute: z.number().int().min(1).max(60_000),
    /** Largest burst; defaults to one minute's worth (requestsPerMinute). */
    burst: z.number().int().min(1).max(60_000).optional(),
  })
  .strict();

function unique<T>(what: string) {
  return (items: T[], ctx: z.core.$RefinementCtx<T[]>) => {
    const seen = new Map<T, number>();
    items.forEach((item, i) => {
      const first = seen.get(item);
      if (first === undefined) {
        seen.set(item, i);
      } else {
        ctx.addIssue({ code: 'custom', path: [i], message: `duplicate ${what} (as [${first}])` });
      }
    });
  };
}

export const policyClient = z
  .object({
    name: clientName,
    tokenSha256: sha256Hex,
    /** When the token was created (ISO 8601), for `token list`. */
    created: z.iso.datetime({
      offset: true,
      error: 'expected an ISO 8601 time such as 2025-01-15T09:30:00.000Z',
    }),
    capabilities: z
      .array(capability)
      .min(1, 'a client needs at least one capability')
      .superRefine(unique('capability')),
    /** If present, the only rooms this client may touch; absent means every joined room. */
    rooms: z.array(roomId).min(1).max(10_000).superRefine(unique('room')).optional(),
    rateLimit: rateLimit.default(DEFAULT_RATE_LIMIT),
  })
  .strict();

const ENCRYPTION_REQUIRED =
  'must be true in this version: the homeserver is untrusted (DESIGN.md §6), so a room without ' +
  'end-to-end encryption would hand it every message; the endpoint has no plaintext send path';

const roomRuleFields = {
  /** Always true in this version; see ENCRYPTION_REQUIRED. */
  encryptionRequired: z.literal(true, { error: () => ENCRYPTION_REQUIRED }),
  roomKeyRecipients: z.enum(ROOM_KEY_RECIPIENTS, {
    error: () => `expected one of ${ROOM_KEY_RECIPIENTS.join(', ')}`,
  }),
  /** Show messages from devices their owner did not cross-sign (MSC4153 hides them). */
  showUnverifiedMessages: z.boolean(),
};

export const DEFAULT_ROOM_RULES = {
  encryptionRequired: true,
  roomKeyRecipients: 'cross-signed',
  showUnverifiedMessages: false,
} as const satisfies RoomRules;

const roomRules = z
  .object({
    encryptionRequired: roomRuleFields.encryptionRequired.default(true),
    roomKeyRecipients: roomRuleFields.roomKeyRecipients.default(
      DEFAULT_ROOM_RULES.roomKeyRecipients,
    ),
    showUnverifiedMessages: roomRuleFields.showUnverifiedMessages.default(false),
  })
  .strict();

/** A per-room override: only the fields it names replace the default's. */
const roomOverride = z
  .object({
    encryptionRequired: roomRuleFields.encryptionRequired.optional(),
    roomKeyRecipients: roomRuleFields.roomKeyRecipients.optional(),
    showUnverifiedMessages: roomRuleFields.showUnverifiedMessages.optional(),
  })
  .strict();

/**
 * The audit log's bounds (policy/README.md "The audit log"). The defaults keep months of
 * ordinary use and cannot fill a disk: 256 MiB in 8 MiB segments, and floods of refusals
 * counted per 60 s window after the first 5 written.
 */
export const DEFAULT_AUDIT = {
  maxBytes: 256 * 1024 * 1024,
  segmentBytes: 8 * 1024 * 1024,
  refusals: { windowSeconds: 60, individualPerWindow: 5 },
} as const;

const MIB = 1024 * 1024;

const auditRefusals = z
  .object({
    /** How long one window of counted refusals lasts (one summary entry each). */
    windowSeconds: z.number().int().min(1).max(3600).default(60),
    /** How many of a window's refusals are still written one by one. */
    individualPerWindow: z.number().int().min(0).max(1000).default(5),
  })
  .strict();

const auditSection = z
  .object({
    /** All segments together; the oldest are deleted (and that recorded) beyond it. */
    maxBytes: z
      .number()
      .int()
      .min(2 * 64 * 1024)
      .max(1024 * 1024 * MIB)
      .default(DEFAULT_AUDIT.maxBytes),
    /** A segment is sealed and a new one begun before it would pass this. */
    segmentBytes: z
      .number()
      .int()
      .min(64 * 1024)
      .max(1024 * MIB)
      .default(DEFAULT_AUDIT.segmentBytes),
    refusals: auditRefusals.default(DEFAULT_AUDIT.refusals),
  })
  .strict()
  .superRefine((audit, ctx) => {
    if (audit.maxBytes < 2 * audit.segmentBytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['maxBytes'],
        message: `must be at least twice segmentBytes (${audit.segmentBytes}): the segment being written and one sealed`,
      });
    } else if (audit.maxBytes / audit.segmentBytes > 4096) {
      // Each segment is a file the verifier opens and the writer lists: keep them few.
      ctx.addIssue({
        code: 'custom',
        path: ['segmentBytes'],
        message: `at most 4096 segments: segmentBytes must be at least maxBytes / 4096 (${Math.ceil(audit.maxBytes / 4096)})`,
      });
    }
  });
export type AuditSettings = z.output<typeof auditSection>;

/**
 * Key backup (endpoint/backup): which key mode the vault's backup key must be in before the
 * endpoint backs anything up (`mode`, unset: any), and which rooms' keys may leave the
 * machine: `all`, or `not-attested-only`, which keeps the keys of rooms whose rule is
 * `attested-only` out of the backup (a restored copy would not be on attested hardware).
 */
export const BACKUP_MODES = ['vault', 'recovery-key', 'escrow'] as const;
export const BACKUP_ROOMS = ['all', 'not-attested-only'] as const;
export const DEFAULT_BACKUP = { rooms: 'all' } as const;
const backupSection = z
  .object({
    mode: z
      .enum(BACKUP_MODES, { error: () => `expected one of ${BACKUP_MODES.join(', ')}` })
      .optional(),
    rooms: z
      .enum(BACKUP_ROOMS, { error: () => `expected one of ${BACKUP_ROOMS.join(', ')}` })
      .default('all'),
  })
  .strict();
export type BackupSettings = z.output<typeof backupSection>;

export const policySchema = z
  .object({
    version: z.literal(1, { error: () => 'expected 1 (the only policy version there is)' }),
    rooms: z
      .object({
        default: roomRules.default(DEFAULT_ROOM_RULES),
        overrides: z
          .record(roomId, roomOverride)
          .refine((r) => Object.keys(r).length <= 10_000, 'at most 10000 room overrides')
          .default({}),
      })
      .strict()
      .default({ default: DEFAULT_ROOM_RULES, overrides: {} }),
    clients: z.array(policyClient).max(256).default([]),
    audit: auditSection.default(DEFAULT_AUDIT),
    backup: backupSection.default(DEFAULT_BACKUP),
  })
  .strict()
  .superRefine((policy, ctx) => {
    const names = new Map<string, number>();
    const hashes = new Map<string, number>();
    policy.clients.forEach((c, i) => {
      const sameName = names.get(c.name);
      if (sameName === undefined) names.set(c.name, i);
      else {
        ctx.addIssue({
          code: 'custom',
          path: ['clients', i, 'name'],
          message: `duplicate client name (as clients[${sameName}])`,
        });
      }
      const sameHash = hashes.get(c.tokenSha256);
      if (sameHash === undefined) hashes.set(c.tokenSha256, i);
      else {
        ctx.addIssue({
          code: 'custom',
          path: ['clients', i, 'tokenSha256'],
          message: `the same token as clients[${sameHash}]: every client needs its own token`,
        });
      }
    });
  });

export type Policy = z.output<typeof policySchema>;
export type PolicyInput = z.input<typeof policySchema>;
export type PolicyClient = z.output<typeof policyClient>;
export type RoomRules = {
  encryptionRequired: true;
  roomKeyRecipients: RoomKeyRecipients;
  showUnverifiedMessages: boolean;
};

/** The documented example (policy/README.md); the schema tests parse it. */
export const EXAMPLE_POLICY = {
  version: 1,
  rooms: {
    default: {
      encryptionRequired: true,
      roomKeyRecipients: 'cross-signed',
      showUnverifiedMessages: false,
    },
    overrides: {
      '!board:example.org': { roomKeyRecipients: 'verified-only' },
    },
  },
  clients: [
    {
      name: 'web-ui',
      tokenSha256: '3f1d6c0c2b8e4a7f9d5e1b2c3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3',
      created: '2025-01-15T09:30:00.000Z',
      capabilities: ['rooms.read', 'messages.read', 'messages.send', 'events.stream'],
    },
    {
      name: 'alert-bot',
      tokenSha256: 'a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f',
      created: '2025-01-15T09:31:00.000Z',
      capabilities: ['messages.send'],
      rooms: ['!alerts:example.org'],
      rateLimit: { requestsPerMinute: 30 },
    },
  ],
  audit: { maxBytes: 268435456, segmentBytes: 8388608 },
} as const satisfies PolicyInput;
