//! Everything a verifier must refuse, each with the rule it broke; nothing panics.

use keyhaven_core::{Algorithm, KeyInfo, KeyStore, PublicKey};
use keyhaven_httpsig::{
    HttpSigError, Message, Request, SignatureSpec, VerifyPolicy, sign_request, verify,
};
use keyhaven_store_memory::MemoryStore;

const NOW: u64 = 1_700_000_000;

fn signed(store: &MemoryStore, key: &KeyInfo, spec: SignatureSpec) -> Request {
    let mut r = Request::new("POST", "https://api.example.com/v1/things?x=1")
        .unwrap()
        .header("Content-Type", "application/json");
    sign_request(&mut r, &spec, store, &key.id).unwrap();
    r
}

fn spec() -> SignatureSpec {
    SignatureSpec::new("sig1", "k1")
        .covering(&["@method", "@target-uri", "content-type"])
        .unwrap()
        .created(NOW)
        .nonce("n-1")
}

fn check(r: &Request, policy: &VerifyPolicy, key: &PublicKey) -> Result<(), HttpSigError> {
    verify(Message::Request(r), Some("sig1"), policy, &mut |id| {
        Ok((id == "k1").then(|| key.clone()))
    })
    .map(drop)
}

fn reason(r: &Request, policy: &VerifyPolicy, key: &PublicKey) -> &'static str {
    check(r, policy, key).unwrap_err().reason()
}

/// `r` with the field `name` replaced by `value`.
fn with(r: &Request, name: &str, value: &str) -> Request {
    let mut out = Request::new(r.method(), r.target_uri()).unwrap();
    for (n, v) in r.fields() {
        if !n.eq_ignore_ascii_case(name) {
            out.push_header(n, v);
        }
    }
    out.push_header(name, value);
    out
}

#[test]
fn every_algorithm_signs_and_tampering_is_refused() {
    let store = MemoryStore::new().unwrap();
    for alg in [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
    ] {
        let key = store.generate(alg, &format!("k-{alg}")).unwrap();
        let r = signed(&store, &key, spec());
        let policy = VerifyPolicy::at(NOW + 10);
        check(&r, &policy, &key.public_key).unwrap();
        // another method, another URI, another covered field value
        let mut moved = Request::new("PUT", r.target_uri()).unwrap();
        for (n, v) in r.fields() {
            moved.push_header(n, v);
        }
        assert_eq!(reason(&moved, &policy, &key.public_key), "bad-signature");
        let mut elsewhere = Request::new("POST", "https://api.example.com/v1/things?x=2").unwrap();
        for (n, v) in r.fields() {
            elsewhere.push_header(n, v);
        }
        assert_eq!(
            reason(&elsewhere, &policy, &key.public_key),
            "bad-signature"
        );
        let typed = with(&r, "Content-Type", "text/plain");
        assert_eq!(reason(&typed, &policy, &key.public_key), "bad-signature");
    }
}

#[test]
fn malformed_headers_unknown_keys_and_wrong_algorithms() {
    let store = MemoryStore::new().unwrap();
    let key = store.generate(Algorithm::Ed25519, "k").unwrap();
    let other = store.generate(Algorithm::EcdsaP256, "other").unwrap();
    let r = signed(&store, &key, spec());
    let policy = VerifyPolicy::at(NOW);
    for bad in [
        "sig1=(\"@method\"",
        "sig1=(@method);created=1",
        "sig1=(\"@Method\");created=1",
        "sig1=:AAAA:",
        "sig1=(\"@method\" \"@method\");created=1700000000;keyid=\"k1\"",
        "sig1=(\"content-type\";sf);created=1700000000;keyid=\"k1\"",
        "sig1=(\"@query-param\";name=\"x\");created=1700000000;keyid=\"k1\"",
    ] {
        let e = check(&with(&r, "Signature-Input", bad), &policy, &key.public_key).unwrap_err();
        assert!(
            ["malformed", "unsupported-component"].contains(&e.reason()),
            "{bad}: {e}"
        );
    }
    let e = check(
        &with(&r, "Signature", "sig1=\"not bytes\""),
        &policy,
        &key.public_key,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "malformed", "{e}");
    let e = check(
        &with(&r, "Signature", "sig1=:AAAA:"),
        &policy,
        &key.public_key,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "bad-signature", "a short signature: {e}");
    // a key the verifier does not know
    let e = verify(Message::Request(&r), None, &policy, &mut |_| Ok(None)).unwrap_err();
    assert_eq!(e.reason(), "unknown-key");
    // the same keyid mapped to a key of another algorithm: `alg` says ed25519
    assert_eq!(reason(&r, &policy, &other.public_key), "algorithm");
    // no signature at all, or not the label asked for
    let bare = Request::new("GET", "https://api.example.com/").unwrap();
    assert_eq!(reason(&bare, &policy, &key.public_key), "no-signature");
    let e = verify(Message::Request(&r), Some("sig2"), &policy, &mut |_| {
        Ok(None)
    })
    .unwrap_err();
    assert_eq!(e.reason(), "no-signature");
}

