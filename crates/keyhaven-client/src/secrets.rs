//! The key broker's secrets, as typed calls: a release is decrypted with a key made for that
//! one request and dropped after, and its receipt is checked against the pinned server key
//! before anything is returned.

use keyhaven_core::{Algorithm, SecretBytes};
use keyhaven_crypto::{default_provider, jwe, jws};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::wire::{Release, SecretOptions, SecretView, SecretWritten, VaultData};

/// The JWS `typ` of a release receipt.
pub const RECEIPT_TYPE: &str = "keyhaven-release-receipt+jwt";

/// What a release asked with [`Client::release_or_capability`] gives.
#[derive(Debug)]
pub enum ReleaseOutcome {
    /// The secret.
    Secret(Released),
    /// A narrower capability instead: this client's tier is below the secret's `min_tier`,
    /// and its owner declared a fallback.
    Capability(Capability),
}

/// A capability token given instead of a secret (see [`ReleaseOutcome::Capability`]): use it
/// with [`Client::with_token`] on this client, whose key holds it.
#[derive(Clone, serde::Deserialize)]
pub struct Capability {
    /// The token (`kht_...`).
    pub token: String,
    /// Its revocation id.
    pub id: String,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
    /// What it allows.
    pub rights: Vec<crate::tokens::Right>,
    /// This client's tier, as the server assessed it.
    #[serde(default)]
    pub requester_tier: u8,
    /// The secret's `min_tier`.
    #[serde(default)]
    pub min_tier: u8,
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capability")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

/// A secret released to this client, with the receipt to keep.
pub struct Released {
    /// The secret.
    pub secret: SecretBytes,
    /// The version.
    pub version: u64,
    /// The tier it is kept at.
    pub tier: u8,
    /// This client's tier, as the server assessed it.
    pub requester_tier: u8,
    /// The receipt as the server signed it (compact JWS): store it; `keyhaven` or any JOSE
    /// library checks it later with the server's public key.
    pub receipt: String,
    /// The receipt's claims, checked.
    pub claims: Value,
}

impl std::fmt::Debug for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Released")
            .field("version", &self.version)
            .field("tier", &self.tier)
            .field("requester_tier", &self.requester_tier)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// The report data evidence for a release must bind: SHA-256 over a label, the requester's
/// key fingerprint, the secret's path and the RFC 7638 thumbprint of the ephemeral key the
/// secret is encrypted to, each length-prefixed. A TEE puts it in its report (SEV-SNP
/// `REPORT_DATA`, TDX `REPORTDATA`, a TPM quote's nonce).
pub fn report_data(key_fingerprint: &str, path: &str, epk_thumbprint: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        "keyhaven release evidence v1",
        key_fingerprint,
        path,
        epk_thumbprint,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// A secret path as URL path segments: the server checks it too; this keeps a path with `?`,
/// `#`, `%` or `..` from becoming another route.
fn checked(path: &str) -> Result<&str> {
    let ok = !path.is_empty()
        && path.len() <= 512
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(path)
    } else {
        Err(ClientError::InvalidInput(format!(
            "'{path}' is not a secret path: segments of letters, digits, '.', '_' or '-' \
             separated by '/'"
        )))
    }
}

/// Checks a receipt: signed by `server` as a release receipt, for this JWE, this ephemeral
/// key, this path and client.
///
/// # Errors
/// [`ClientError::Receipt`] naming what does not match.
pub fn verify_receipt(
    receipt: &str,
    server: &keyhaven_core::PublicKey,
    jwe: &str,
    path: &str,
) -> Result<Value> {
    let claims = jws::verify(receipt, server, RECEIPT_TYPE)
        .map_err(|e| ClientError::Receipt(e.to_string()))?;
    let digest = hex::encode(Sha256::digest(jwe.as_bytes()));
    if claims["jwe_sha256"] != digest.as_str() || claims["path"] != path {
        return Err(ClientError::Receipt("it is for another release".into()));
    }
    Ok(claims)
}

impl Client {
    /// Writes a new version of the secret at `path`; `options` ask for a tier and may accept
    /// less down to a floor (`create_with_fallback`): the answer says the tier reached.
    ///
    /// # Errors
    /// [`ClientError::Problem`]: 503 `tier-unavailable` when the broker cannot reach the
    /// floor, 409 `tier-conflict` for a secret kept at another tier, and as
    /// [`Client::send`].
    pub async fn put_secret(
        &self,
        path: &str,
        value: &[u8],
        options: SecretOptions,
    ) -> Result<SecretWritten> {
        use base64ct::{Base64, Encoding};
        let url = self
            .url(&format!("v1/secrets/{}", checked(path)?))?
            .as_str()
            .to_owned();
        let b64 = zeroize::Zeroizing::new(Base64::encode_string(value));
        let mut body =
            serde_json::to_value(options).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        body["value"] = Value::String(b64.as_str().to_owned());
        let bytes = zeroize::Zeroizing::new(body.to_string().into_bytes());
        if let Some(Value::String(s)) = body.get_mut("value") {
            zeroize::Zeroize::zeroize(s);
        }
        let out: VaultData<SecretWritten> =
            self.send("PUT", &url, Some(bytes.to_vec())).await?.json()?;
        Ok(out.data)
    }

