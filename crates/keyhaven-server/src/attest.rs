//! Evidence in, a tier out: the interface attestation verifiers plug into (the attestation
//! crate brings TPM, SEV-SNP, TDX and GPU verifiers), and the `sample` verifier for
//! development, which is off unless the operator turns it on and never reaches tier 2.
//!
//! A release request may carry `evidence` (`{"type": "...", ...}`). Its verifier checks it
//! binds the release's **report data**: SHA-256 over a label, the requester's key
//! fingerprint, the path and the thumbprint of the ephemeral key the secret is encrypted to
//! ([`report_data`]), so evidence made for one release, key or requester does nothing for
//! another. Results are cached for [`ATTESTATION_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How long a verified piece of evidence is remembered.
pub const ATTESTATION_TTL: Duration = Duration::from_secs(60);
/// The most results remembered.
const MAX_CACHED: usize = 10_000;

/// What verified evidence shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The evidence type.
    pub kind: String,
    /// The tier it supports.
    pub tier: u8,
    /// The claims, normalised (platform, measurements, debug, TCB status, ...).
    pub claims: Value,
}

/// A verifier of one evidence type.
pub trait EvidenceVerifier: Send + Sync + 'static {
    /// The `type` it reads (`sample`, `tpm`, `sev-snp`, `tdx`, `nvidia-gpu`).
    fn kind(&self) -> &'static str;

    /// Verifies `evidence` made for `report_data` at `now` (seconds since the epoch).
    ///
    /// # Errors
    /// Why it does not verify, for the requester (it is audited).
    fn verify(&self, evidence: &Value, report_data: &[u8], now: u64) -> Result<Attested, String>;
}

pub use keyhaven_client::secrets::report_data;

/// Development evidence: `{"type": "sample", "tier": N, "report_data": "<hex>"}`. It proves
/// nothing about the machine, so it supports at most tier 1 whatever it says.
#[derive(Debug, Default)]
pub struct SampleVerifier;

/// The highest tier sample evidence supports.
pub const SAMPLE_MAX_TIER: u8 = 1;

impl EvidenceVerifier for SampleVerifier {
    fn kind(&self) -> &'static str {
        "sample"
    }

    fn verify(&self, evidence: &Value, report_data: &[u8], _now: u64) -> Result<Attested, String> {
        let bound = evidence["report_data"].as_str().unwrap_or("");
        if !bound.eq_ignore_ascii_case(&hex::encode(report_data)) {
            return Err("the sample evidence is not bound to this release's report data".into());
        }
        let claimed = evidence["tier"].as_u64().unwrap_or(0);
        let tier = u8::try_from(claimed.min(u64::from(SAMPLE_MAX_TIER))).unwrap_or(0);
        // What the requester says it measured (hex strings, at most 16): claimed, not proved,
        // like everything sample evidence says; it lets development exercise measurement
        // policies and revocation.
        let mut measurements = serde_json::Map::new();
        if let Some(m) = evidence["measurements"].as_object() {
            for (name, v) in m.iter().take(16) {
                if let Some(h) = v
                    .as_str()
                    .filter(|h| h.len() <= 128 && hex::decode(h).is_ok())
                {
                    measurements.insert(name.chars().take(40).collect(), json!(h));
                }
            }
        }
        Ok(Attested {
            kind: "sample".into(),
            tier,
            claims: json!({
                "platform": "sample",
                "claimed_tier": claimed,
                "debug": true,
                "measurements": measurements,
            }),
        })
    }
}

/// The text field `name` of `kind` evidence, or what is missing.
fn text<'a>(evidence: &'a Value, kind: &str, name: &str, what: &str) -> Result<&'a str, String> {
    evidence[name]
        .as_str()
        .ok_or_else(|| format!("{kind} evidence needs '{name}' ({what})"))
}

/// What a verifier of `kind` attests, from its claims: `known` when the policy affirmed its
/// code (reference values matched), else `unknown`.
fn attested(kind: &str, known: u8, unknown: u8, claims: &keyhaven_attest::Claims) -> Attested {
    let tier = if claims.trust.executables == keyhaven_attest::Trust::Affirming {
        known
    } else {
        unknown
    };
    Attested {
        kind: kind.into(),
        tier,
        claims: serde_json::to_value(claims).unwrap_or(Value::Null),
    }
}

/// The base64 field `name` of `kind` evidence, decoded.
fn base64_field(evidence: &Value, kind: &str, name: &str, what: &str) -> Result<Vec<u8>, String> {
    use base64ct::{Base64, Encoding};
    Base64::decode_vec(text(evidence, kind, name, what)?)
        .map_err(|_| format!("'{name}' is not standard base64 ({what})"))
}

/// A CPU TEE report's 64 bytes of report data: the binding (this release's 32 bytes, or a
/// KBS session's 48), then zeros.
fn report_data_64(report_data: &[u8]) -> Result<[u8; 64], String> {
    let mut expected = [0u8; 64];
    expected
        .get_mut(..report_data.len())
        .ok_or_else(|| {
            format!(
                "{} bytes of report data do not fit in 64",
                report_data.len()
            )
        })?
        .copy_from_slice(report_data);
    Ok(expected)
}