#[test]
fn time_nonce_and_coverage_policies() {
    let store = MemoryStore::new().unwrap();
    let key = store.generate(Algorithm::Ed25519, "k").unwrap();
    let pk = &key.public_key;
    let r = signed(&store, &key, spec().expires(NOW + 60));
    // too old, too far in the future, expired
    assert_eq!(reason(&r, &VerifyPolicy::at(NOW + 400), pk), "stale");
    assert_eq!(reason(&r, &VerifyPolicy::at(NOW - 120), pk), "stale");
    assert_eq!(
        reason(&r, &VerifyPolicy::at(NOW + 200).max_age(Some(1000)), pk),
        "stale"
    );
    // within the skew: fine
    check(&r, &VerifyPolicy::at(NOW - 30), pk).unwrap();
    // a required component not covered, a nonce or expiry demanded of a signature without
    let policy = VerifyPolicy::at(NOW).require(&["content-digest"]).unwrap();
    assert_eq!(reason(&r, &policy, pk), "not-covered");
    let no_nonce = signed(
        &store,
        &key,
        SignatureSpec::new("sig1", "k1")
            .covering(&["@method"])
            .unwrap()
            .created(NOW),
    );
    assert_eq!(
        reason(&no_nonce, &VerifyPolicy::at(NOW).require_nonce(), pk),
        "bad-parameter"
    );
    assert_eq!(
        reason(&no_nonce, &VerifyPolicy::at(NOW).require_expires(), pk),
        "bad-parameter"
    );
    // no created at all, when the policy wants one
    let undated = signed(
        &store,
        &key,
        SignatureSpec::new("sig1", "k1")
            .covering(&["@method"])
            .unwrap(),
    );
    assert_eq!(
        reason(&undated, &VerifyPolicy::at(NOW), pk),
        "bad-parameter"
    );
    check(&undated, &VerifyPolicy::at(NOW).max_age(None), pk).unwrap();
}

#[test]
fn a_component_the_message_lacks_is_named() {
    let store = MemoryStore::new().unwrap();
    let key = store.generate(Algorithm::Ed25519, "k").unwrap();
    let mut r = Request::new("GET", "https://api.example.com/").unwrap();
    let e = sign_request(
        &mut r,
        &SignatureSpec::new("sig1", "k1")
            .covering(&["content-digest"])
            .unwrap(),
        &store,
        &key.id,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "missing-component");
    assert!(e.to_string().contains("content-digest"), "{e}");
    // an X25519 key cannot sign
    let dh = store.generate(Algorithm::X25519, "dh").unwrap();
    let e = sign_request(
        &mut r,
        &SignatureSpec::new("sig1", "k1")
            .covering(&["@method"])
            .unwrap(),
        &store,
        &dh.id,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "algorithm");
}

#[test]
fn what_a_second_reader_tried() {
    let store = MemoryStore::new().unwrap();
    let key = store.generate(Algorithm::Ed25519, "k").unwrap();
    let pk = &key.public_key;
    let r = signed(&store, &key, spec());
    let policy = VerifyPolicy::at(NOW);
    // a signature that covers nothing says nothing about the message
    let empty = with(
        &r,
        "Signature-Input",
        "sig1=();created=1700000000;keyid=\"k1\"",
    );
    assert_eq!(reason(&empty, &policy, pk), "not-covered");
    // a bare line break in a covered value is refused, not folded into a space
    for injected in [
        "application/json\r\nX-Evil: 1",
        "application/json\nX",
        "a\0b",
    ] {
        let e = check(&with(&r, "Content-Type", injected), &policy, pk).unwrap_err();
        assert_eq!(e.reason(), "malformed", "{injected:?}: {e}");
    }
    // obsolete line folding is still one space
    let folded =
        Message::Request(&with(&r, "Content-Type", "application/\r\n json")).field("content-type");
    assert_eq!(folded.as_deref(), Some("application/ json"));
    // the signer never writes what a structured field cannot carry
    let mut req = Request::new("GET", "https://api.example.com/").unwrap();
    for bad in [
        SignatureSpec::new("sig1", "k1")
            .covering(&["@method"])
            .unwrap()
            .nonce("a\r\nb"),
        SignatureSpec::new("sig1", "k\u{e9}")
            .covering(&["@method"])
            .unwrap(),
        SignatureSpec::new("sig1", "k1")
            .covering(&["@method"])
            .unwrap()
            .created(1_000_000_000_000_000),
    ] {
        let e = sign_request(&mut req, &bad, &store, &key.id).unwrap_err();
        assert_eq!(e.reason(), "bad-parameter", "{e}");
    }
    // two URIs never share an authority: a colon outside brackets, a port out of range
    for bad in [
        "http://a:8080:80/x",
        "https://a:0/",
        "https://a:65536/",
        "https://a:x/",
        "https://a b/",
        "https://[zz]/",
    ] {
        assert!(Request::new("GET", bad).is_err(), "{bad}");
    }
    // and a port written with a leading zero is the number it is
    let a = Request::new("GET", "https://Example.com:0443/p").unwrap();
    let b = Request::new("GET", "https://example.com/p").unwrap();
    let auth = |r: &Request| {
        keyhaven_httpsig::signature_base(
            Message::Request(r),
            &[keyhaven_httpsig::Component::new("@authority").unwrap()],
            "()",
        )
        .unwrap()
    };
    assert_eq!(auth(&a), auth(&b));
}
