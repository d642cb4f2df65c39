//! Making and checking signatures: `Signature-Input` and `Signature` (RFC 9421 sections 3 and
//! 4), with any [`KeyStore`] key and any public key.

use keyhaven_core::{Algorithm, KeyId, KeyStore, PublicKey, Signature};

use crate::base::{Component, serialize_params, signature_base};
use crate::error::{HttpSigError, Result};
use crate::message::{Message, Request, Response};
use crate::sfv::{self, BareItem, Item, Member, Params};

/// The RFC 9421 algorithm name of a key's algorithm: `ed25519`, `ecdsa-p256-sha256`,
/// `ecdsa-p384-sha384`; `None` for X25519 (it cannot sign).
pub fn algorithm_name(algorithm: Algorithm) -> Option<&'static str> {
    match algorithm {
        Algorithm::Ed25519 => Some("ed25519"),
        Algorithm::EcdsaP256 => Some("ecdsa-p256-sha256"),
        Algorithm::EcdsaP384 => Some("ecdsa-p384-sha384"),
        _ => None,
    }
}

/// What a new signature covers and says about itself.
#[derive(Debug, Clone)]
pub struct SignatureSpec {
    label: String,
    covered: Vec<Component>,
    keyid: String,
    created: Option<u64>,
    expires: Option<u64>,
    nonce: Option<String>,
    tag: Option<String>,
    alg: bool,
}

impl SignatureSpec {
    /// A signature labelled `label` by the key the verifier knows as `keyid`, covering nothing
    /// yet, with `alg` included.
    pub fn new(label: &str, keyid: &str) -> Self {
        SignatureSpec {
            label: label.to_owned(),
            covered: Vec::new(),
            keyid: keyid.to_owned(),
            created: None,
            expires: None,
            nonce: None,
            tag: None,
            alg: true,
        }
    }

    /// Covers these components, in this order (`@method`, `@target-uri`, `content-digest`,
    /// ...).
    ///
    /// # Errors
    /// [`HttpSigError::Malformed`] for a name that is no component.
    pub fn covering(mut self, names: &[&str]) -> Result<Self> {
        for n in names {
            self.covered.push(Component::new(n)?);
        }
        Ok(self)
    }

    /// Covers one more component (e.g. [`Component::of_request`] in a response).
    #[must_use]
    pub fn cover(mut self, component: Component) -> Self {
        self.covered.push(component);
        self
    }

    /// `created` (seconds since the epoch).
    #[must_use]
    pub fn created(mut self, at: u64) -> Self {
        self.created = Some(at);
        self
    }

    /// `expires` (seconds since the epoch).
    #[must_use]
    pub fn expires(mut self, at: u64) -> Self {
        self.expires = Some(at);
        self
    }

    /// `nonce`.
    #[must_use]
    pub fn nonce(mut self, nonce: &str) -> Self {
        self.nonce = Some(nonce.to_owned());
        self
    }

