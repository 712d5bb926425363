/**
 * The vault interface: everything the endpoint may ask of key hardware, and nothing more
 * (issue 3). Backends: `tpm` (keyvault/tpm), `pkcs11` (keyvault/pkcs11), `dev` (keyvault/dev).
 * The endpoint reaches a vault only through the RPC contract in keyvault/contract.ts.
 */
import type { BackedUpRoomKey } from './backup/megolm-v1.ts';
import { RpcError } from './common/rpc/index.ts';

/** Signing purposes, each fixed at provisioning to one key and one algorithm. */
export const SIGNING_PURPOSES = ['cross-signing-master', 'x509-identity'] as const;
export type SigningPurpose = (typeof SIGNING_PURPOSES)[number];

export const PURPOSE_ALGORITHM = {
  /** Ed25519 (pure), as Matrix cross-signing needs. */
  'cross-signing-master': 'ed25519',
  /** RSASSA-PSS, SHA-512, MGF1-SHA-512, salt length 64 (what the X.509 identity code accepts). */
  'x509-identity': 'rsa-pss-sha512',
} as const satisfies Record<SigningPurpose, string>;

export type BackendName = 'tpm' | 'pkcs11' | 'dev';

export interface PublicKeyInfo {
  purpose: SigningPurpose;
  algorithm: (typeof PURPOSE_ALGORITHM)[SigningPurpose];
  /** SubjectPublicKeyInfo, DER: loads with node:crypto createPublicKey({ format: 'der', type: 'spki' }). */
  spki: Uint8Array;
}

export interface PcrSelection {
  hash: 'sha256';
  pcrs: number[];
}

export interface Quote {
  /** The raw TPMS_ATTEST bytes the signature covers. */
  attest: Uint8Array;
  /** The raw TPMT_SIGNATURE (ECDSA P-256, SHA-256). */
  signature: Uint8Array;
  /** The selected PCR values, ascending by index, as the TPM reported them. */
  pcrValues: { pcr: number; digest: Uint8Array }[];
}

export interface AttestationIdentity {
  /** The AK's TPMT_PUBLIC (restricted ECC P-256 signing key), marshalled. */
  akPublic: Uint8Array;
  /** The AK's Name (nameAlg || H(TPMT_PUBLIC)). */
  akName: Uint8Array;
  /** DER EK certificate, where the TPM has one. */
  ekCertificate?: Uint8Array;
}

/**
 * Credential activation (attestation/enrol): what a verifier made with TPM2_MakeCredential
 * for our EK and AK, and the challenge it is for.
 */
export interface ActivationRequest {
  /** TPM2B_ID_OBJECT, size field included. */
  credentialBlob: Uint8Array;
  /** TPM2B_ENCRYPTED_SECRET, size field included. */
  encryptedSecret: Uint8Array;
  /** The verifier's challenge id, bound into the proof. */
  challengeId: string;
}

/** The proof's domain label; attestation/enrol/proof.ts checks the same bytes. */
export const ACTIVATION_PROOF_LABEL = 'mte-activation-proof v1\0';

export interface VaultStatus {
  backend: BackendName;
  /** TPM manufacturer/firmware, token label/serial/model, or "software". */
  identity: string;
  /** Mechanisms or algorithms found that the vault needs, and any that are missing. */
  capabilities: { found: string[]; missing: string[] };
  provisioned: {
    storeKey: boolean;
    counter: boolean;
    purposes: SigningPurpose[];
    attestationKey: boolean;
    /**
     * The counter's value when the vault was provisioned (decimal): a store may be created
     * fresh only there. 0 on PKCS#11 and dev; a TPM's new counter starts higher.
     */
    counterStart?: string | undefined;
  };
  /** How strong the anti-rollback counter is, in a sentence (weaker on PKCS#11). */
  counterGuarantee: string;
  /** Warnings a user must see (the dev backend is insecure, etc.). */
  warnings: string[];
}

export interface ProvisionReport {
  created: string[];
  /** What already existed and was kept (init never replaces existing keys). */
  kept: string[];
}

export interface DoctorCheck {
  check: string;
  ok: boolean;
  /** On failure: what to fix, in a sentence. */
  detail: string;
}

/**
 * Where the key backup's private key lives (keyvault/backup). `vault`: sealed here, and only a
 * fixed-purpose decrypt uses it. `recovery-key`: printed once to the admin as a Matrix recovery
 * key, not kept. `escrow`: encrypted to an institution's recovery certificate, not kept.
 */
export const BACKUP_KEY_MODES = ['vault', 'recovery-key', 'escrow'] as const;
export type BackupKeyMode = (typeof BACKUP_KEY_MODES)[number];

export interface BackupKeyInfo {
  mode: BackupKeyMode;
  /** The backup's Curve25519 public key, unpadded base64 (`auth_data.public_key`). */
  publicKey: string;
  /** ISO 8601, when the key was made or imported. */
  createdAt: string;
  /** Whether this vault holds the private key (vault mode, or a key imported to restore). */
  canDecrypt: boolean;
}

/** One session as `/room_keys/keys` returns it, to decrypt during a restore. */
export interface BackedUpSession {
  roomId: string;
  sessionId: string;
  sessionData: { ephemeral: string; ciphertext: string; mac: string };
}

/** A decrypted room key (its JSON, checked to be one), or why this session was not. */
export type BackupDecryptResult =
  | { roomId: string; sessionId: string; ok: true; session: BackedUpRoomKey }
  | {
      roomId: string;
      sessionId: string;
      ok: false;
      code: 'BACKUP_BAD_INPUT' | 'BACKUP_MAC_MISMATCH' | 'BACKUP_NOT_A_ROOM_KEY';
    };

