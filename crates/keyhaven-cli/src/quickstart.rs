//! `keyhaven quickstart`: a working home in one command.

use std::path::Path;

use anyhow::Result;
use keyhaven::fs::{atomic_write, create_private_dir};
use keyhaven::{
    Algorithm, BackendConfig, BackendKind, DefaultKey, Error as KhError, KeyManager, ManagedKey,
    SignInput, SignatureFormat, encoding,
};

use crate::ctx::{Ctx, print_warnings};
use crate::exit::OK;
use crate::output::outln;

const BACKEND: &str = "default";
const LABEL: &str = "default";

pub(crate) fn run(ctx: &Ctx) -> Result<u8> {
    let home = ctx.home()?;
    let created_home = !home.exists();
    create_private_dir(&home)?;
    let m = ctx.manager()?;
    let result = steps(&m, &home, created_home);
    print_warnings(&m);
    result
}

fn steps(m: &KeyManager, home: &Path, created_home: bool) -> Result<u8> {
    outln!(
        "keyhaven home: {}{}",
        home.display(),
        if created_home { " (created)" } else { "" }
    )?;

    if m.config().backends.contains_key(BACKEND) {
        outln!("backend '{BACKEND}': already configured")?;
    } else {
        let b = m.add_backend(BACKEND, BackendConfig::new(BackendKind::Encrypted, None))?;
        outln!(
            "backend '{BACKEND}': created an encrypted store at {} (Argon2id + AES-256-GCM)",
            b.location()
        )?;
    }
    if m.config().default_backend.is_none() {
        m.set_default_backend(Some(BACKEND))?;
    }

    let key = default_key(m)?;
    outln!(
        "default key: {} ({}, {}, fingerprint {})",
        key,
        key.algorithm().jose_name(),
        key.protection(),
        key.info.fingerprint().short()
    )?;
    if !key.algorithm().can_sign() {
        anyhow::bail!(keyhaven::CoreError::Unsupported {
            operation: "sign the quickstart sample",
            reason: format!("the default key {key} is an X25519 key"),
        });
    }

    let dir = home.join("quickstart");
    create_private_dir(&dir)?;
    let message = format!(
        "Hello from keyhaven quickstart, signed at {}.\n",
        keyhaven::rfc3339(now())
    );
    let signature = m.sign(&key, message.as_bytes())?;
    let der = encoding::encode_signature(&signature, SignatureFormat::Der)?;
    let assertion = m.make_assertion(
        &key,
        SignInput::Message(message.as_bytes()),
        &signature,
        SignatureFormat::Der,
    )?;

    // Verify independently of the store: from the signature file's bytes and the public key.
    let decoded = encoding::decode_signature(key.algorithm(), &der, SignatureFormat::Der)?;
    keyhaven::verify(key.public_key(), message.as_bytes(), &decoded)?;
    assertion.verify(Some(message.as_bytes()))?;

    let msg_path = dir.join("message.txt");
    let sig_path = dir.join("message.sig");
    let pub_path = dir.join("public.pem");
    let assertion_path = dir.join("assertion.json");
    // The signature before the assertion that describes it.
    atomic_write(&msg_path, message.as_bytes())?;
    atomic_write(&sig_path, &der)?;
    atomic_write(&pub_path, key.public_key().to_pem()?.as_bytes())?;
    let mut json = assertion.to_json()?;
    json.push('\n');
    atomic_write(&assertion_path, json.as_bytes())?;
    outln!(
        "signed:      {} -> {}",
        msg_path.display(),
        sig_path.display()
    )?;
    outln!("verified:    the signature is valid (checked with the public key alone)")?;
    outln!("assertion:   {}", assertion_path.display())?;
    outln!("public key:  {}", pub_path.display())?;

    let hash = match key.algorithm() {
        Algorithm::EcdsaP256 => Some("-sha256"),
        Algorithm::EcdsaP384 => Some("-sha384"),
        _ => None,
    };
    outln!()?;
    outln!("Next, try:")?;
    outln!("  keyhaven key list")?;
    outln!("  keyhaven key show {LABEL}")?;
    outln!("  keyhaven sign --message-file FILE --out FILE.sig --assertion FILE.json")?;
    outln!(
        "  keyhaven verify --public-key {} --message-file {} --signature {}",
        pub_path.display(),
        msg_path.display(),
        sig_path.display()
    )?;
    if let Some(h) = hash {
        outln!(
            "  openssl dgst {h} -verify {} -signature {} {}",
            pub_path.display(),
            sig_path.display(),
            msg_path.display()
        )?;
    }
    outln!("  keyhaven key generate --algorithm ed25519 --label my-key")?;
    outln!("  keyhaven doctor")?;
    if std::env::var_os("KEYHAVEN_HOME").is_none() {
        outln!(
            "(if this is not your default home, add --home {} or set KEYHAVEN_HOME)",
            home.display()
        )?;
    }
    Ok(OK)
}

fn now() -> u64 {
    keyhaven::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The default key; if there is none, the key labelled `default` in the default backend, else
/// a new P-384 key with that label. It becomes the default key.
fn default_key(m: &KeyManager) -> Result<ManagedKey> {
    match m.default_key() {
        Ok(k) => return Ok(k),
        Err(KhError::NoDefaultKey(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let key = match m.resolve(&format!("{BACKEND}:{LABEL}")) {
        Ok(k) => k,
        Err(e) if e.kind() == keyhaven::ErrorKind::NotFound => {
            let k = m.generate(Some(BACKEND), Algorithm::EcdsaP384, LABEL)?;
            outln!("generated:   a P-384 key labelled '{LABEL}'")?;
            k
        }
        Err(e) => return Err(e.into()),
    };
    // `generate` made it the default if there was none; write the configuration only if not.
    let wanted = DefaultKey::new(key.backend.clone(), key.id().clone());
    if m.config().default_key.as_ref() != Some(&wanted) {
        m.set_default_key(&key)?;
    }
    Ok(key)
}