    /// `tag` (an application's name for the kind of signature).
    #[must_use]
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_owned());
        self
    }

    /// Whether to include `alg` (default: yes).
    #[must_use]
    pub fn with_alg(mut self, alg: bool) -> Self {
        self.alg = alg;
        self
    }

    /// Refuses what a structured field cannot carry: strings outside printable ASCII (a line
    /// break would split the header and the base), integers of more than 15 digits.
    fn check(&self) -> Result<()> {
        const MAX_INT: u64 = 999_999_999_999_999;
        for (param, value) in [("created", self.created), ("expires", self.expires)] {
            if value.is_some_and(|v| v > MAX_INT) {
                return Err(HttpSigError::Parameter {
                    param,
                    reason: "at most 15 digits".into(),
                });
            }
        }
        for (param, value) in [
            ("keyid", Some(&self.keyid)),
            ("nonce", self.nonce.as_ref()),
            ("tag", self.tag.as_ref()),
        ] {
            if value.is_some_and(|v| !v.bytes().all(|b| (0x20..=0x7e).contains(&b))) {
                return Err(HttpSigError::Parameter {
                    param,
                    reason: "printable ASCII only".into(),
                });
            }
        }
        Ok(())
    }

    fn params(&self, alg: &'static str) -> Params {
        let mut p: Params = Vec::new();
        if let Some(c) = self.created {
            p.push((
                "created".into(),
                BareItem::Integer(i64::try_from(c).unwrap_or(i64::MAX)),
            ));
        }
        if let Some(e) = self.expires {
            p.push((
                "expires".into(),
                BareItem::Integer(i64::try_from(e).unwrap_or(i64::MAX)),
            ));
        }
        if let Some(n) = &self.nonce {
            p.push(("nonce".into(), BareItem::String(n.clone())));
        }
        if self.alg {
            p.push(("alg".into(), BareItem::String(alg.into())));
        }
        p.push(("keyid".into(), BareItem::String(self.keyid.clone())));
        if let Some(t) = &self.tag {
            p.push(("tag".into(), BareItem::String(t.clone())));
        }
        p
    }
}

/// The two header values of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Signature-Input`: `LABEL=(components);params`.
    pub signature_input: String,
    /// `Signature`: `LABEL=:BASE64:`.
    pub signature: String,
}

/// Signs `message` with key `key` of `store` (in the device for hardware keys): the signature
/// base of the covered components and parameters, signed with the key's algorithm.
///
/// # Errors
/// [`HttpSigError::MissingComponent`] and the others of [`signature_base`];
/// [`HttpSigError::Algorithm`] for an X25519 key; [`HttpSigError::Sign`] when the store
/// refuses (locked, revoked, unreachable).
pub fn sign(
    message: Message<'_>,
    spec: &SignatureSpec,
    store: &dyn KeyStore,
    key: &KeyId,
) -> Result<SignatureHeaders> {
    let info = store.get(key).map_err(HttpSigError::Sign)?;
    sign_with(message, spec, info.public_key.algorithm(), &mut |base| {
        store.sign(key, base)
    })
}

/// Signs `message` with whatever `signer` is (a key behind a facade, a remote signer): it is
/// given the signature base and returns the key's signature over it; `algorithm` is the key's.
///
/// # Errors
/// As [`sign`].
pub fn sign_with(
    message: Message<'_>,
    spec: &SignatureSpec,
    algorithm: Algorithm,
    signer: &mut dyn FnMut(&[u8]) -> keyhaven_core::Result<keyhaven_core::Signature>,
) -> Result<SignatureHeaders> {
    let alg = algorithm_name(algorithm)
        .ok_or_else(|| HttpSigError::Algorithm(format!("{algorithm} keys cannot sign")))?;
    check_label(&spec.label)?;
    spec.check()?;
    if spec.covered.is_empty() {
        return Err(HttpSigError::Parameter {
            param: "components",
            reason: "a signature must cover at least one component".into(),
        });
    }
    let params = serialize_params(&spec.covered, &spec.params(alg));
    let base = signature_base(message, &spec.covered, &params)?;
    let signature = signer(base.as_bytes()).map_err(HttpSigError::Sign)?;
    if signature.algorithm() != algorithm {
        return Err(HttpSigError::Algorithm(format!(
            "the signer made a {} signature for a {algorithm} key",
            signature.algorithm()
        )));
    }
    let mut sig = String::new();
    sfv::write_bare(&mut sig, &BareItem::ByteSeq(signature.as_raw().to_vec()));
    Ok(SignatureHeaders {
        signature_input: format!("{}={params}", spec.label),
        signature: format!("{}={sig}", spec.label),
    })
}

