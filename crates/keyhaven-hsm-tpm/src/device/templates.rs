//! Object templates and names: the storage primary key, signing keys, curves.

use super::*;

/// The curve, hash and sizes of an ECDSA algorithm on the TPM.
pub(crate) struct Curve {
    pub(crate) curve: EccCurve,
    pub(crate) hash: HashingAlgorithm,
    /// Bytes of a coordinate or a signature half.
    pub(crate) size: usize,
}

/// The TPM parameters of a keyhaven algorithm, or why the TPM cannot have it.
pub(crate) fn curve_of(alg: Algorithm) -> Result<Curve, Error> {
    match alg {
        Algorithm::EcdsaP256 | Algorithm::EcdhP256 => Ok(Curve {
            curve: EccCurve::NistP256,
            hash: HashingAlgorithm::Sha256,
            size: 32,
        }),
        Algorithm::EcdsaP384 | Algorithm::EcdhP384 => Ok(Curve {
            curve: EccCurve::NistP384,
            hash: HashingAlgorithm::Sha384,
            size: 48,
        }),
        Algorithm::Ed25519 | Algorithm::X25519 => Err(Error::Unsupported {
            operation: "generate a key in a TPM",
            reason: format!(
                "{alg} is not available on TPM 2.0 devices or swtpm (the TPM 2.0 library \
                 specification defines no Curve25519 algorithms); use p384 or p256, or a \
                 software store for {alg}"
            ),
        }),
        _ => Err(Error::Unsupported {
            operation: "generate a key in a TPM",
            reason: format!("{alg} is not supported by the TPM backend"),
        }),
    }
}

/// The TPM Name of an object with this public area: its name algorithm's identifier, then that
/// hash of the marshalled `TPMT_PUBLIC` (TPM 2.0 Part 1, "Names"). Two objects with the same Name
/// have the same key, attributes and policy.
pub(crate) fn name_of(public: &Public) -> Result<Vec<u8>, TpmError> {
    use sha2::{Digest as _, Sha256, Sha384};
    let bytes = public.marshall().map_err(|e| TpmError::Wrapper {
        command: "computing a Name",
        source: e,
    })?;
    let (alg, digest): (u16, Vec<u8>) = match public.name_hashing_algorithm() {
        HashingAlgorithm::Sha256 => (0x000B, Sha256::digest(&bytes).to_vec()),
        HashingAlgorithm::Sha384 => (0x000C, Sha384::digest(&bytes).to_vec()),
        other => {
            return Err(TpmError::BadResponse {
                what: "public area",
                reason: format!("its name algorithm {other:?} is not SHA-256 or SHA-384"),
            });
        }
    };
    let mut name = alg.to_be_bytes().to_vec();
    name.extend_from_slice(&digest);
    Ok(name)
}

/// The storage primary key's template: ECC P-256, AES-128-CFB, restricted decryption, from the
/// TCG "TPM v2.0 Provisioning Guidance" SRK template (empty unique field, no policy), which is
/// also what `tpm2_createprimary -C o -g sha256 -G ecc256:null:aes128cfb` makes. The same
/// template under the same owner seed always gives the same key.
///
/// # Errors
/// Only if tss-esapi rejects the (constant) template, which would be a bug.
pub fn srk_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(false)
                .with_is_decryption_key(true)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A key's template: unrestricted and single-use, `fixedTPM|fixedParent|sensitiveDataOrigin`
/// plus `userWithAuth` unless it has a policy (with `userWithAuth` a passphrase alone would
/// bypass the PCR policy). ECDSA keys are `sign` only, with the curve's hash; ECDH keys are
/// `decrypt` only, for `TPM2_ECDH_ZGen` (the scheme left open: `TPM_ALG_NULL`).
pub(crate) fn key_template(alg: Algorithm, policy: Option<Digest>) -> DevResult<Public> {
    let c = curve_of(alg)?;
    let agrees = alg.can_agree();
    let wrap = |e| TpmError::Wrapper {
        command: "building the key template",
        source: e,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(policy.is_none())
        .with_sign_encrypt(!agrees)
        .with_decrypt(agrees)
        .with_restricted(false)
        .build()
        .map_err(wrap)?;
    let params = if agrees {
        PublicEccParametersBuilder::new()
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_ecc_scheme(EccScheme::Null)
            .with_curve(c.curve)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .with_is_signing_key(false)
            .with_is_decryption_key(true)
            .with_restricted(false)
            .build()
    } else {
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            EccScheme::EcDsa(HashScheme::new(c.hash)),
            c.curve,
        )
        .build()
    }
    .map_err(wrap)?;
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default());
    if let Some(digest) = policy {
        builder = builder.with_auth_policy(digest);
    }
    Ok(builder.build().map_err(wrap)?)
}

/// The attestation key's template: ECDSA P-256 with SHA-256, restricted, sign only, born in the
/// TPM and bound to it (`fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth`). Made as a
/// primary of the endorsement hierarchy, it is the same key every time on one TPM (its
/// endorsement seed), and it signs only what the TPM itself makes (certifications, quotes).
pub(crate) fn ak_template() -> DevResult<Public> {
    let wrap = |e| TpmError::Wrapper {
        command: "building the attestation key template",
        source: e,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(true)
        .build()
        .map_err(wrap)?;
    let params = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()
        .map_err(wrap)?;
    Ok(PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(wrap)?)
}

/// Creates the storage primary key, starting the TPM up first if it was never started.
pub(super) fn create_primary(ctx: &mut Context) -> Result<KeyHandle, TpmError> {
    let template = srk_template().map_err(|e| TpmError::Wrapper {
        command: "building the storage key template",
        source: e,
    })?;
    for attempt in 0..2 {
        let result = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
        });
        match result {
            Ok(created) => return Ok(created.key_handle),
            Err(e) => match raw_rc(&e) {
                Some(code) if code.from_tpm() && code.base() == rc::INITIALIZE && attempt == 0 => {
                    ctx.execute_without_session(|c| c.startup(StartupType::Clear))
                        .map_err(wrap_call("TPM2_Startup", None))?;
                }
                Some(code)
                    if code.from_tpm()
                        && matches!(
                            code.base(),
                            rc::AUTH_FAIL | rc::BAD_AUTH | rc::AUTH_MISSING
                        ) =>
                {
                    return Err(TpmError::OwnerAuth { rc: code });
                }
                _ => return Err(TpmError::call("TPM2_CreatePrimary", None, e)),
            },
        }
    }
    Err(TpmError::BadResponse {
        what: "startup state",
        reason: "the TPM still reports TPM_RC_INITIALIZE after TPM2_Startup".into(),
    })
}

/// Left-pads a big-endian integer to `size` bytes (the TPM drops leading zero bytes of r and s).
pub(crate) fn left_pad(value: &[u8], size: usize) -> Result<Vec<u8>, TpmError> {
    let trimmed = {
        let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
        &value[first..]
    };
    if trimmed.len() > size {
        return Err(TpmError::BadResponse {
            what: "TPM response",
            reason: format!("a {}-byte value for a {size}-byte curve", trimmed.len()),
        });
    }
    let mut out = vec![0u8; size - trimmed.len()];
    out.extend_from_slice(trimmed);
    Ok(out)
}