/// AMD SEV-SNP evidence (`keyhaven_attest::snp`): `{"type": "sev-snp", "report": base64 of
/// the 1184-byte report, "vcek": base64 of the VCEK (or VLEK) certificate's DER, "chain": AMD's
/// certificate chain, PEM}`. The report's 64 bytes of report data must be this release's 32
/// (see [`report_data`]) followed by 32 zero bytes. A confidential VM whose launch measurement
/// is one the operator named reaches tier 2 (its memory is the guest's alone, and its code is
/// known); any other genuine SNP guest is tier 1, since anyone can rent one and run their own
/// code in it. No GPU is attested here (tiers 3 and 4 need one).
#[derive(Debug, Default)]
pub struct SnpVerifier {
    policy: keyhaven_attest::snp::Policy,
}

/// The tier SEV-SNP evidence of a known launch measurement supports.
pub const SNP_TIER: u8 = 2;
/// The tier of a genuine confidential VM (SEV-SNP or TDX) whose code nobody named.
pub const SNP_UNKNOWN_CODE_TIER: u8 = 1;

impl SnpVerifier {
    /// A verifier holding evidence to `policy` (debug, migration agent, minimum TCB,
    /// reference measurements, roots).
    pub fn new(policy: keyhaven_attest::snp::Policy) -> Self {
        SnpVerifier { policy }
    }
}

impl EvidenceVerifier for SnpVerifier {
    fn kind(&self) -> &'static str {
        "sev-snp"
    }

    fn verify(&self, evidence: &Value, report_data: &[u8], now: u64) -> Result<Attested, String> {
        let report = base64_field(evidence, "sev-snp", "report", "the report")?;
        let vcek = base64_field(evidence, "sev-snp", "vcek", "the certificate's DER")?;
        let chain = text(evidence, "sev-snp", "chain", "PEM")?;
        let expected = report_data_64(report_data)?;
        let claims = keyhaven_attest::snp::verify(
            &keyhaven_attest::snp::Evidence {
                report: &report,
                vcek: &vcek,
                chain,
            },
            &self.policy,
            Some(&expected),
            now,
        )
        .map_err(|e| e.to_string())?;
        Ok(attested(
            "sev-snp",
            SNP_TIER,
            SNP_UNKNOWN_CODE_TIER,
            &claims,
        ))
    }
}

/// Intel TDX evidence (`keyhaven_attest::tdx`): `{"type": "tdx", "quote": base64 of the
/// quote (version 4 or 5, with its PCK chain), "collateral": Intel's DCAP collateral for the
/// platform, in the JSON form a PCCS serves}`. The collateral is the requester's to fetch:
/// everything in it is signed by Intel and checked up to Intel's pinned root, and it must be
/// current (its TCB Info and QE Identity within their dates, its CRLs not past their next
/// update). The quote's report data must be this release's 32 bytes followed by 32 zeros. A
/// TD whose MRTD the operator named reaches tier 2; any other genuine TD is tier 1.
#[derive(Debug, Default)]
pub struct TdxVerifier {
    policy: keyhaven_attest::tdx::Policy,
}

/// The tier TDX evidence of a known MRTD supports.
pub const TDX_TIER: u8 = 2;

impl TdxVerifier {
    /// A verifier holding quotes to `policy` (TCB statuses, refused advisories, debug,
    /// reference MRTDs).
    pub fn new(policy: keyhaven_attest::tdx::Policy) -> Self {
        TdxVerifier { policy }
    }
}

impl EvidenceVerifier for TdxVerifier {
    fn kind(&self) -> &'static str {
        "tdx"
    }

    fn verify(&self, evidence: &Value, report_data: &[u8], now: u64) -> Result<Attested, String> {
        let quote = base64_field(evidence, "tdx", "quote", "the quote")?;
        let collateral: keyhaven_attest::tdx::Collateral =
            serde_json::from_value(evidence["collateral"].clone()).map_err(|e| {
                format!("tdx evidence needs 'collateral' (Intel's DCAP collateral, as a PCCS serves it): {e}")
            })?;
        let expected = report_data_64(report_data)?;
        let claims =
            keyhaven_attest::tdx::verify(&quote, &collateral, &self.policy, Some(&expected), now)
                .map_err(|e| e.to_string())?;
        Ok(attested("tdx", TDX_TIER, SNP_UNKNOWN_CODE_TIER, &claims))
    }
}