/// Signs a request and adds `Signature-Input` and `Signature` to it.
///
/// # Errors
/// As [`sign`].
pub fn sign_request(
    request: &mut Request,
    spec: &SignatureSpec,
    store: &dyn KeyStore,
    key: &KeyId,
) -> Result<SignatureHeaders> {
    let headers = sign(Message::Request(request), spec, store, key)?;
    request.push_header("Signature-Input", &headers.signature_input);
    request.push_header("Signature", &headers.signature);
    Ok(headers)
}

/// Signs a response and adds `Signature-Input` and `Signature` to it.
///
/// # Errors
/// As [`sign`].
pub fn sign_response(
    response: &mut Response,
    spec: &SignatureSpec,
    store: &dyn KeyStore,
    key: &KeyId,
) -> Result<SignatureHeaders> {
    let headers = sign(Message::Response(response), spec, store, key)?;
    response.push_header("Signature-Input", &headers.signature_input);
    response.push_header("Signature", &headers.signature);
    Ok(headers)
}

fn check_label(label: &str) -> Result<()> {
    if sfv::is_key(label) {
        Ok(())
    } else {
        Err(HttpSigError::Parameter {
            param: "label",
            reason: format!("{label:?} is not a structured-field key"),
        })
    }
}

/// What a verifier demands of a signature, besides that it verifies.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    now: u64,
    max_age: Option<u64>,
    skew: u64,
    required: Vec<Component>,
    require_nonce: bool,
    require_expires: bool,
    tag: Option<String>,
}

impl VerifyPolicy {
    /// At time `now` (seconds since the epoch): `created` is required and at most 300 seconds
    /// old, 60 seconds of clock skew are tolerated, nothing else is required yet.
    pub fn at(now: u64) -> Self {
        VerifyPolicy {
            now,
            max_age: Some(300),
            skew: 60,
            required: Vec::new(),
            require_nonce: false,
            require_expires: false,
            tag: None,
        }
    }

    /// How old `created` may be (`None`: any age, and `created` is not required).
    #[must_use]
    pub fn max_age(mut self, seconds: Option<u64>) -> Self {
        self.max_age = seconds;
        self
    }

    /// How far ahead of `now` a `created` may be, and how long after `expires` a signature is
    /// still taken.
    #[must_use]
    pub fn skew(mut self, seconds: u64) -> Self {
        self.skew = seconds;
        self
    }

    /// Requires these components to be covered.
    ///
    /// # Errors
    /// [`HttpSigError::Malformed`] for a name that is no component.
    pub fn require(mut self, names: &[&str]) -> Result<Self> {
        for n in names {
            self.required.push(Component::new(n)?);
        }
        Ok(self)
    }

    /// Requires one component, with its parameters (a response covering
    /// [`Component::of_request`] components of the request it answers, say).
    #[must_use]
    pub fn require_component(mut self, component: Component) -> Self {
        self.required.push(component);
        self
    }

    /// Requires a `nonce` (the caller then refuses a nonce seen before).
    #[must_use]
    pub fn require_nonce(mut self) -> Self {
        self.require_nonce = true;
        self
    }

    /// Requires an `expires`.
    #[must_use]
    pub fn require_expires(mut self) -> Self {
        self.require_expires = true;
        self
    }

    /// Requires this `tag`.
    #[must_use]
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_owned());
        self
    }
}

/// A signature that verified, and what it said of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// Its label.
    pub label: String,
    /// `keyid`.
    pub keyid: String,
    /// `created`.
    pub created: Option<u64>,
    /// `expires`.
    pub expires: Option<u64>,
    /// `nonce`.
    pub nonce: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// The covered components, in order.
    pub covered: Vec<String>,
    /// The key it verified with.
    pub public_key: PublicKey,
}

