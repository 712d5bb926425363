import {
  X509Certificate,
  constants,
  createCipheriv,
  publicEncrypt,
  randomBytes,
} from 'node:crypto';
import {
  ContentInfo,
  EncryptedContent,
  EncryptedContentInfo,
  EnvelopedData,
  IssuerAndSerialNumber,
  KeyTransRecipientInfo,
  RecipientIdentifier,
  RecipientInfo,
  RecipientInfos,
  CMSVersion,
  ContentEncryptionAlgorithmIdentifier,
  KeyEncryptionAlgorithmIdentifier,
  id_data,
  id_envelopedData,
} from '@peculiar/asn1-cms';
import { RsaEsOaepParams, id_RSAES_OAEP } from '@peculiar/asn1-rsa';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { Certificate, KeyUsage, id_ce_keyUsage } from '@peculiar/asn1-x509';
import { VaultCode, VaultError } from '../vault.ts';

/**
 * Escrow of the backup key to an institution: the recovery key's text, in a CMS EnvelopedData
 * (RFC 5652) for the institution's recovery certificate. Key transport is RSAES-OAEP with its
 * default parameters (SHA-1, MGF1-SHA-1, RFC 3560), the content AES-256-CBC: what
 * `openssl cms -decrypt` and an HSM's CKM_RSA_PKCS_OAEP both take, so the institution can open
 * it with the key in its HSM and nothing of ours. SHA-1 because HSMs are where this key lives
 * and several accept nothing else for OAEP (SoftHSM2 2.6 answers CKR_ARGUMENTS_BAD to SHA-256);
 * OAEP's security does not rest on SHA-1's collision resistance. The vault keeps only the
 * public half; whoever holds the certificate's private key can restore, and nobody else.
 */
const AES_256_CBC = '2.16.840.1.101.3.4.1.42';
const MIN_RSA_BITS = 2048;

function refuse(why: string): VaultError {
  return new VaultError(VaultCode.Config, `the escrow certificate: ${why}`);
}

/** The certificate must be current, RSA of 2048 bits or more, and allowed to encipher keys. */
function recipient(pem: string): { cert: X509Certificate; parsed: Certificate } {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    throw refuse('not a PEM or DER X.509 certificate');
  }
  const key = cert.publicKey;
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (key.asymmetricKeyType !== 'rsa' || bits < MIN_RSA_BITS) {
    throw refuse(`its key must be RSA of at least ${MIN_RSA_BITS} bits`);
  }
  const now = Date.now();
  if (now < Date.parse(cert.validFrom) || now > Date.parse(cert.validTo)) {
    throw refuse(`it is not valid now (valid ${cert.validFrom} to ${cert.validTo})`);
  }
  const parsed = AsnConvert.parse(cert.raw, Certificate);
  const usage = parsed.tbsCertificate.extensions?.find((e) => e.extnID === id_ce_keyUsage);
  if (usage) {
    const bits = AsnConvert.parse(usage.extnValue, KeyUsage).toNumber();
    // KeyUsage.keyEncipherment is bit 2 (value 4).
    if ((bits & 4) === 0) throw refuse('its key usage does not allow keyEncipherment');
  }
  return { cert, parsed };
}

/** Checks the certificate without encrypting anything (the CLI checks before making a key). */
export function checkEscrowCertificate(pem: string): { subject: string; fingerprint256: string } {
  const { cert } = recipient(pem);
  return { subject: cert.subject, fingerprint256: cert.fingerprint256 };
}

/** DER ContentInfo(EnvelopedData) holding `content` for the certificate's key only. */
export function encryptForEscrow(pem: string, content: Uint8Array): Uint8Array {
  const { cert, parsed } = recipient(pem);
  const cek = randomBytes(32);
  const iv = randomBytes(16);
  try {
    const cipher = createCipheriv('aes-256-cbc', cek, iv);
    const ciphertext = Buffer.concat([cipher.update(content), cipher.final()]);
    const encryptedKey = publicEncrypt(
      { key: cert.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
      cek,
    );
    // Every field at its DEFAULT: DER leaves them out, an empty SEQUENCE.
    const oaep = new RsaEsOaepParams();
    const ktri = new KeyTransRecipientInfo({
      version: CMSVersion.v0,
      rid: new RecipientIdentifier({
        issuerAndSerialNumber: new IssuerAndSerialNumber({
          issuer: parsed.tbsCertificate.issuer,
          serialNumber: parsed.tbsCertificate.serialNumber,
        }),
      }),
      keyEncryptionAlgorithm: new KeyEncryptionAlgorithmIdentifier({
        algorithm: id_RSAES_OAEP,
        parameters: AsnConvert.serialize(oaep),
      }),
      encryptedKey: new OctetString(encryptedKey),
    });
    const enveloped = new EnvelopedData({
      version: CMSVersion.v0,
      recipientInfos: new RecipientInfos([new RecipientInfo({ ktri })]),
      encryptedContentInfo: new EncryptedContentInfo({
        contentType: id_data,
        contentEncryptionAlgorithm: new ContentEncryptionAlgorithmIdentifier({
          algorithm: AES_256_CBC,
          parameters: AsnConvert.serialize(new OctetString(iv)),
        }),
        encryptedContent: new EncryptedContent({ value: new OctetString(ciphertext) }),
      }),
    });
    const info = new ContentInfo({
      contentType: id_envelopedData,
      content: AsnConvert.serialize(enveloped),
    });
    return new Uint8Array(AsnConvert.serialize(info));
  } finally {
    cek.fill(0);
  }
}
