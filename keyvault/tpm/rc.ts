/**
 * TPM response codes decoded into sentences (TPM 2.0 Part 2, 6.6): format-one codes name the
 * parameter, handle or session they are about; format-zero codes are errors or warnings.
 */
const FMT0: Record<number, string> = {
  0x000: 'INITIALIZE: TPM not initialized (TPM2_Startup not run)',
  0x001: 'FAILURE: the TPM is in failure mode',
  0x003: 'SEQUENCE: improper use of a sequence handle',
  0x00b: 'PRIVATE: not currently used',
  0x019: 'HMAC: not currently used',
  0x020: 'DISABLED: the command is disabled',
  0x021: 'EXCLUSIVE: the command failed because the audit sequence required exclusivity',
  0x024: 'AUTH_TYPE: the authorization handle is not correct for the command',
  0x025:
    'AUTH_MISSING: the command requires an authorization session for a handle and it is not present',
  0x026: 'POLICY: the policy failure in math operation or an invalid authPolicy value',
  0x027: 'PCR: PCR check fail',
  0x028: 'PCR_CHANGED: PCR have changed since checked',
  0x02d: 'UPGRADE: the TPM is in field upgrade mode',
  0x02e: 'TOO_MANY_CONTEXTS: context ID counter is at maximum',
  0x02f: 'AUTH_UNAVAILABLE: authValue or authPolicy is not available for the selected entity',
  0x030: 'REBOOT: a _TPM_Init and Startup(CLEAR) is required',
  0x031: 'UNBALANCED: the protection algorithms (hash and symmetric) are not reasonably balanced',
  0x042: 'COMMAND_SIZE: command size value is inconsistent with contents',
  0x043: 'COMMAND_CODE: command code not supported',
  0x044: 'AUTHSIZE: the value of authorizationSize is out of range',
  0x045: 'AUTH_CONTEXT: use of an authorization session with a context command',
  0x046: 'NV_RANGE: NV offset+size is out of range',
  0x047: 'NV_SIZE: requested allocation size is larger than allowed',
  0x048: 'NV_LOCKED: NV access locked',
  0x049: 'NV_AUTHORIZATION: NV access authorization fails in command actions',
  0x04a:
    'NV_UNINITIALIZED: an NV Index is used before being initialized (a counter must be incremented once)',
  0x04b: 'NV_SPACE: insufficient space for NV allocation',
  0x04c: 'NV_DEFINED: NV Index or persistent object already defined',
  0x050: 'BAD_CONTEXT: context in TPM2_ContextLoad is not valid',
  0x051: 'CPHASH: cpHash value already set or not correct for use',
  0x052: 'PARENT: handle for parent is not a valid parent',
  0x053: 'NEEDS_TEST: some function needs testing',
  0x054: 'NO_RESULT: an internal function cannot process a request due to an unspecified problem',
  0x055: 'SENSITIVE: the sensitive area did not unmarshal correctly after decryption',
};

const FMT1: Record<number, string> = {
  0x001: 'ASYMMETRIC: asymmetric algorithm not supported or not correct',
  0x002: 'ATTRIBUTES: inconsistent attributes',
  0x003: 'HASH: hash algorithm not supported or not appropriate',
  0x004: 'VALUE: value is out of range or is not correct for the context',
  0x005: 'HIERARCHY: hierarchy is not enabled or is not correct for the use',
  0x007: 'KEY_SIZE: key size is not supported',
  0x008: 'MGF: mask generation function not supported',
  0x009: 'MODE: mode of operation not supported',
  0x00a: 'TYPE: the type of the value is not appropriate for the use',
  0x00b: 'HANDLE: the handle is not correct for the use',
  0x00c: 'KDF: unsupported key derivation function or function not appropriate for use',
  0x00d: 'RANGE: value was out of allowed range',
  0x00e: 'AUTH_FAIL: the authorization HMAC check failed and DA counter incremented',
  0x00f: 'NONCE: invalid nonce size or nonce value mismatch',
  0x010: 'PP: authorization requires assertion of PP',
  0x012: 'SCHEME: unsupported or incompatible scheme',
  0x015: 'SIZE: structure is the wrong size',
  0x016: 'SYMMETRIC: unsupported symmetric algorithm or key size, or not appropriate for instance',
  0x017: 'TAG: incorrect structure tag',
  0x018: 'SELECTOR: union selector is incorrect',
  0x01a:
    'INSUFFICIENT: the TPM was unable to unmarshal a value because there were not enough octets',
  0x01b: 'SIGNATURE: the signature is not valid',
  0x01c: 'KEY: key fields are not compatible with the selected use',
  0x01d: 'POLICY_FAIL: a policy check failed',
  0x01f: 'INTEGRITY: integrity check failed',
  0x020: 'TICKET: invalid ticket',
  0x021: 'RESERVED_BITS: reserved bits not set to zero as required',
  0x022: 'BAD_AUTH: authorization failure without DA implications',
  0x023: 'EXPIRED: the policy has expired',
  0x024: 'POLICY_CC: the commandCode in the policy is not the commandCode of the command',
  0x025: 'BINDING: public and sensitive portions of an object are not cryptographically bound',
  0x026: 'CURVE: curve not supported',
  0x027: 'ECC_POINT: point is not on the required curve',
};