/// Verifies the signature labelled `label` (or the only one) of `message`, whose
/// `Signature-Input` and `Signature` fields it reads, with the public key `key_of` returns for
/// its `keyid`, under `policy`.
///
/// # Errors
/// An [`HttpSigError`] naming the rule broken: malformed headers, a missing or uncovered
/// component, a stale or future signature, an unknown key, a mismatched `alg`, or a signature
/// that does not verify.
pub fn verify(
    message: Message<'_>,
    label: Option<&str>,
    policy: &VerifyPolicy,
    key_of: &mut dyn FnMut(&str) -> Result<Option<PublicKey>>,
) -> Result<Verified> {
    let inputs = message
        .field("signature-input")
        .ok_or_else(|| HttpSigError::NoSignature { label: None })?;
    let signatures = message
        .field("signature")
        .ok_or_else(|| HttpSigError::NoSignature { label: None })?;
    let inputs = sfv::parse_dictionary(&inputs).map_err(|e| HttpSigError::Malformed {
        what: "Signature-Input",
        reason: e.to_string(),
    })?;
    let signatures = sfv::parse_dictionary(&signatures).map_err(|e| HttpSigError::Malformed {
        what: "Signature",
        reason: e.to_string(),
    })?;
    let (name, input) = match label {
        Some(l) => {
            inputs
                .iter()
                .find(|(k, _)| k == l)
                .ok_or_else(|| HttpSigError::NoSignature {
                    label: Some(l.to_owned()),
                })?
        }
        None => match inputs.as_slice() {
            [one] => one,
            [] => return Err(HttpSigError::NoSignature { label: None }),
            _ => {
                return Err(HttpSigError::Parameter {
                    param: "label",
                    reason: format!(
                        "the message has {} signatures; name the one to check",
                        inputs.len()
                    ),
                });
            }
        },
    };
    let Member::InnerList(list) = input else {
        return Err(HttpSigError::Malformed {
            what: "Signature-Input",
            reason: format!("{name} is not an inner list"),
        });
    };
    let raw = match signatures.iter().find(|(k, _)| k == name) {
        Some((
            _,
            Member::Item(Item {
                bare: BareItem::ByteSeq(b),
                ..
            }),
        )) => b.clone(),
        Some(_) => {
            return Err(HttpSigError::Malformed {
                what: "Signature",
                reason: format!("{name} is not a byte sequence"),
            });
        }
        None => {
            return Err(HttpSigError::NoSignature {
                label: Some(name.clone()),
            });
        }
    };
    if list.items.is_empty() {
        // A signature over no component says nothing about this message.
        return Err(HttpSigError::NotCovered(
            "any component (the signature covers nothing)".into(),
        ));
    }
    let covered = list
        .items
        .iter()
        .map(Component::from_item)
        .collect::<Result<Vec<_>>>()?;
    let p = SignedParams::read(&list.params)?;
    for r in &policy.required {
        if !covered.contains(r) {
            return Err(HttpSigError::NotCovered(r.identifier()));
        }
    }
    p.check_time(policy)?;
    if policy.require_nonce && p.nonce.is_none() {
        return Err(HttpSigError::Parameter {
            param: "nonce",
            reason: "a nonce is required".into(),
        });
    }
    if let Some(t) = &policy.tag
        && p.tag.as_ref() != Some(t)
    {
        return Err(HttpSigError::Parameter {
            param: "tag",
            reason: format!("the tag must be '{t}'"),
        });
    }
    let keyid = p.keyid.clone().ok_or_else(|| HttpSigError::Parameter {
        param: "keyid",
        reason: "the signature names no key".into(),
    })?;
    let public_key = key_of(&keyid)?.ok_or_else(|| HttpSigError::UnknownKey(keyid.clone()))?;
    let key_alg = algorithm_name(public_key.algorithm()).ok_or_else(|| {
        HttpSigError::Algorithm(format!("key '{keyid}' cannot verify signatures"))
    })?;
    if let Some(alg) = &p.alg
        && alg != key_alg
    {
        return Err(HttpSigError::Algorithm(format!(
            "the signature says '{alg}' but key '{keyid}' is {key_alg}"
        )));
    }
    let mut params = String::new();
    sfv::write_inner_list(&mut params, list);
    let base = signature_base(message, &covered, &params)?;
    let signature = Signature::from_raw(public_key.algorithm(), raw)
        .map_err(|_| HttpSigError::BadSignature(keyid.clone()))?;
    keyhaven_crypto::verify(&public_key, base.as_bytes(), &signature)
        .map_err(|_| HttpSigError::BadSignature(keyid.clone()))?;
    Ok(Verified {
        label: name.clone(),
        keyid,
        created: p.created,
        expires: p.expires,
        nonce: p.nonce,
        tag: p.tag,
        covered: covered.iter().map(|c| c.identifier()).collect(),
        public_key,
    })
}

