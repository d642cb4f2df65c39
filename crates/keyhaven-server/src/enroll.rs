//! TPM attestation key enrollment by credential activation (as Keylime's registrar does): a
//! client sends its TPM's endorsement key certificate and an attestation key's `TPM2B_PUBLIC`;
//! the broker checks the certificate up to a CA the operator trusts and answers with a
//! credential (`TPM2_MakeCredential`) for the AK's name; the TPM opens it
//! (`TPM2_ActivateCredential`) only if it holds both keys; the client sends the secret back,
//! and the AK is enrolled: its quotes are then `tpm` evidence (see [`crate::attest::TpmVerifier`]).
//!
//! - `POST /v1/attestation/tpm/challenge` `{ek_certificate, ak_public}` (base64):
//!   `{id, ak_name, id_object, encrypted_secret}` (base64 `TPM2B`s), valid for five minutes,
//!   answered on the same node.
//! - `POST /v1/attestation/tpm/activate` `{id, secret}`: `{ak, certified_by}`.
//!
//! And a registered key's own proof of where it lives: `POST /v1/clients/me/key-attestation`
//! `{attestation}` (what `keyhaven key attest` prints as `attestation`): a TPM certification of
//! the signing key by an attestation key the operator pinned or that enrolled above makes the
//! key tier 2 (see [`crate::attest::check_key_attestation`]).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64ct::{Base64, Encoding};
use serde_json::json;

use crate::auth::Caller;
use crate::broker::{Call, Params, decided, vault_response};
use crate::problem::ApiError;
use crate::server::{Inner, RawBody};

fn base64_param(p: &mut Params, name: &'static str, what: &str) -> Result<Vec<u8>, ApiError> {
    let text = p.string(name)?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid-request",
            format!("missing '{name}' ({what}, base64)"),
        )
    })?;
    if text.len() > 16 * 1024 {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("'{name}' is longer than 16 KiB"),
        ));
    }
    Base64::decode_vec(&text).map_err(|_| {
        ApiError::bad_request(
            "invalid-request",
            format!("'{name}' is not standard base64"),
        )
    })
}

fn no_tpm() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-tpm-attestation",
        "this broker does not accept TPM evidence: start it with --tpm-ek-ca naming the TPM \
         manufacturers' CA certificates",
    )
}

/// `POST /v1/attestation/tpm/challenge`.
pub(crate) async fn challenge(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let ek = base64_param(
        &mut p,
        "ek_certificate",
        "the endorsement key's certificate, DER",
    )?;
    let ak = base64_param(&mut p, "ak_public", "the attestation key's TPM2B_PUBLIC")?;
    let warnings = p.warnings();
    let call = Call {
        operation: "attestation.tpm-challenge",
        subject: "TPM attestation key".into(),
        path: String::new(),
        audit_success: false,
    };
    let client = caller.client_id.clone();
    let data = decided(inner, caller, None, call, move |broker, _, now| {
        let tpm = broker.tpm().ok_or_else(no_tpm)?;
        let c = tpm
            .challenge(&client, &ek, &ak, now)
            .map_err(|m| ApiError::bad_request("evidence-refused", m))?;
        Ok((
            json!({
                "id": c.id,
                "ak_name": c.ak_name,
                "id_object": Base64::encode_string(&c.id_object),
                "encrypted_secret": Base64::encode_string(&c.encrypted_secret),
            }),
            String::new(),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `POST /v1/attestation/tpm/activate`.
pub(crate) async fn activate(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let id = p
        .string("id")?
        .filter(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ApiError::bad_request("invalid-request", "'id' is the challenge's id"))?;
    let secret = zeroize::Zeroizing::new(base64_param(
        &mut p,
        "secret",
        "what TPM2_ActivateCredential returned",
    )?);
    let warnings = p.warnings();
    let call = Call {
        operation: "attestation.tpm-enroll",
        subject: format!("TPM credential {id}"),
        path: String::new(),
        audit_success: true,
    };
    let client = caller.client_id.clone();
    let data = decided(inner, caller, None, call, move |broker, _, now| {
        let tpm = broker.tpm().ok_or_else(no_tpm)?;
        let (ak, certified_by) = tpm
            .activate(&client, &id, &secret, now)
            .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, "evidence-refused", m))?;
        Ok((
            json!({ "ak": ak, "certified_by": certified_by }),
            format!("attestation key {ak} enrolled ({certified_by})"),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}

/// `POST /v1/clients/me/key-attestation`.
pub(crate) async fn key_attestation(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Extension(RawBody(body)): Extension<RawBody>,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(&body)?;
    let attestation = p.take("attestation").ok_or_else(|| {
        ApiError::bad_request(
            "invalid-request",
            "missing 'attestation' (what `keyhaven key attest` prints as attestation)",
        )
    })?;
    let attestation: keyhaven::KeyAttestation = serde_json::from_value(attestation)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("'attestation': {e}")))?;
    let warnings = p.warnings();
    let fingerprint = caller.fingerprint.clone();
    let call = Call {
        operation: "attestation.key",
        subject: format!("key {fingerprint}"),
        path: String::new(),
        audit_success: true,
    };
    let data = decided(inner, caller, None, call, move |broker, _, now| {
        let record = broker.storage().key(&fingerprint)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no registered key {fingerprint}"),
            )
        })?;
        let (ak, by) =
            crate::attest::check_key_attestation(broker, &attestation, &record.spki, now)?;
        crate::attest::record_proved_key(broker, &fingerprint, &ak, now)?;
        Ok((
            json!({
                "key": fingerprint,
                "attestation_key": ak,
                "certified_by": by,
                "tier": crate::attest::ATTESTED_KEY_TIER,
            }),
            format!("born in a TPM: certified by attestation key {ak} ({by})"),
        ))
    })
    .await?;
    Ok(vault_response(data, warnings))
}