/// TPM 2.0 evidence (`keyhaven_attest::tpm`): `{"type": "tpm", "ak": base64 of the
/// attestation key's TPM2B_PUBLIC, "quote": base64 of the TPMS_ATTEST, "signature": base64 of
/// the TPMT_SIGNATURE, "pcrs": {"0": hex, ...}}`, the quote's extra data this release's 32
/// bytes; or the shape Trustee's TPM attester sends over KBS (`{"tpm_quote": {"message",
/// "signature", "pcrs": [hex, ...]}, "ak_public": base64 SubjectPublicKeyInfo}`, see
/// [`crate::kbs`]), its AK found among the enrolled ones by its key. The AK must have been enrolled first, by credential activation against an
/// endorsement key certificate from a CA the operator trusts (`/v1/attestation/tpm/challenge`,
/// then `/activate`). A TPM proves a hardware-bound key and a measured boot, not confidential
/// execution: tier 2 when its PCRs match the operator's reference values (its boot is the
/// one the operator named), tier 1 without reference values (any genuine TPM running any
/// code). Never more than 2.
///
/// What it does not defend against: the quote's nonce is the release's report data, which the
/// requester chooses through its ephemeral key, so a host that quoted while clean could keep
/// quotes for ephemeral keys it made in advance and replay them after booting other code (a
/// server-issued nonce, as in a challenge round, would close this); an enrollment is kept in
/// the store unauthenticated (as the store's other rows: see SECURITY.md), and any registered
/// client may present quotes of an enrolled AK (the report data binds each release to the
/// requester's own key, not the AK to the requester).
pub struct TpmVerifier {
    storage: Arc<dyn crate::storage::Storage>,
    ek_cas: String,
    policy: keyhaven_attest::tpm::Policy,
    pending: Mutex<HashMap<String, PendingCredential>>,
}

/// The tier an enrolled TPM's quote supports when its PCRs match reference values.
pub const TPM_TIER: u8 = 2;
/// The tier an enrolled TPM's quote supports without reference values.
pub const TPM_UNKNOWN_BOOT_TIER: u8 = 1;
/// The most credential challenges one client may have awaiting an answer.
const MAX_PENDING_PER_CLIENT: usize = 4;
/// How long a credential challenge may be answered.
pub const TPM_CHALLENGE_TTL: u64 = 300;
/// The most challenges awaiting an answer.
const MAX_PENDING: usize = 1_000;
/// The setting prefix of an enrolled attestation key (its TPM2B_PUBLIC's SHA-256 follows).
const ENROLLED: &str = "tpm.ak.";
/// The setting prefix naming an enrolled AK by its key alone (`AkPublic::key_id`, hex); the
/// value is the [`ENROLLED`] digest.
const ENROLLED_KEY: &str = "tpm.ak-key.";

/// A credential made for an AK, awaiting the TPM's answer.
struct PendingCredential {
    client: String,
    ak_public: Vec<u8>,
    ek_certificate: Vec<u8>,
    certified_by: String,
    secret: zeroize::Zeroizing<[u8; 32]>,
    expires: u64,
}