/// The parameters of a received signature.
struct SignedParams {
    created: Option<u64>,
    expires: Option<u64>,
    nonce: Option<String>,
    alg: Option<String>,
    keyid: Option<String>,
    tag: Option<String>,
}

impl SignedParams {
    fn read(params: &Params) -> Result<Self> {
        let mut p = SignedParams {
            created: None,
            expires: None,
            nonce: None,
            alg: None,
            keyid: None,
            tag: None,
        };
        for (k, v) in params {
            let wrong = |param: &'static str, want: &str| HttpSigError::Parameter {
                param,
                reason: format!("must be {want}"),
            };
            match (k.as_str(), v) {
                ("created", BareItem::Integer(n)) if *n >= 0 => p.created = Some(n.unsigned_abs()),
                ("created", _) => return Err(wrong("created", "a non-negative integer")),
                ("expires", BareItem::Integer(n)) if *n >= 0 => p.expires = Some(n.unsigned_abs()),
                ("expires", _) => return Err(wrong("expires", "a non-negative integer")),
                ("nonce", BareItem::String(s)) => p.nonce = Some(s.clone()),
                ("nonce", _) => return Err(wrong("nonce", "a string")),
                ("alg", BareItem::String(s)) => p.alg = Some(s.clone()),
                ("alg", _) => return Err(wrong("alg", "a string")),
                ("keyid", BareItem::String(s)) => p.keyid = Some(s.clone()),
                ("keyid", _) => return Err(wrong("keyid", "a string")),
                ("tag", BareItem::String(s)) => p.tag = Some(s.clone()),
                ("tag", _) => return Err(wrong("tag", "a string")),
                // Parameters this verifier does not know are covered by the signature all the
                // same (they are in @signature-params); they change nothing here.
                _ => {}
            }
        }
        Ok(p)
    }

    fn check_time(&self, policy: &VerifyPolicy) -> Result<()> {
        if let (Some(c), Some(e)) = (self.created, self.expires)
            && e < c
        {
            return Err(HttpSigError::Parameter {
                param: "expires",
                reason: "it is before created".into(),
            });
        }
        match (self.created, policy.max_age) {
            (None, Some(_)) => {
                return Err(HttpSigError::Parameter {
                    param: "created",
                    reason: "a creation time is required".into(),
                });
            }
            (Some(c), max_age) => {
                if c > policy.now.saturating_add(policy.skew) {
                    return Err(HttpSigError::Stale(format!(
                        "created {}s in the future (clock skew allowed: {}s)",
                        c - policy.now,
                        policy.skew
                    )));
                }
                if let Some(max) = max_age
                    && policy.now > c.saturating_add(max).saturating_add(policy.skew)
                {
                    return Err(HttpSigError::Stale(format!(
                        "created {}s ago (at most {max}s is accepted)",
                        policy.now - c
                    )));
                }
            }
            (None, None) => {}
        }
        match self.expires {
            Some(e) if policy.now > e.saturating_add(policy.skew) => Err(HttpSigError::Stale(
                format!("expired {}s ago", policy.now - e),
            )),
            None if policy.require_expires => Err(HttpSigError::Parameter {
                param: "expires",
                reason: "an expiry is required".into(),
            }),
            _ => Ok(()),
        }
    }
}
