import type { Evidence } from './evidence.ts';
import { type AttestationFailure, AttestationCode as C } from './codes.ts';
import {
  type Activation,
  checkAkCertificate,
  checkEkCertificate,
  ekTemplateParameters,
  newActivation,
} from './enrol/index.ts';
import type { VerifierPolicy } from './policy.ts';
import type { AkPublic } from './tpm/index.ts';

/**
 * Is the AK a genuine TPM's? Either an attestation CA the policy trusts certified it (with
 * its Name), or this verifier ran credential activation against an EK whose certificate chains
 * to a trusted EK root, and recorded the AK Name with that certificate's hash.
 */
export interface AkTrust {
  failures: AttestationFailure[];
  enrolment: 'ak-certificate' | 'credential-activation' | 'none';
  ekCertificateSha256?: string;
  manufacturer?: string;
}

export async function checkAkTrust(
  evidence: Evidence,
  ak: AkPublic,
  context: { policy: VerifierPolicy; now: number; enrolled?: ReadonlyMap<string, string> },
): Promise<AkTrust> {
  const { policy } = context;
  const now = new Date(context.now);
  const failures: AttestationFailure[] = [];
  const akName = ak.name.toString('hex');
  let ekSha: string | undefined;
  let manufacturer: string | undefined;

  const ekCert = evidence.ek.certificate;
  if (ekCert && policy.ekRoots.length > 0) {
    const ek = await checkEkCertificate(ekCert, {
      roots: policy.ekRoots,
      intermediates: evidence.ek.chain ?? [],
      now,
    });
    if (ek.ok) {
      ekSha = ek.sha256;
      manufacturer = ek.tpm.manufacturer;
    } else {
      failures.push({ code: C.EkCertUntrusted, message: `${ek.message} (${ek.code})` });
    }
  }
  if (policy.allowedManufacturers) {
    if (!ekCert) {
      failures.push({
        code: C.EkCertMissing,
        message: 'the policy names TPM manufacturers but the evidence has no EK certificate',
      });
    } else if (ekSha && (!manufacturer || !policy.allowedManufacturers.includes(manufacturer))) {
      failures.push({
        code: C.ManufacturerNotAllowed,
        message: `the TPM's manufacturer (${manufacturer ?? 'not stated'}) is not one the policy allows`,
      });
    }
  }

  const akCert = evidence.ak.certificate;
  if (akCert && policy.akRoots.length > 0) {
    const checked = await checkAkCertificate(akCert, {
      roots: policy.akRoots,
      akPublicSpki: ak.key.export({ type: 'spki', format: 'der' }),
      akName: ak.name,
      now,
    });
    if (checked.ok) {
      return {
        failures,
        enrolment: 'ak-certificate',
        ...(ekSha ? { ekCertificateSha256: ekSha } : {}),
        ...(manufacturer ? { manufacturer } : {}),
      };
    }
    failures.push({ code: C.AkCertUntrusted, message: `${checked.message} (${checked.code})` });
  }

  const result = (enrolment: AkTrust['enrolment']): AkTrust => ({
    failures,
    enrolment,
    ...(ekSha ? { ekCertificateSha256: ekSha } : {}),
    ...(manufacturer ? { manufacturer } : {}),
  });
  if (policy.ekRoots.length === 0) {
    failures.push({
      code: C.AkNotEnrolled,
      message:
        'no attestation CA the policy trusts certified this AK, and no EK roots are configured',
    });
    return result('none');
  }
  if (!ekCert) {
    failures.push({ code: C.EkCertMissing, message: 'the evidence has no EK certificate' });
    return result('none');
  }
  if (!ekSha) return result('none'); // the EK certificate failed: reported above
  const enrolledWith = context.enrolled?.get(akName);
  if (enrolledWith === undefined) {
    failures.push({
      code: C.AkNotEnrolled,
      message: 'this AK has not been through credential activation with this verifier',
    });
    return result('none');
  }
  if (enrolledWith !== ekSha) {
    failures.push({
      code: C.EkMismatch,
      message: 'this AK was enrolled with a different EK than the one presented now',
    });
    return result('none');
  }
  return result('credential-activation');
}

/** What the verifier keeps of an activation it sent, and what it sends. */
export interface PendingActivation extends Activation {
  akName: string;
  ekSha256: string;
}

/**
 * The credential for an AK whose EK certificate the policy trusts: to be sent to the attester,
 * whose vault can recover it only on the TPM that holds that EK with that AK loaded.
 */
export async function enrolmentFor(
  evidence: Evidence,
  akName: string,
  policy: VerifierPolicy,
  now: number,
): Promise<
  { ok: true; activation: PendingActivation } | { ok: false; failures: AttestationFailure[] }
> {
  const cert = evidence.ek.certificate;
  if (!cert) {
    return {
      ok: false,
      failures: [{ code: C.EkCertMissing, message: 'the evidence has no EK certificate' }],
    };
  }
  const ek = await checkEkCertificate(cert, {
    roots: policy.ekRoots,
    intermediates: evidence.ek.chain ?? [],
    now: new Date(now),
  });
  if (!ek.ok) {
    return {
      ok: false,
      failures: [{ code: C.EkCertUntrusted, message: `${ek.message} (${ek.code})` }],
    };
  }
  const params = ekTemplateParameters(ek.ekPublic);
  if (!params) {
    return {
      ok: false,
      failures: [
        {
          code: C.EkCertUntrusted,
          message: 'the EK is of a kind credential activation does not handle',
        },
      ],
    };
  }
  const activation = newActivation({
    ekPublic: ek.ekPublic,
    ...params,
    akName: Buffer.from(akName, 'hex'),
  });
  return { ok: true, activation: { ...activation, akName, ekSha256: ek.sha256 } };
}