impl std::fmt::Debug for TpmVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmVerifier")
            .field("pcrs", &self.policy.pcrs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a credential challenge returns: the blobs for `TPM2_ActivateCredential`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmChallenge {
    /// The challenge's id, to answer with.
    pub id: String,
    /// The attestation key's TPM name (hex).
    pub ak_name: String,
    /// `TPM2B_ID_OBJECT`.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`.
    pub encrypted_secret: Vec<u8>,
}

impl TpmVerifier {
    /// A verifier trusting endorsement key certificates from `ek_cas` (PEM: the TPM
    /// manufacturers' CA certificates), enrolled AKs kept in `storage`, quotes held to
    /// `policy` (PCR reference values).
    pub fn new(
        storage: Arc<dyn crate::storage::Storage>,
        ek_cas: String,
        policy: keyhaven_attest::tpm::Policy,
    ) -> Self {
        TpmVerifier {
            storage,
            ek_cas,
            policy,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the EK certificate and the AK, and makes a credential for the AK's name that
    /// only the TPM holding both can open.
    ///
    /// # Errors
    /// Why, for the requester.
    pub fn challenge(
        &self,
        client: &str,
        ek_certificate: &[u8],
        ak_public: &[u8],
        now: u64,
    ) -> Result<TpmChallenge, String> {
        use keyhaven_attest::tpm::{AkPublic, EndorsementKey, make_credential};
        let ek = EndorsementKey::from_certificate(ek_certificate, &self.ek_cas, now)
            .map_err(|e| e.to_string())?;
        let ak = AkPublic::parse(ak_public).map_err(|e| e.to_string())?;
        let name = ak.name.clone().unwrap_or_default();
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 16];
        for buf in [secret.as_mut_slice(), &mut id] {
            keyhaven::fill_random(buf).map_err(|e| e.to_string())?;
        }
        let credential =
            make_credential(&ek, &name, secret.as_slice()).map_err(|e| e.to_string())?;
        let id = hex::encode(id);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_PENDING
            || pending.values().filter(|p| p.client == client).count() >= MAX_PENDING_PER_CLIENT
        {
            return Err("too many credential challenges await an answer; try again later".into());
        }
        pending.insert(
            id.clone(),
            PendingCredential {
                client: client.to_owned(),
                ak_public: ak_public.to_vec(),
                ek_certificate: ek_certificate.to_vec(),
                certified_by: ek.certified_by.clone(),
                secret,
                expires: now + TPM_CHALLENGE_TTL,
            },
        );
        Ok(TpmChallenge {
            id,
            ak_name: hex::encode(name),
            id_object: credential.id_object,
            encrypted_secret: credential.encrypted_secret,
        })
    }

    /// Takes the TPM's answer to challenge `id`: when `secret` is the credential's, the AK is
    /// enrolled (kept in the store). Returns the AK's id (its TPM2B_PUBLIC's SHA-256) and who
    /// certified its TPM. A challenge is answered once.
    ///
    /// # Errors
    /// Why, for the requester; the store's failures as text.
    pub fn activate(
        &self,
        client: &str,
        id: &str,
        secret: &[u8],
        now: u64,
    ) -> Result<(String, String), String> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .filter(|p| p.client == client && p.expires > now)
            .ok_or_else(|| {
                "no such credential challenge for this client (answered, expired, or another \
                 node's): ask for a new one"
                    .to_owned()
            })?;
        use subtle::ConstantTimeEq;
        if secret.len() != 32 || !bool::from(secret.ct_eq(pending.secret.as_slice())) {
            return Err(
                "the secret is not the credential's: the AK does not live in the TPM whose \
                 endorsement key was certified"
                    .into(),
            );
        }
        let digest = hex::encode(Sha256::digest(&pending.ak_public));
        let record = json!({
            "ak_public": hex::encode(&pending.ak_public),
            "ek_certificate": hex::encode(&pending.ek_certificate),
            "certified_by": pending.certified_by,
            "client": client,
            "at": now,
        });
        let key_id = keyhaven_attest::tpm::AkPublic::parse(&pending.ak_public)
            .map_err(|e| e.to_string())?
            .key_id();
        self.storage
            .set_setting(&format!("{ENROLLED}{digest}"), &record.to_string())
            .map_err(|e| e.to_string())?;
        // Trustee's attesters send the AK as a SubjectPublicKeyInfo: found by its key.
        self.storage
            .set_setting(&format!("{ENROLLED_KEY}{}", hex::encode(key_id)), &digest)
            .map_err(|e| e.to_string())?;
        Ok((digest, pending.certified_by))
    }
}

impl EvidenceVerifier for TpmVerifier {
    fn kind(&self) -> &'static str {
        "tpm"
    }

    fn verify(&self, evidence: &Value, report_data: &[u8], now: u64) -> Result<Attested, String> {
        let (ak_public, quote, signature, pcrs) = if evidence.get("tpm_quote").is_some() {
            self.trustee_shape(evidence)?
        } else {
            keyhaven_shape(evidence)?
        };
        self.verify_quote(&ak_public, &quote, &signature, &pcrs, report_data, now)
    }
}

/// The parts of a quote: the AK's `TPM2B_PUBLIC`, the `TPMS_ATTEST`, the `TPMT_SIGNATURE` and
/// the PCR values sent.
type QuoteParts = (
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    std::collections::BTreeMap<u8, Vec<u8>>,
);

/// keyhaven's shape of TPM evidence (see [`TpmVerifier`]).
fn keyhaven_shape(evidence: &Value) -> Result<QuoteParts, String> {
    let ak_public = base64_field(evidence, "tpm", "ak", "the AK's TPM2B_PUBLIC")?;
    let quote = base64_field(evidence, "tpm", "quote", "the TPMS_ATTEST")?;
    let signature = base64_field(evidence, "tpm", "signature", "the TPMT_SIGNATURE")?;
    let mut pcrs = std::collections::BTreeMap::new();
    for (k, v) in evidence["pcrs"].as_object().into_iter().flatten().take(24) {
        let index: u8 = k
            .parse()
            .map_err(|_| format!("PCR '{k}' is not an index"))?;
        let value = v
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| format!("PCR {index} is not hex"))?;
        pcrs.insert(index, value);
    }
    Ok((ak_public, quote, signature, pcrs))
}

impl TpmVerifier {
    /// The shape Trustee's TPM attester sends: `{"tpm_quote": {"message": base64 of the
    /// TPMS_ATTEST, "signature": base64 of the TPMT_SIGNATURE, "pcrs": [24 hex SHA-256
    /// values, PCR 0 first]}, "ak_public": base64 of the AK's SubjectPublicKeyInfo (DER)}`.
    /// The AK is found among the enrolled ones by its key, and its enrolled `TPM2B_PUBLIC` is
    /// what the quote is checked with.
    fn trustee_shape(&self, evidence: &Value) -> Result<QuoteParts, String> {
        let tq = &evidence["tpm_quote"];
        let quote = base64_field(tq, "tpm", "message", "the TPMS_ATTEST")?;
        let signature = base64_field(tq, "tpm", "signature", "the TPMT_SIGNATURE")?;
        let spki = base64_field(
            evidence,
            "tpm",
            "ak_public",
            "the AK's SubjectPublicKeyInfo",
        )?;
        let list = tq["pcrs"]
            .as_array()
            .ok_or_else(|| "tpm evidence needs 'tpm_quote.pcrs' (hex PCR values)".to_owned())?;
        if list.len() > 24 {
            return Err(format!("{} PCR values sent; a TPM has 24", list.len()));
        }
        let mut pcrs = std::collections::BTreeMap::new();
        for (index, v) in (0u8..).zip(list) {
            let value = v
                .as_str()
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| format!("PCR {index} is not hex"))?;
            pcrs.insert(index, value);
        }
        let key = keyhaven_attest::tpm::AkPublic::from_spki(&spki).map_err(|e| e.to_string())?;
        let digest = self
            .storage
            .setting(&format!("{ENROLLED_KEY}{}", hex::encode(key.key_id())))
            .map_err(|e| e.to_string())?
            .ok_or_else(not_enrolled)?;
        let enrolled = self.enrollment(&digest)?;
        let ak_public = enrolled["ak_public"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        Ok((ak_public, quote, signature, pcrs))
    }