    /// The secret's metadata (never its value).
    ///
    /// # Errors
    /// 404 for no such secret; as [`Client::send`].
    pub async fn secret_info(&self, path: &str) -> Result<SecretView> {
        let out: VaultData<SecretView> = self
            .call(
                "GET",
                &format!("v1/secrets/{}", checked(path)?),
                None::<&()>,
            )
            .await?;
        Ok(out.data)
    }

    /// This client's secrets under `prefix`.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretView>> {
        #[derive(serde::Deserialize)]
        struct Listing {
            secrets: Vec<SecretView>,
        }
        let mut url = self.url("v1/secrets")?;
        url.query_pairs_mut().append_pair("prefix", prefix);
        let out: VaultData<Listing> = self.send("GET", url.as_str(), None).await?.json()?;
        Ok(out.data.secrets)
    }

    /// Deletes the secret and every version.
    ///
    /// # Errors
    /// 404 for no such secret; as [`Client::send`].
    pub async fn delete_secret(&self, path: &str) -> Result<()> {
        let _: Value = self
            .call(
                "DELETE",
                &format!("v1/secrets/{}", checked(path)?),
                None::<&()>,
            )
            .await?;
        Ok(())
    }

    /// Releases the secret (its latest version, or `version`): encrypted by the server to a
    /// P-384 key made for this request, decrypted here, its receipt checked.
    ///
    /// # Errors
    /// 403 `tier-too-low` when this key's tier is below the secret's; 404; a receipt that
    /// does not check ([`ClientError::Receipt`]); as [`Client::send`].
    pub async fn release_secret(&self, path: &str, version: Option<u64>) -> Result<Released> {
        self.release_secret_with(path, version, |_| None).await
    }

    /// [`Client::release_secret`] with evidence: `evidence` gets the report data the evidence
    /// must bind ([`report_data`] of this client's key, the path and the ephemeral key made
    /// for this request) and returns the evidence document (`{"type": ...}`), or `None`.
    ///
    /// # Errors
    /// As [`Client::release_secret`]; 400 `evidence-not-accepted`, 403 `evidence-refused`.
    pub async fn release_secret_with(
        &self,
        path: &str,
        version: Option<u64>,
        evidence: impl FnOnce(&[u8; 32]) -> Option<Value>,
    ) -> Result<Released> {
        match self.release_inner(path, version, evidence, false).await? {
            ReleaseOutcome::Secret(r) => Ok(r),
            ReleaseOutcome::Capability(_) => Err(ClientError::BadResponse(
                "a capability came back to a release that did not ask for one".into(),
            )),
        }
    }

