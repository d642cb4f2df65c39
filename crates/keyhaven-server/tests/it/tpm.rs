//! TPM attestation through the broker: a live swtpm (manufactured with an EK certificate from a
//! local CA) driven by tpm2-tools enrolls an attestation key by credential activation, then its
//! quote over the release's report data lifts the requester to tier 2 and a tier-2 secret is
//! released; an AK that was not enrolled, a wrong activation secret, a stale PCR and a quote
//! made for another release are refused.

use base64ct::{Base64, Encoding};
use keyhaven::Algorithm;
use keyhaven_client::ClientError;
use keyhaven_server::ServerConfig;
use keyhaven_testkit::devices::{Swtpm, Tpm2Tools};
use serde_json::{Value, json};

use crate::support::start_broker_with;

/// The `tpm` evidence for `report_data`: a quote of PCRs 0-7 by `ak`.
fn evidence(tools: &Tpm2Tools, ak: &str, ak_public: &[u8], report_data: &[u8; 32]) -> Value {
    let indices: Vec<u8> = (0..8).collect();
    let (quote, signature) = tools.quote(ak, &indices, report_data);
    let pcrs: serde_json::Map<String, Value> = tools
        .read_pcrs(&indices)
        .into_iter()
        .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
        .collect();
    json!({
        "type": "tpm",
        "ak": Base64::encode_string(ak_public),
        "quote": Base64::encode_string(&quote),
        "signature": Base64::encode_string(&signature),
        "pcrs": pcrs,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tpm_enrolls_its_attestation_key_and_receives_a_tier_2_secret() {
    let tpm = tokio::task::spawn_blocking(Swtpm::start_with_ek_certificate)
        .await
        .unwrap();
    let tools = Tpm2Tools::new(&tpm);
    tools.extend_pcr(7, &[0x5b; 32]);
    let pcr7 = tools.read_pcrs(&[7])[&7].clone();
    let mut config = ServerConfig {
        tpm_ek_cas: Some(tpm.ek_ca()),
        ..ServerConfig::default()
    };
    config.tpm_pcrs.insert(7, pcr7);
    let t = start_broker_with(config).await;
    let key = t.key(Algorithm::Ed25519, "tpm-host");
    let c = t.client(&key);
    c.register("tpm-host").await.unwrap();
    let options = keyhaven_client::wire::SecretOptions {
        min_tier: Some(2),
        ..Default::default()
    };
    c.put_secret("hw/key", b"bound to a tpm", options)
        .await
        .unwrap();
    let e = c.release_secret("hw/key", None).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Problem(p) if p.kind.ends_with(":tier-too-low")),
        "{e}"
    );

    // Enrollment: the EK certificate and the AK; a credential; the TPM opens it.
    tools.create_ek();
    let (ak_public, _) = tools.create_ak("ak");
    let (ak2_public, _) = tools.create_ak("ak2");
    let post = |path: &'static str, body: Value| {
        let c = c.clone();
        let url = t.url(path);
        async move {
            c.send("POST", &url, Some(body.to_string().into_bytes()))
                .await
                .map(|r| r.json::<Value>().unwrap()["data"].clone())
        }
    };
    let b64 = |v: &Value| Base64::decode_vec(v.as_str().unwrap()).unwrap();
    // A challenge for the AK, and what the TPM makes of it: its id and the secret.
    let challenged = || async {
        let challenge = post(
            "/v1/attestation/tpm/challenge",
            json!({
                "ek_certificate": Base64::encode_string(&tpm.ek_certificate()),
                "ak_public": Base64::encode_string(&ak_public),
            }),
        )
        .await
        .unwrap();
        let secret = tools
            .activate_credential(
                "ak",
                &b64(&challenge["id_object"]),
                &b64(&challenge["encrypted_secret"]),
            )
            .unwrap();
        (challenge["id"].clone(), secret)
    };
    let (id, secret) = challenged().await;
    // A wrong answer is refused and uses the challenge up.
    let mut wrong = secret.clone();
    wrong[0] ^= 1;
    let e = post(
        "/v1/attestation/tpm/activate",
        json!({ "id": id, "secret": Base64::encode_string(&wrong) }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not the credential's"), "{e}");
    let e = post(
        "/v1/attestation/tpm/activate",
        json!({ "id": id, "secret": Base64::encode_string(&secret) }),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("no such credential challenge"),
        "{e}"
    );
    // A new challenge, answered right: enrolled.
    let (id, secret) = challenged().await;
    let enrolled = post(
        "/v1/attestation/tpm/activate",
        json!({ "id": id, "secret": Base64::encode_string(&secret) }),
    )
    .await
    .unwrap();
    assert!(
        enrolled["certified_by"]
            .as_str()
            .unwrap()
            .contains("swtpm-localca"),
        "{enrolled}"
    );

    // The enrolled AK's quote over this release's report data: tier 2, released.
    let r = c
        .release_secret_with("hw/key", None, |rd| {
            Some(evidence(&tools, "ak", &ak_public, rd))
        })
        .await
        .unwrap();
    assert_eq!(r.requester_tier, 2);
    assert_eq!(r.secret.expose_secret(), b"bound to a tpm");
    assert_eq!(
        r.claims["evidence"]["attestation"]["kind"], "tpm",
        "{}",
        r.claims
    );
    assert_eq!(
        r.claims["evidence"]["attestation"]["claims"]["trust"]["hardware"],
        "affirming"
    );

    // Another AK of the same TPM, never enrolled; a quote made for another release; PCR 7
    // changed since the reference was taken.
    let e = c
        .release_secret_with("hw/key", None, |rd| {
            Some(evidence(&tools, "ak2", &ak2_public, rd))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not enrolled"), "{e}");
    let e = c
        .release_secret_with("hw/key", None, |_| {
            Some(evidence(&tools, "ak", &ak_public, &[7; 32]))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another nonce"), "{e}");
    tools.extend_pcr(7, &[0x66; 32]);
    let e = c
        .release_secret_with("hw/key", None, |rd| {
            Some(evidence(&tools, "ak", &ak_public, rd))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("PCR 7"), "{e}");
}