    /// The enrollment of the AK whose `TPM2B_PUBLIC` has SHA-256 `digest` (hex).
    fn enrollment(&self, digest: &str) -> Result<Value, String> {
        self.storage
            .setting(&format!("{ENROLLED}{digest}"))
            .map_err(|e| e.to_string())?
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(not_enrolled)
    }

    /// Checks a quote by the enrolled AK `ak_public` over `report_data`.
    fn verify_quote(
        &self,
        ak_public: &[u8],
        quote: &[u8],
        signature: &[u8],
        pcrs: &std::collections::BTreeMap<u8, Vec<u8>>,
        report_data: &[u8],
        now: u64,
    ) -> Result<Attested, String> {
        use keyhaven_attest::tpm::{AkPublic, EndorsementKey, Evidence};
        let enrolled = self.enrollment(&hex::encode(Sha256::digest(ak_public)))?;
        // The EK certificate is checked again: a CA the operator stopped trusting, or a
        // certificate now expired, no longer vouches for the AK.
        let ek_der = enrolled["ek_certificate"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        let ek = EndorsementKey::from_certificate(&ek_der, &self.ek_cas, now)
            .map_err(|e| format!("the AK's endorsement key no longer verifies: {e}"))?;
        let ak = AkPublic::parse(ak_public).map_err(|e| e.to_string())?;
        let claims = keyhaven_attest::tpm::verify(
            &Evidence {
                attest: quote,
                signature,
                ak: &ak,
                pcrs,
                activated: Some(&ek),
            },
            &self.policy,
            Some(report_data),
        )
        .map_err(|e| e.to_string())?;
        let mut a = attested("tpm", TPM_TIER, TPM_UNKNOWN_BOOT_TIER, &claims);
        // Who enrolled the AK: over KBS, where the TPM is the requester's only identity, the
        // tenant served must have enrolled it (see crate::kbs).
        if let Some(claims) = a.claims.as_object_mut() {
            claims.insert("enrolled_by".into(), enrolled["client"].clone());
        }
        Ok(a)
    }
}

/// The setting prefix of a key proved to live in a TPM (its fingerprint follows).
const KEY_ATTESTED: &str = "key.attested.";
/// The tier a registered key proved to be born in a TPM reaches.
pub const ATTESTED_KEY_TIER: u8 = 2;

impl TpmVerifier {
    /// Who certified the TPM of enrolled AK `digest` (its EK certificate checked again now).
    pub(crate) fn enrolled_by(&self, digest: &str, now: u64) -> Result<String, String> {
        let enrolled = self.enrollment(digest)?;
        let ek_der = enrolled["ek_certificate"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        keyhaven_attest::tpm::EndorsementKey::from_certificate(&ek_der, &self.ek_cas, now)
            .map(|ek| ek.certified_by)
            .map_err(|e| format!("the AK's endorsement key no longer verifies: {e}"))
    }
}

/// Who vouches for TPM attestation key `digest`: the operator (pinned), or the CA of the EK
/// it was enrolled against; None when nobody does (any more).
fn ak_trusted_by(broker: &crate::broker::Broker, digest: &str, now: u64) -> Option<String> {
    if broker.trusted_aks().iter().any(|a| a == digest) {
        return Some("pinned by the operator".into());
    }
    broker.tpm()?.enrolled_by(digest, now).ok()
}

/// Checks a key attestation of the registered key whose SubjectPublicKeyInfo is `spki`: a
/// TPM certification by a trusted attestation key of a key born in the TPM, that key being
/// this one. Returns the AK's digest and who vouches for it.
///
/// # Errors
/// 400 for a statement (a token's attributes are not proof) or a malformed attestation; 403
/// for an untrusted AK, a certification that does not verify, or another key's.
pub(crate) fn check_key_attestation(
    broker: &crate::broker::Broker,
    attestation: &keyhaven::KeyAttestation,
    spki: &[u8],
    now: u64,
) -> Result<(String, String), crate::problem::ApiError> {
    use crate::problem::ApiError;
    use base64ct::{Base64, Encoding};
    use http::StatusCode;
    let keyhaven::KeyAttestation::Tpm2Certify {
        certify_info,
        signature,
        ak_public,
        key_public,
    } = attestation
    else {
        return Err(ApiError::bad_request(
            "not-proof",
            "a PKCS#11 token's attributes are its statement, not a proof: only a TPM \
             certification proves a key lives in hardware",
        ));
    };
    let b64 = |name: &str, v: &str| {
        Base64::decode_vec(v).map_err(|_| {
            ApiError::bad_request(
                "invalid-request",
                format!("'{name}' is not standard base64"),
            )
        })
    };
    let (info, sig, ak, key) = (
        b64("certify_info", certify_info)?,
        b64("signature", signature)?,
        b64("ak_public", ak_public)?,
        b64("key_public", key_public)?,
    );
    let refused = |m: String| ApiError::new(StatusCode::FORBIDDEN, "evidence-refused", m);
    let ak = keyhaven_attest::tpm::AkPublic::parse(&ak)
        .map_err(|e| ApiError::bad_request("invalid-request", format!("the AK: {e}")))?;
    let digest = hex::encode(ak.digest);
    let by = ak_trusted_by(broker, &digest, now).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "untrusted-attestation-key",
            format!(
                "attestation key {digest} is neither pinned (keyhaven serve --trusted-ak) nor \
                 enrolled by credential activation (/v1/attestation/tpm/)"
            ),
        )
    })?;
    let certified = keyhaven_attest::tpm::verify_certification(
        &keyhaven_attest::tpm::Certification {
            certify_info: &info,
            signature: &sig,
            ak: &ak,
            key_public: &key,
        },
        None,
    )
    .map_err(|e| refused(e.to_string()))?;
    // An EC SubjectPublicKeyInfo is a fixed prefix of its curve, then the point: P-256 ones
    // are 91 bytes, P-384 ones 120.
    let expected_len = match certified.curve {
        "P-256" => 91,
        _ => 120,
    };
    if !certified.signs || spki.len() != expected_len || !spki.ends_with(&certified.point) {
        return Err(refused(
            "the certified key is not this registered key".into(),
        ));
    }
    Ok((digest, by))
}