    /// [`Client::release_secret`], taking what the secret's owner gives a requester below its
    /// `min_tier` instead (see [`Client::set_secret_fallback`]): the secret, or a narrower,
    /// short-lived capability token held by this client's key.
    ///
    /// # Errors
    /// As [`Client::release_secret`] (403 `tier-too-low` when the secret has no fallback).
    pub async fn release_or_capability(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<ReleaseOutcome> {
        self.release_inner(path, version, |_| None, true).await
    }

    /// [`Client::release_or_capability`] with evidence (see
    /// [`Client::release_secret_with`]): evidence that lifts this client to the secret's
    /// `min_tier` gets the secret, not the capability.
    ///
    /// # Errors
    /// As [`Client::release_secret_with`].
    pub async fn release_or_capability_with(
        &self,
        path: &str,
        version: Option<u64>,
        evidence: impl FnOnce(&[u8; 32]) -> Option<Value>,
    ) -> Result<ReleaseOutcome> {
        self.release_inner(path, version, evidence, true).await
    }

    /// Declares what a requester below the secret's `min_tier` gets instead of a refusal: a
    /// capability token of `rights` (operations that disclose no secret: `secret.read`,
    /// `secret.list`, `transit.read`, `transit.list`, `transit.encrypt`, `transit.verify`) on
    /// this client's resources, lasting `ttl` seconds (default 300, at most 3600). Only the
    /// owner declares one (a token cannot).
    ///
    /// # Errors
    /// 400 for another operation or lifetime; 404 for an unknown secret; as [`Client::send`].
    pub async fn set_secret_fallback(
        &self,
        path: &str,
        rights: &[crate::tokens::Right],
        ttl: Option<u32>,
    ) -> Result<()> {
        let mut body = json!({ "rights": rights });
        if let Some(t) = ttl {
            body["ttl"] = t.into();
        }
        let _: VaultData<Value> = self
            .call(
                "PUT",
                &format!("v1/secret-fallbacks/{}", checked(path)?),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Removes the secret's fallback: a requester below `min_tier` gets nothing again.
    ///
    /// # Errors
    /// 404 for an unknown secret; as [`Client::send`].
    pub async fn clear_secret_fallback(&self, path: &str) -> Result<()> {
        let _: VaultData<Value> = self
            .call(
                "DELETE",
                &format!("v1/secret-fallbacks/{}", checked(path)?),
                None::<&()>,
            )
            .await?;
        Ok(())
    }

    async fn release_inner(
        &self,
        path: &str,
        version: Option<u64>,
        evidence: impl FnOnce(&[u8; 32]) -> Option<Value>,
        accept_capability: bool,
    ) -> Result<ReleaseOutcome> {
        let ephemeral = default_provider()
            .generate(Algorithm::EcdhP384)
            .map_err(|e| ClientError::InvalidInput(format!("an ephemeral key: {e}")))?;
        let epk = jwe::public_jwk(ephemeral.public_key())
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let rd = report_data(
            &self.signer_fingerprint(),
            checked(path)?,
            &jwe::thumbprint(&epk),
        );
        let mut body = json!({ "epk": epk });
        if let Some(v) = version {
            body["version"] = v.into();
        }
        if let Some(e) = evidence(&rd) {
            body["evidence"] = e;
        }
        if accept_capability {
            body["accept_capability"] = true.into();
        }
        let out: VaultData<Value> = self
            .call(
                "POST",
                &format!("v1/release/{}", checked(path)?),
                Some(&body),
            )
            .await?;
        if accept_capability && let Some(c) = out.data.get("capability") {
            let bad = |e: serde_json::Error| {
                ClientError::BadResponse(format!("the capability given instead: {e}"))
            };
            let mut capability: Capability = serde_json::from_value(c.clone()).map_err(bad)?;
            capability.requester_tier =
                serde_json::from_value(out.data["requester_tier"].clone()).map_err(bad)?;
            capability.min_tier =
                serde_json::from_value(out.data["min_tier"].clone()).map_err(bad)?;
            return Ok(ReleaseOutcome::Capability(capability));
        }
        let r: Release = serde_json::from_value(out.data)
            .map_err(|e| ClientError::BadResponse(format!("the release: {e}")))?;
        let claims = verify_receipt(&r.receipt, self.server_key(), &r.jwe, path)?;
        let thumb = jwe::thumbprint(&epk);
        if claims["epk_thumbprint"] != thumb.as_str()
            || claims["version"] != r.version
            || version.is_some_and(|v| claims["version"] != v)
        {
            return Err(ClientError::Receipt(
                "it does not describe this release (another key, or another version)".into(),
            ));
        }
        // Without a token, the secret must be this client's own: a release from another
        // tenant would be someone else's value.
        if !self.has_token() && claims["tenant"] != claims["sub"] {
            return Err(ClientError::Receipt(
                "it releases another tenant's secret, and this client sent no token".into(),
            ));
        }
        let (_, secret) = jwe::decrypt(&r.jwe, ephemeral.as_ref())
            .map_err(|e| ClientError::BadResponse(format!("the released JWE: {e}")))?;
        Ok(ReleaseOutcome::Secret(Released {
            secret,
            version: r.version,
            tier: r.tier,
            requester_tier: r.requester_tier,
            receipt: r.receipt,
            claims,
        }))
    }

    /// Rotates this client's secret KEK at `tier` (default: the broker's) and rewraps every
    /// envelope under it; returns the new KEK version and how many envelopes moved.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn rotate_secret_kek(&self, tier: Option<u8>) -> Result<(u32, u64)> {
        #[derive(serde::Deserialize)]
        struct Rotated {
            kek_version: u32,
            rewrapped: u64,
        }
        let body = match tier {
            Some(t) => json!({ "tier": t }),
            None => json!({}),
        };
        let out: VaultData<Rotated> = self
            .call("POST", "v1/secrets-kek/rotate", Some(&body))
            .await?;
        Ok((out.data.kek_version, out.data.rewrapped))
    }

    /// Admins: vouches that the registered key `fingerprint` lives in hardware the admin
    /// enrolled, giving it `tier` (0 to 2) for releases.
    ///
    /// # Errors
    /// 403 for a key that is not an admin's; 404 for an unknown key; as [`Client::send`].
    pub async fn admin_vouch(&self, fingerprint: &str, tier: u8, reason: &str) -> Result<()> {
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::InvalidInput(format!(
                "{fingerprint:?} is not a key fingerprint (64 hex digits)"
            )));
        }
        let body = json!({ "tier": tier, "reason": reason });
        let _: Value = self
            .call(
                "POST",
                &format!("v1/admin/keys/{}/tier", fingerprint.to_ascii_lowercase()),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Admins: revokes evidence carrying `value` of `kind` (`measurement`: hex; `tcb`:
    /// `PLATFORM:COMPONENT<N` or `=N`; `advisory`: an id such as `INTEL-SA-00837`): later
    /// releases on evidence carrying it are refused. Answers with the revocation, the releases
    /// the audit trail shows were made on evidence carrying it (`affected`), and, with
    /// `rewrap`, the KEKs rotated and rewrapped for them (`rewrapped`).
    ///
    /// # Errors
    /// 400 for a bad kind, value or reason; 403 for a key that is not an admin's; as
    /// [`Client::send`].
    pub async fn admin_revoke_evidence(
        &self,
        kind: &str,
        value: &str,
        reason: &str,
        rewrap: bool,
    ) -> Result<Value> {
        let body = json!({ "kind": kind, "value": value, "reason": reason, "rewrap": rewrap });
        let out: VaultData<Value> = self
            .call("POST", "v1/admin/attestation/revocations", Some(&body))
            .await?;
        Ok(out.data)
    }

    /// Proves this client's signing key lives in a TPM: sends its key attestation (a
    /// `keyhaven::KeyAttestation`, as JSON). A TPM certification by an attestation key the
    /// server trusts makes the key tier 2. Answers `{key, attestation_key, certified_by, tier}`.
    ///
    /// # Errors
    /// 400 for a token's statement (not proof) or a malformed attestation; 403 for an
    /// untrusted attestation key or a certification of another key; as [`Client::send`].
    pub async fn submit_key_attestation(&self, attestation: &Value) -> Result<Value> {
        let body = json!({ "attestation": attestation });
        let out: VaultData<Value> = self
            .call("POST", "v1/clients/me/key-attestation", Some(&body))
            .await?;
        Ok(out.data)
    }

    /// Admins: the evidence revocations in force.
    ///
    /// # Errors
    /// As [`Client::admin_revoke_evidence`].
    pub async fn admin_evidence_revocations(&self) -> Result<Value> {
        let out: VaultData<Value> = self
            .call("GET", "v1/admin/attestation/revocations", None::<&()>)
            .await?;
        Ok(out.data["revocations"].clone())
    }

    /// Admins: the releases the audit trail shows were made on evidence carrying `value` of
    /// `kind`, without revoking anything.
    ///
    /// # Errors
    /// As [`Client::admin_revoke_evidence`].
    pub async fn admin_evidence_affected(&self, kind: &str, value: &str) -> Result<Value> {
        let body = json!({ "kind": kind, "value": value });
        let out: VaultData<Value> = self
            .call("POST", "v1/admin/attestation/affected", Some(&body))
            .await?;
        Ok(out.data["affected"].clone())
    }
}

impl Client {
    /// Admins: loads the release policy (Rego) of a path prefix; returns its SHA-256.
    ///
    /// # Errors
    /// 400 `policy-invalid` with the compiler's message (the old policy stays); 403 for a
    /// key that is not an admin's; as [`Client::send`].
    pub async fn admin_put_policy(&self, prefix: &str, rego: &str) -> Result<String> {
        let body = json!({ "prefix": prefix, "rego": rego });
        let out: VaultData<Value> = self.call("PUT", "v1/admin/policies", Some(&body)).await?;
        Ok(out.data["sha256"].as_str().unwrap_or_default().to_owned())
    }

    /// Admins: every release policy (prefix, sha256, rego, updated_at, updated_by).
    ///
    /// # Errors
    /// As [`Client::admin_put_policy`].
    pub async fn admin_policies(&self) -> Result<Vec<Value>> {
        let out: VaultData<Value> = self.call("GET", "v1/admin/policies", None::<&()>).await?;
        Ok(out.data["policies"].as_array().cloned().unwrap_or_default())
    }

    /// Admins: removes the policy of `prefix`.
    ///
    /// # Errors
    /// 404 for none; as [`Client::admin_put_policy`].
    pub async fn admin_delete_policy(&self, prefix: &str) -> Result<()> {
        let body = json!({ "prefix": prefix });
        let _: Value = self
            .call("DELETE", "v1/admin/policies", Some(&body))
            .await?;
        Ok(())
    }

    /// What a release of the secret at `path` to this client would decide, and why (the
    /// tier rule, the policy that applies, its reasons), without releasing it.
    ///
    /// # Errors
    /// 404 for no such secret; as [`Client::send`].
    pub async fn explain_release(&self, path: &str) -> Result<Value> {
        let out: VaultData<Value> = self
            .call(
                "POST",
                &format!("v1/policy/explain-release/{}", checked(path)?),
                Some(&json!({})),
            )
            .await?;
        Ok(out.data)
    }
}