/**
 * A secret a backend sealed for the vault's own later use: a TPM sealed object (to the PCRs),
 * AES-GCM under the token's KEK, or (dev) in clear. Never sent to the endpoint.
 */
export type SealedSecret =
  | { backend: 'tpm'; private: string; public: string }
  | { backend: 'pkcs11'; iv: string; ciphertext: string }
  | { backend: 'dev'; clear: string };

export interface Vault {
  readonly backend: BackendName;
  /** The 32-byte store key. Released once per vault lifetime; a second call is refused. */
  storeKey(): Promise<Uint8Array>;
  counterRead(): Promise<bigint>;
  /** Increments and returns the new value. */
  counterIncrement(): Promise<bigint>;
  publicKey(purpose: SigningPurpose): Promise<PublicKeyInfo>;
  /** Signs `message` (not a digest) with the purpose's key and algorithm. */
  sign(purpose: SigningPurpose, message: Uint8Array): Promise<Uint8Array>;
  /** TPM only; other backends throw VAULT_NOT_SUPPORTED. */
  quote(qualifyingData: Uint8Array, selection: PcrSelection): Promise<Quote>;
  attestationIdentity(): Promise<AttestationIdentity>;
  /**
   * TPM only. Runs TPM2_ActivateCredential with the AK and the EK and answers with the proof
   * HMAC-SHA256(credential, ACTIVATION_PROOF_LABEL || AK Name || challengeId), 32 bytes. The
   * credential itself never leaves the vault: a fixed purpose, not a decryption oracle.
   */
  activateCredential(request: ActivationRequest): Promise<Uint8Array>;
  random(n: number): Promise<Uint8Array>;
  status(): Promise<VaultStatus>;
  /** The key backup's key as this vault knows it, or null before `vault backup-key create`. */
  backupKey(): Promise<BackupKeyInfo | null>;
  /**
   * Decrypts backed-up sessions with the sealed backup key, for a restore. Refused unless
   * `publicKey` is this vault's backup key and the vault holds its private half. Answers only
   * room keys (keyvault/backup/megolm-v1.ts): never the key, never other plaintext.
   */
  backupDecrypt(publicKey: string, sessions: BackedUpSession[]): Promise<BackupDecryptResult[]>;
  close(): Promise<void>;
}

/** What provisioning tools need beyond the endpoint's interface. */
export interface VaultBackend extends Vault {
  /** Generates/seals whatever is missing; idempotent; never replaces existing keys. */
  provision(): Promise<ProvisionReport>;
  /** Checks the hardware can do everything the configuration needs. */
  doctor(): Promise<DoctorCheck[]>;
  /** Seals a secret to this TPM/token (keyvault/backup keeps the backup key so). */
  sealSecret(secret: Uint8Array): Promise<SealedSecret>;
  /** The secret, or VAULT_FOREIGN_OR_TAMPERED / VAULT_POLICY_MISMATCH. The caller zeroises it. */
  unsealSecret(sealed: SealedSecret): Promise<Uint8Array>;
}

export const VaultCode = {
  NotProvisioned: 'VAULT_NOT_PROVISIONED',
  StoreKeyReleased: 'VAULT_STORE_KEY_ALREADY_RELEASED',
  /** The TPM refused to unseal: PCR values differ from the sealing policy. */
  PolicyMismatch: 'VAULT_POLICY_MISMATCH',
  /** A sealed blob or key does not belong to this TPM/token, or was altered. */
  ForeignOrTampered: 'VAULT_FOREIGN_OR_TAMPERED',
  WrongPin: 'VAULT_WRONG_PIN',
  PinLocked: 'VAULT_PIN_LOCKED',
  TokenNotFound: 'VAULT_TOKEN_NOT_FOUND',
  MechanismMissing: 'VAULT_MECHANISM_MISSING',
  Unreachable: 'VAULT_HARDWARE_UNREACHABLE',
  NotSupported: 'VAULT_NOT_SUPPORTED',
  BadRequest: 'VAULT_BAD_REQUEST',
  HardwareError: 'VAULT_HARDWARE_ERROR',
  InsecureRefused: 'VAULT_INSECURE_BACKEND_REFUSED',
  Config: 'VAULT_CONFIG',
  /**
   * The anti-rollback counter (NV index or token object) is not the one this vault created:
   * someone else defined it, or it was replaced. Never adopted.
   */
  CounterForeign: 'VAULT_COUNTER_FOREIGN',
  /** A sign request whose bytes are not what the purpose allows (keyvault/purposes). */
  SignRefused: 'VAULT_SIGN_REFUSED',
  /** The TPM or token does not answer in time (frozen, busy, or gone mid-command). */
  NotResponding: 'VAULT_NOT_RESPONDING',
  /** Endpoint side: the vault compartment is not reachable right now (died, restarting). */
  Unavailable: 'VAULT_UNAVAILABLE',
  /** State files with the wrong owner, mode, or a symlink (keyvault/common/hygiene.ts). */
  UnsafeFiles: 'VAULT_UNSAFE_FILES',
  /** No backup key here, or not the one asked for, or only its public half (keyvault/backup). */
  BackupKey: 'VAULT_BACKUP_KEY',
} as const;
export type VaultErrorCode = (typeof VaultCode)[keyof typeof VaultCode];

/**
 * A vault failure with a code. It extends RpcError so the code crosses the RPC unchanged.
 * Messages must never contain PINs, auth values, key material or plaintext.
 */
export class VaultError extends RpcError {
  constructor(code: VaultErrorCode, message: string) {
    super(code, message);
    this.name = 'VaultError';
  }
}