/// What proves the registered key `fingerprint` lives in a TPM, if anything does still (its
/// attestation key trusted now): `{ak, certified_by, at}`.
///
/// # Errors
/// The store's.
pub(crate) fn proved_key(
    broker: &crate::broker::Broker,
    fingerprint: &str,
    now: u64,
) -> Result<Option<Value>, crate::problem::ApiError> {
    let Some(text) = broker
        .storage()
        .setting(&format!("{KEY_ATTESTED}{fingerprint}"))?
    else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_str::<Value>(&text) else {
        return Ok(None);
    };
    let ak = record["ak"].as_str().unwrap_or("");
    Ok(ak_trusted_by(broker, ak, now)
        .map(|by| json!({ "ak": ak, "certified_by": by, "at": record["at"] })))
}

/// Records that the registered key `fingerprint` was proved to live in a TPM.
///
/// # Errors
/// The store's.
pub(crate) fn record_proved_key(
    broker: &crate::broker::Broker,
    fingerprint: &str,
    ak: &str,
    now: u64,
) -> Result<(), crate::problem::ApiError> {
    broker.storage().set_setting(
        &format!("{KEY_ATTESTED}{fingerprint}"),
        &json!({ "ak": ak, "at": now }).to_string(),
    )?;
    Ok(())
}

fn not_enrolled() -> String {
    "this attestation key is not enrolled: prove it lives in a certified TPM first (POST \
     /v1/attestation/tpm/challenge, then /activate)"
        .to_owned()
}

/// NVIDIA Hopper GPU evidence (`keyhaven_attest::nvidia`): `{"type": "nvidia-gpu", "report":
/// hex of the SPDM GET_MEASUREMENTS request and MEASUREMENTS response, "chain": the attestation
/// key's certificates, PEM, leaf first}`. The request's nonce must be this release's report
/// data. A GPU alone attests the GPU, not the CPU that feeds it: on its own it supports tier
/// 1; with CPU TEE evidence bound to the same nonce ([`CompositeVerifier`]) it makes tier 3.
#[derive(Debug, Default)]
pub struct NvidiaVerifier {
    policy: keyhaven_attest::nvidia::Policy,
}

/// The tier GPU evidence alone supports.
pub const GPU_ALONE_TIER: u8 = 1;
/// The tier a CPU TEE and a GPU attested together (same nonce) reach.
pub const CPU_AND_GPU_TIER: u8 = 3;

impl NvidiaVerifier {
    /// A verifier holding GPU evidence to `policy` (reference measurements, roots).
    pub fn new(policy: keyhaven_attest::nvidia::Policy) -> Self {
        NvidiaVerifier { policy }
    }
}