const WARN: Record<number, string> = {
  0x001: 'CONTEXT_GAP: gap for context ID is too large',
  0x002: 'OBJECT_MEMORY: out of memory for object contexts (transient objects not flushed?)',
  0x003: 'SESSION_MEMORY: out of memory for session contexts (sessions not flushed?)',
  0x004: 'MEMORY: out of shared object/session memory or need space for internal operations',
  0x005: 'SESSION_HANDLES: out of session handles',
  0x006: 'OBJECT_HANDLES: out of object handles',
  0x007: 'LOCALITY: bad locality',
  0x008: 'YIELDED: the TPM has suspended operation on the command',
  0x009: 'CANCELED: the command was canceled',
  0x00a: 'TESTING: TPM is performing self-tests',
  0x020: 'NV_RATE: the TPM is rate-limiting accesses to prevent wearout of NV',
  0x021:
    'LOCKOUT: authorizations for objects subject to DA protection are not allowed at this time (dictionary attack lockout)',
  0x022: 'RETRY: the TPM was not able to start the command',
  0x023: 'NV_UNAVAILABLE: the command may require writing of NV and NV is not currently accessible',
};

export interface DecodedRc {
  rc: number;
  /** Short name, e.g. "POLICY_FAIL". */
  name: string;
  /** A sentence: what went wrong and which parameter/handle/session it concerns. */
  message: string;
  /** The base error with parameter/handle/session numbers masked out (for comparisons). */
  base: number;
  warning: boolean;
}

export function decodeRc(rc: number): DecodedRc {
  const hex = `0x${rc.toString(16).padStart(3, '0')}`;
  if (rc & 0x080) {
    const base = 0x080 | (rc & 0x03f);
    const text = FMT1[rc & 0x03f] ?? `unknown format-one error ${hex}`;
    let where: string;
    if (rc & 0x040) where = `parameter ${(rc >> 8) & 0xf}`;
    else if (rc & 0x800) where = `session ${(rc >> 8) & 0x7}`;
    else where = `handle ${(rc >> 8) & 0x7}`;
    return build(rc, base, text, ` (${where}) [${hex}]`, false);
  }
  if (rc & 0x100) {
    if (rc & 0x400) return build(rc, rc, `VENDOR: vendor-specific error`, ` [${hex}]`, false);
    const warning = (rc & 0x800) !== 0;
    const table = warning ? WARN : FMT0;
    const text = table[rc & 0x07f] ?? `unknown ${warning ? 'warning' : 'error'} ${hex}`;
    return build(rc, rc, text, ` [${hex}]`, warning);
  }
  return build(rc, rc, `TPM 1.2 style response code`, ` [${hex}]`, false);
}

function build(
  rc: number,
  base: number,
  text: string,
  suffix: string,
  warning: boolean,
): DecodedRc {
  const [name = '', sentence = ''] = text.split(': ');
  return { rc, base, name, message: `${name}: ${sentence}${suffix}`, warning };
}

export const RC = {
  SUCCESS: 0,
  INITIALIZE: 0x100,
  PCR_CHANGED: 0x128,
  NV_UNINITIALIZED: 0x14a,
  NV_DEFINED: 0x14c,
  VALUE: 0x084,
  HANDLE: 0x08b,
  AUTH_FAIL: 0x08e,
  BAD_AUTH: 0x0a2,
  NV_AUTHORIZATION: 0x149,
  POLICY_FAIL: 0x09d,
  INTEGRITY: 0x09f,
  BINDING: 0x0a5,
  OBJECT_MEMORY: 0x902,
  SESSION_MEMORY: 0x903,
} as const;

/** A TPM answered a command with a non-zero response code. */
export class TpmError extends Error {
  readonly rc: number;
  readonly base: number;
  readonly command: string;
  constructor(command: string, rc: number) {
    const decoded = decodeRc(rc);
    super(`TPM2_${command}: ${decoded.message}`);
    this.name = 'TpmError';
    this.rc = rc;
    this.base = decoded.base;
    this.command = command;
  }
}