impl EvidenceVerifier for NvidiaVerifier {
    fn kind(&self) -> &'static str {
        "nvidia-gpu"
    }

    fn verify(&self, evidence: &Value, report_data: &[u8], now: u64) -> Result<Attested, String> {
        let report = text(evidence, "nvidia-gpu", "report", "hex")?;
        let report = hex::decode(report.trim()).map_err(|_| "'report' is not hex".to_owned())?;
        let chain = text(evidence, "nvidia-gpu", "chain", "PEM, leaf first")?;
        let nonce: &[u8; 32] = report_data.try_into().map_err(|_| {
            format!(
                "an SPDM nonce is 32 bytes; this binding is {}",
                report_data.len()
            )
        })?;
        let claims = keyhaven_attest::nvidia::verify(
            &keyhaven_attest::nvidia::Evidence {
                report: &report,
                chain,
            },
            &self.policy,
            Some(nonce),
            now,
        )
        .map_err(|e| e.to_string())?;
        Ok(attested(
            "nvidia-gpu",
            GPU_ALONE_TIER,
            GPU_ALONE_TIER,
            &claims,
        ))
    }
}

/// A CPU TEE and a GPU attested together: `{"type": "composite", "cpu": <sev-snp or tdx
/// evidence>, "gpu": <nvidia-gpu evidence>}`, each bound to this release's report data (so to
/// each other): tier 3 (GPU confidential computing). Tier 4 (TEE-I/O) is known to policy, but
/// no evidence reaches it yet.
pub struct CompositeVerifier {
    cpus: Vec<Arc<dyn EvidenceVerifier>>,
    gpu: Arc<dyn EvidenceVerifier>,
}

impl std::fmt::Debug for CompositeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompositeVerifier")
            .field(
                "cpus",
                &self.cpus.iter().map(|c| c.kind()).collect::<Vec<_>>(),
            )
            .field("gpu", &self.gpu.kind())
            .finish()
    }
}

impl CompositeVerifier {
    /// Composite evidence of one of `cpus`' kinds and `gpu`'s.
    pub fn new(cpus: Vec<Arc<dyn EvidenceVerifier>>, gpu: Arc<dyn EvidenceVerifier>) -> Self {
        CompositeVerifier { cpus, gpu }
    }
}

impl EvidenceVerifier for CompositeVerifier {
    fn kind(&self) -> &'static str {
        "composite"
    }

    fn verify(&self, evidence: &Value, report_data: &[u8], now: u64) -> Result<Attested, String> {
        let kinds: Vec<&str> = self.cpus.iter().map(|c| c.kind()).collect();
        let cpu_evidence = &evidence["cpu"];
        let cpu_verifier = self
            .cpus
            .iter()
            .find(|c| cpu_evidence["type"].as_str() == Some(c.kind()))
            .ok_or_else(|| {
                format!(
                    "composite evidence needs 'cpu' of type {}",
                    kinds.join(" or ")
                )
            })?;
        let gpu_evidence = &evidence["gpu"];
        if gpu_evidence["type"].as_str() != Some(self.gpu.kind()) {
            return Err(format!(
                "composite evidence needs 'gpu' of type '{}'",
                self.gpu.kind()
            ));
        }
        let cpu = cpu_verifier
            .verify(cpu_evidence, report_data, now)
            .map_err(|e| format!("the CPU evidence: {e}"))?;
        let gpu = self
            .gpu
            .verify(gpu_evidence, report_data, now)
            .map_err(|e| format!("the GPU evidence: {e}"))?;
        // Both bound to the same report data: the GPU answers the CPU TEE's request. Tier 3
        // needs both of known code: the CPU TEE at tier 2 (a named measurement), the GPU's
        // measurements affirmed by reference values.
        let gpu_known = gpu.claims["trust"]["executables"] == "affirming";
        let tier = if cpu.tier >= SNP_TIER.min(TDX_TIER) && gpu_known {
            CPU_AND_GPU_TIER
        } else {
            cpu.tier.min(gpu.tier)
        };
        Ok(Attested {
            kind: "composite".into(),
            tier,
            claims: json!({ "cpu": cpu.claims, "gpu": gpu.claims }),
        })
    }
}

/// The verifiers a broker accepts, and what they recently verified.
pub struct Attestation {
    verifiers: HashMap<&'static str, Arc<dyn EvidenceVerifier>>,
    cache: Mutex<HashMap<[u8; 32], (Attested, Instant)>>,
    ttl: Duration,
}

impl Default for Attestation {
    fn default() -> Self {
        Attestation {
            verifiers: HashMap::new(),
            cache: Mutex::new(HashMap::new()),
            ttl: ATTESTATION_TTL,
        }
    }
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&&str> = self.verifiers.keys().collect();
        kinds.sort();
        f.debug_struct("Attestation")
            .field("kinds", &kinds)
            .finish_non_exhaustive()
    }
}

/// Why evidence did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceError {
    /// No verifier of this type is on.
    NotAccepted(String),
    /// The verifier refused it.
    Refused(String),
}

impl Attestation {
    /// Accepts evidence of `verifier`'s type from now on.
    pub fn add(&mut self, verifier: Arc<dyn EvidenceVerifier>) {
        self.verifiers.insert(verifier.kind(), verifier);
    }

    /// Remembers verified evidence for `ttl` (zero: not at all, every piece is verified
    /// again; [`ATTESTATION_TTL`] by default).
    pub fn set_cache_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// The types accepted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = self.verifiers.keys().copied().collect();
        k.sort_unstable();
        k
    }

    /// Verifies `evidence` for `report_data` (or answers from the cache).
    ///
    /// # Errors
    /// [`EvidenceError`] saying why it does not count.
    pub fn verify(
        &self,
        evidence: &Value,
        report_data: &[u8],
        now: u64,
    ) -> Result<Attested, EvidenceError> {
        let kind = evidence["type"].as_str().unwrap_or("");
        let Some(verifier) = self.verifiers.get(kind) else {
            let accepted = self.kinds();
            let hint = if kind == "sample" {
                " (sample evidence is for development: start the server with \
                 --allow-sample-evidence)"
            } else {
                ""
            };
            return Err(EvidenceError::NotAccepted(format!(
                "evidence of type '{}' is not accepted here; accepted: [{}]{hint}",
                kind.chars().take(40).collect::<String>(),
                accepted.join(", ")
            )));
        };
        let mut h = Sha256::new();
        h.update(evidence.to_string().as_bytes());
        h.update(report_data);
        let key: [u8; 32] = h.finalize().into();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((a, at)) = cache.get(&key)
                && at.elapsed() < self.ttl
            {
                return Ok(a.clone());
            }
        }
        let attested = verifier
            .verify(evidence, report_data, now)
            .map_err(EvidenceError::Refused)?;
        if self.ttl.is_zero() {
            return Ok(attested);
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (attested.clone(), Instant::now()));
        Ok(attested)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A verifier that accepts any evidence of its kind bound to the report data, at a fixed
    /// tier: it stands beside the real ones to test the composite rule alone.
    struct Fixed(&'static str, u8);

    impl EvidenceVerifier for Fixed {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn verify(&self, e: &Value, rd: &[u8], _: u64) -> Result<Attested, String> {
            if e["rd"].as_str() == Some(hex::encode(rd).as_str()) {
                Ok(Attested {
                    kind: self.0.into(),
                    tier: self.1,
                    claims: json!({ "trust": { "executables": e["executables"] } }),
                })
            } else {
                Err(format!("{} evidence bound to other data", self.0))
            }
        }
    }

    #[test]
    fn a_cpu_tee_and_a_gpu_bound_together_make_tier_3_and_nothing_less_does() {
        let rd = report_data("k", "model/w", "thumb");
        let other = report_data("k", "model/w", "other");
        let composite = |cpu_tier| {
            CompositeVerifier::new(
                vec![
                    Arc::new(Fixed("sev-snp", cpu_tier)),
                    Arc::new(Fixed("tdx", 2)),
                ],
                Arc::new(Fixed("nvidia-gpu", GPU_ALONE_TIER)),
            )
        };
        let both = |cpu: &[u8; 32], gpu: &[u8; 32]| {
            json!({
                "type": "composite",
                "cpu": { "type": "sev-snp", "rd": hex::encode(cpu) },
                "gpu": { "type": "nvidia-gpu", "rd": hex::encode(gpu), "executables": "affirming" },
            })
        };
        assert_eq!(
            composite(2).verify(&both(&rd, &rd), &rd, 0).unwrap().tier,
            3
        );
        // A GPU whose measurements no reference value affirms: no tier 3.
        let mut unknown_gpu = both(&rd, &rd);
        unknown_gpu["gpu"]["executables"] = json!("none");
        assert_eq!(composite(2).verify(&unknown_gpu, &rd, 0).unwrap().tier, 1);
        // A GPU report made for another request (not the CPU TEE's) is refused.
        let e = composite(2).verify(&both(&rd, &other), &rd, 0).unwrap_err();
        assert!(e.contains("GPU evidence"), "{e}");
        // A CPU part that is not a TEE's (tier 1) lifts nothing.
        assert_eq!(
            composite(1).verify(&both(&rd, &rd), &rd, 0).unwrap().tier,
            1
        );
        // Parts of the wrong kind, or missing.
        let swapped = json!({ "type": "composite", "cpu": { "type": "nvidia-gpu" }, "gpu": {} });
        assert!(composite(2).verify(&swapped, &rd, 0).is_err());
    }

    #[test]
    fn sample_evidence_is_off_by_default_bound_and_capped_at_tier_1() {
        let rd = report_data("k", "db/x", "thumb");
        let evidence = json!({ "type": "sample", "tier": 4, "report_data": hex::encode(rd) });
        let off = Attestation::default();
        match off.verify(&evidence, &rd, 0) {
            Err(EvidenceError::NotAccepted(m)) => {
                assert!(m.contains("--allow-sample-evidence"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut on = Attestation::default();
        on.add(Arc::new(SampleVerifier));
        let a = on.verify(&evidence, &rd, 0).unwrap();
        assert_eq!(a.tier, 1, "never above tier 1");
        let other = report_data("k", "db/y", "thumb");
        assert!(matches!(
            on.verify(&evidence, &other, 0),
            Err(EvidenceError::Refused(_))
        ));
        assert_ne!(
            report_data("ab", "c", "d"),
            report_data("a", "bc", "d"),
            "length-prefixed"
        );
    }
}
