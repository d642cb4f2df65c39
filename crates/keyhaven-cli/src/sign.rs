//! `keyhaven sign` and `keyhaven verify`.

use keyhaven::ErrorKind;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result};
use keyhaven::compromise::RevocationList;
use keyhaven::{
    Assertion, CoreError, HashedMessage, ProtectionCheck, PublicKey, SignInput, SignatureFormat,
    default_provider, encoding, rfc3339,
};

use clap::Args;

use crate::args::FormatArg;
use crate::ctx::{Ctx, interactive, print_warnings, prompt, read_secret_file};
use crate::exit::{OK, OtherPassphrase, UsageError, VERIFY_FAILED};
use crate::output::{errln, outln, read_file, write_stdout};

/// Parses a hex digest (white space and a `0x` prefix are ignored).
pub(crate) fn parse_hex(text: &str) -> Result<Vec<u8>, CoreError> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let cleaned = cleaned.strip_prefix("0x").unwrap_or(&cleaned);
    hex::decode(cleaned)
        .map_err(|_| CoreError::InvalidInput(format!("--digest '{text}' is not hexadecimal")))
}

enum Input {
    Message(Vec<u8>),
    Digest(Vec<u8>),
    /// An ECDSA message hashed as it was read: a 1 GiB file costs 64 KiB of memory.
    Hashed(HashedMessage),
}

impl Input {
    fn as_sign_input(&self) -> SignInput<'_> {
        match self {
            Input::Message(m) => SignInput::Message(m),
            Input::Digest(d) => SignInput::Digest(d),
            Input::Hashed(h) => SignInput::Hashed(h),
        }
    }
}

/// Where the signed bytes come from, opened before anything else so that a bad path fails
/// before any passphrase is asked; read once the key's algorithm is known.
enum Source {
    Digest(Vec<u8>),
    File(std::path::PathBuf, std::fs::File),
    Stdin,
}

impl Source {
    fn open(digest: Option<&str>, file: Option<&std::path::Path>) -> Result<Source> {
        if let Some(d) = digest {
            return Ok(Source::Digest(parse_hex(d)?));
        }
        match file {
            Some(f) => {
                let opened = std::fs::File::open(f)
                    .map_err(|e| CoreError::io(format!("read message file {}", f.display()), e))?;
                Ok(Source::File(f.to_owned(), opened))
            }
            None => Ok(Source::Stdin),
        }
    }

    /// ECDSA messages are hashed as they are read (constant memory); Ed25519 signs whole
    /// messages, so those are read into memory, on purpose: PureEdDSA (RFC 8032) hashes the
    /// message twice, once for the nonce and once for the challenge, and a message that changed
    /// between the two passes (a file mapped or read twice while someone else writes it) would
    /// give two signatures with one nonce and different challenges, from which the private
    /// key follows. The copy in memory is the one message both passes see.
    fn load(self, algorithm: keyhaven::Algorithm) -> Result<Input> {
        let (what, reader): (String, Box<dyn Read>) = match self {
            Source::Digest(d) => return Ok(Input::Digest(d)),
            Source::File(path, file) => {
                (format!("message file {}", path.display()), Box::new(file))
            }
            Source::Stdin => (
                "the message from standard input".to_owned(),
                Box::new(std::io::stdin().lock()),
            ),
        };
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
        if algorithm.can_sign() && algorithm != keyhaven::Algorithm::Ed25519 {
            let hashed = HashedMessage::read(algorithm, &mut reader)
                .with_context(|| format!("read {what}"))?;
            if let Some(h) = hashed {
                return Ok(Input::Hashed(h));
            }
        }
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .with_context(|| format!("read {what}"))?;
        Ok(Input::Message(buf))
    }
}

/// The signature, written where `out` says (a file, base64 on a terminal, else raw bytes).
fn write_signature(out: Option<&std::path::Path>, bytes: &[u8]) -> Result<()> {
    match out {
        Some(path) => keyhaven::fs::atomic_write(path, bytes)?,
        None if std::io::stdout().is_terminal() => {
            use base64ct::{Base64, Encoding};
            outln!("{}", Base64::encode_string(bytes))?;
        }
        None => write_stdout(bytes)?,
    }
    Ok(())
}

/// The largest Ed25519 message sent to the agent (larger ones are signed in-process).
const AGENT_MESSAGE_MAX: u64 = 8 * 1024 * 1024;

/// What the agent did with a signing request.
enum ViaAgent {
    /// Signed and written: the exit code.
    Done(u8),
    /// To sign in-process: the input, or what was read of it and the algorithm it was read
    /// for.
    InProcess(Source, Option<(keyhaven::Algorithm, Input)>),
}

/// Signs through the home's agent when one runs and the request is one it serves (no
/// assertion, no key passphrase, no request id); otherwise hands the input back.
fn sign_with_agent(
    ctx: &Ctx,
    args: &SignArgs,
    source: Source,
    format: SignatureFormat,
) -> Result<ViaAgent> {
    // A request id is recorded by the home's own audit log: signed in this process.
    if args.assertion.is_some() || args.key_auth_file.is_some() || ctx.request_id().is_some() {
        return Ok(ViaAgent::InProcess(source, None));
    }
    let Some(client) = crate::agent::agent_for(ctx)? else {
        return Ok(ViaAgent::InProcess(source, None));
    };
    // Which home and principal this command means: an agent of another refuses, and the
    // command signs in-process.
    let home = std::fs::canonicalize(ctx.home()?)
        .ok()
        .map(|h| h.display().to_string());
    let principal = std::env::var(keyhaven::PRINCIPAL_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    let asked = keyhaven_client::wire::AgentKey {
        home: home.clone(),
        principal: principal.clone(),
        key: args.key.clone(),
        algorithm: None,
    };
    let key = match client.key(&asked) {
        Ok(k) => k,
        Err(e) if e.is_fallback() => {
            errln!("note: {e}; signing without the agent");
            return Ok(ViaAgent::InProcess(source, None));
        }
        Err(e) => return Err(crate::agent::agent_error(e)),
    };
    let algorithm: keyhaven::Algorithm = key
        .algorithm
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|_| CoreError::InvalidInput("the agent named an unknown algorithm".into()))?;
    if let Source::File(_, f) = &source
        && algorithm == keyhaven::Algorithm::Ed25519
        && f.metadata().map_or(true, |m| m.len() > AGENT_MESSAGE_MAX)
    {
        return Ok(ViaAgent::InProcess(source, None));
    }
    let input = source.load(algorithm)?;
    use base64ct::{Base64, Encoding};
    let request = match &input {
        Input::Digest(d) => Some(hex::encode(d)).map(|d| (None, Some(d))),
        // An assertion's signing input is refused in-process, with its own message.
        Input::Hashed(h) if h.is_assertion_input() => None,
        Input::Hashed(h) => Some((None, Some(hex::encode(&h.digest)))),
        Input::Message(m) if m.len() as u64 <= AGENT_MESSAGE_MAX => {
            Some((Some(Base64::encode_string(m)), None))
        }
        Input::Message(_) => None,
    };
    let Some((message, digest)) = request else {
        return Ok(ViaAgent::InProcess(
            Source::Digest(Vec::new()),
            Some((algorithm, input)),
        ));
    };
    let request = keyhaven_client::wire::AgentSign {
        home,
        principal,
        key: key.key.clone(),
        message,
        digest,
    };
    let signed = match client.sign(&request) {
        Ok(s) => s,
        Err(e) if e.is_fallback() => {
            errln!("note: {e}; signing without the agent");
            return Ok(ViaAgent::InProcess(
                Source::Digest(Vec::new()),
                Some((algorithm, input)),
            ));
        }
        Err(e) => return Err(crate::agent::agent_error(e)),
    };
    // The key and algorithm asked for, or nothing is written.
    if Some(&signed.key) != key.key.as_ref() || signed.algorithm != algorithm.short_name() {
        return Err(CoreError::InvalidInput(format!(
            "the agent signed with {} ({}), not with {} ({algorithm}): nothing written",
            signed.key,
            signed.algorithm,
            key.key.as_deref().unwrap_or("?")
        ))
        .into());
    }
    let raw = Base64::decode_vec(&signed.signature)
        .map_err(|_| CoreError::InvalidInput("the agent's signature is not base64".into()))?;
    let sig = keyhaven::Signature::from_raw(algorithm, raw)?;
    write_signature(
        args.out.as_deref(),
        &encoding::encode_signature(&sig, format)?,
    )?;
    Ok(ViaAgent::Done(OK))
}

pub(crate) fn sign(ctx: &Ctx, args: SignArgs) -> Result<u8> {
    // Open the input before anything else: a bad path fails fast, before any passphrase.
    let source = Source::open(args.digest.as_deref(), args.message_file.as_deref())?;
    let format: SignatureFormat = args.signature_format.into();
    // A running agent signs without opening the stores (no passphrase, no key derivation).
    let (source, loaded) = match sign_with_agent(ctx, &args, source, format)? {
        ViaAgent::Done(code) => return Ok(code),
        ViaAgent::InProcess(source, loaded) => (source, loaded),
    };
    let m = ctx.manager()?;
    let result = (|| {
        let key = match &args.key {
            Some(r) => m.resolve(r)?,
            None => m.default_key()?,
        };
        // A logical key signs with its primary version: name that one in the assertion.
        let key = m.rotation().signing_target(&key)?;
        let input = match loaded {
            Some((alg, input)) if alg == key.algorithm() => input,
            _ => source.load(key.algorithm())?,
        };
        let needs_auth = give_key_auth(&m, &key, args.key_auth_file.as_deref())?;
        let sig = m
            .sign_input(&key, input.as_sign_input())
            .map_err(|e| match e {
                // the key's own passphrase was wrong or missing: say how to give it
                keyhaven::Error::Backend { source, .. }
                    if needs_auth
                        && matches!(
                            source.kind(),
                            ErrorKind::BadPassphrase | ErrorKind::Locked
                        ) =>
                {
                    OtherPassphrase::wrap(KEY_AUTH_OPTION, source)
                }
                other => other.into(),
            })?;
        let bytes = encoding::encode_signature(&sig, format)?;
        let assertion = match &args.assertion {
            Some(_) => {
                let assertion = if args.attest {
                    m.make_attested_assertion(&key, input.as_sign_input(), &sig, format)?
                } else {
                    m.make_assertion(&key, input.as_sign_input(), &sig, format)?
                };
                let mut json = assertion.to_json()?;
                json.push('\n');
                Some(json)
            }
            None => None,
        };
        // The signature first: an assertion never describes a signature that was not written.
        write_signature(args.out.as_deref(), &bytes)?;
        if let (Some(path), Some(json)) = (&args.assertion, &assertion) {
            keyhaven::fs::atomic_write(path, json.as_bytes())?;
        }
        Ok(OK)
    })();
    print_warnings(&m);
    result
}

/// The option that gives a TPM key's own passphrase.
const KEY_AUTH_OPTION: &str = "--key-auth-file";

/// Gives the manager the passphrase of `key` if it has one of its own (a TPM key made with
/// `--key-auth-file`): from `file`, else from the terminal. Returns whether the key needs one.
fn give_key_auth(
    m: &keyhaven::KeyManager,
    key: &keyhaven::ManagedKey,
    file: Option<&std::path::Path>,
) -> Result<bool> {
    if let Some(f) = file {
        let pass = read_secret_file(f).map_err(|e| OtherPassphrase::wrap(KEY_AUTH_OPTION, e))?;
        m.unlock(key, &pass)?;
        return Ok(true);
    }
    // Only keys inside a device have a passphrase of their own: no lookup for the others.
    let needs = key.backend_kind.is_hardware() && m.details(key)?.needs_auth;
    if needs {
        if !interactive() {
            return Err(OtherPassphrase::wrap(
                KEY_AUTH_OPTION,
                CoreError::Locked(format!(
                    "key {key} has a passphrase of its own and standard input is not a terminal"
                )),
            ));
        }
        let pass = prompt(&format!("Passphrase of key {key}: "))
            .map_err(|e| OtherPassphrase::wrap(KEY_AUTH_OPTION, e))?;
        m.unlock(key, &pass)?;
    }
    Ok(needs)
}

pub(crate) fn verify(ctx: &Ctx, args: VerifyArgs) -> Result<u8> {
    if args.digest.is_none() && args.message_file.is_none() {
        return Err(CoreError::InvalidInput("give --digest or --message-file".into()).into());
    }
    let source = Source::open(args.digest.as_deref(), args.message_file.as_deref())?;
    let Some(signature_file) = &args.signature else {
        return verify_assertion_alone(ctx, &args, source);
    };
    let sig_bytes = read_file(signature_file, "signature file")?;
    // With --public-key, nothing of the home is touched: no configuration, no passphrase.
    let mut local_revocation = None;
    let mut home_key = None;
    let public_key: PublicKey = match (&args.public_key, &args.key) {
        (Some(path), _) => {
            let text = read_file(path, "public key file")?;
            let text = String::from_utf8(text).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not a PEM file", path.display()))
            })?;
            default_provider()
                .parse_public_key_pem(&text)
                .with_context(|| format!("read public key {}", path.display()))?
        }
        (None, Some(reference)) => {
            let m = ctx.manager()?;
            let key = m.resolve(reference);
            print_warnings(&m);
            let key = key?;
            local_revocation = m.revocations().revocation_of(&key)?;
            let pk = key.info.public_key.clone();
            home_key = Some((m, key));
            pk
        }
        (None, None) => {
            return Err(UsageError(
                "give --key or --public-key (or --assertion without --signature)".into(),
            )
            .into());
        }
    };
    let alg = public_key.algorithm();
    let input = source.load(alg)?;
    if !alg.can_sign() {
        return Err(CoreError::Unsupported {
            operation: "verify a signature",
            reason: format!("{} keys do not make signatures", alg.jose_name()),
        }
        .into());
    }
    if let Input::Digest(d) = &input {
        alg.check_digest(d)?;
    }
    let sig = match encoding::decode_signature(alg, &sig_bytes, args.signature_format.into()) {
        Ok(s) => s,
        Err(e) => {
            if let Some((m, key)) = &home_key {
                m.audit().record_verification(key, false)?;
            }
            verdict("invalid");
            errln!(
                "the signature is not a well-formed {} signature: {e}",
                alg.jose_name()
            );
            return Ok(VERIFY_FAILED);
        }
    };
    // A versioned key verifies with any version its state allows (the one that matched is
    // reported); a key never rotated with its own public key.
    let mut matched_version = None;
    let mut matched_key = None;
    let outcome = match &home_key {
        Some((m, key)) => {
            match m
                .rotation()
                .verify_versions(key, input.as_sign_input(), &sig, args.allow_retired)
            {
                Ok(Some((n, version_key))) => {
                    local_revocation = m.revocations().revocation_of(&version_key)?;
                    matched_key = Some(version_key.clone());
                    matched_version = Some((n, version_key.info.public_key.clone()));
                    Ok(())
                }
                Ok(None) => verify_plain(&public_key, &input, &sig),
                Err(keyhaven::Error::Core(CoreError::BadSignature)) => Err(CoreError::BadSignature),
                Err(e) => return Err(e.into()),
            }
        }
        None => verify_plain(&public_key, &input, &sig),
    };
    // A check against a key of the home is audited, a failed one too (failure bursts are
    // a detection signal).
    if let Some((m, key)) = &home_key {
        m.audit()
            .record_verification(matched_key.as_ref().unwrap_or(key), outcome.is_ok())?;
    }
    // The key that made the signature: the version that matched, when one did.
    let (public_key, matched_version) = match matched_version {
        Some((n, pk)) => (pk, Some(n)),
        None => (public_key, None),
    };
    match outcome {
        Ok(()) => {
            let asserted = match &args.assertion {
                Some(path) => Some(assertion_time(path, &public_key, &sig)?),
                None => None,
            };
            let listed = match (&args.revocations, &args.authority) {
                (Some(path), Some(authority)) => {
                    let list = RevocationList::parse(&read_file(path, "revocation list")?)
                        .map_err(CoreError::from)?;
                    let verified = list.verify_pinned(authority).map_err(CoreError::from)?;
                    verified.refuses(&public_key, asserted).cloned()
                }
                _ => None,
            };
            // A compromised key's holder can backdate an assertion: its time counts only for
            // ordinary revocations.
            let local = local_revocation
                .filter(|r| r.compromised || asserted.is_none_or(|t| t >= r.revoked_at));
            if let Some(r) = local.or(listed) {
                verdict("revoked");
                return Err(CoreError::Revoked(format!(
                    "the signature is mathematically valid, but its key {} was revoked at {} \
                     ({}){}; {}",
                    r.key_id,
                    rfc3339(r.revoked_at),
                    r.reason,
                    match asserted {
                        Some(t) => format!(" and the assertion says it was made at {}", rfc3339(t)),
                        None => " and no --assertion gives the signing time".into(),
                    },
                    if r.compromised {
                        "a compromised key's signatures are not accepted whatever time they claim"
                    } else {
                        "signatures made after that are not accepted"
                    }
                ))
                .into());
            }
            match matched_version {
                Some(n) => verdict(&format!("valid (version {n})")),
                None => verdict("valid"),
            }
            Ok(OK)
        }
        Err(CoreError::BadSignature) => {
            verdict("invalid");
            Ok(VERIFY_FAILED)
        }
        Err(e) => Err(e.into()),
    }
}

fn verify_plain(
    key: &PublicKey,
    input: &Input,
    sig: &keyhaven::Signature,
) -> Result<(), CoreError> {
    match input {
        Input::Message(m) => keyhaven::verify(key, m, sig),
        Input::Digest(d) => keyhaven::verify_digest(key, d, sig),
        Input::Hashed(h) => keyhaven::verify_digest(key, &h.digest, sig),
    }
}

/// Reads an assertion file.
fn read_assertion(path: &std::path::Path) -> Result<Assertion> {
    let bytes = read_file(path, "assertion")?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CoreError::InvalidInput(format!(
            "{} is not a keyhaven assertion: {e}",
            path.display()
        ))
        .into()
    })
}

/// The signing time an assertion states, after checking it: its metadata is signed by `key`
/// and it describes `sig` (an assertion taken from another signature never lends its time).
fn assertion_time(
    path: &std::path::Path,
    key: &PublicKey,
    sig: &keyhaven::Signature,
) -> Result<u64> {
    let a = read_assertion(path)?;
    let not_this = |why: &str| -> anyhow::Error {
        CoreError::InvalidInput(format!("assertion {}: {why}", path.display())).into()
    };
    if a.fingerprint != key.fingerprint().to_hex() {
        return Err(not_this(&format!(
            "it is about key {}, not the verifying key {}",
            a.fingerprint,
            key.fingerprint().to_hex()
        )));
    }
    match a.verify_metadata() {
        Ok(_) => {}
        Err(e) if e.kind() == keyhaven::ErrorKind::BadSignature => {
            return Err(not_this(
                "its signed metadata does not verify (it was changed after signing)",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    if a.signature()? != *sig {
        return Err(not_this("it describes another signature"));
    }
    Ok(a.created_at_unix()?)
}

/// `keyhaven verify --assertion A --message-file M` (no --signature): the assertion carries the
/// signature. Valid when its signed metadata and the signature both verify (and, with --key or
/// --public-key, it is that key's).
fn verify_assertion_alone(ctx: &Ctx, args: &VerifyArgs, source: Source) -> Result<u8> {
    let Some(path) = &args.assertion else {
        return Err(CoreError::InvalidInput(
            "give --signature FILE (or --assertion FILE, which carries the signature)".into(),
        )
        .into());
    };
    let a = read_assertion(path)?;
    let input = source.load(a.public_key()?.algorithm())?;
    if let Input::Digest(d) = &input
        && a.signed_digest.as_deref() != Some(hex::encode(d).as_str())
    {
        verdict("invalid");
        errln!("the assertion is about another digest");
        return Ok(VERIFY_FAILED);
    }
    let mut local_revocation = None;
    let expected: Option<PublicKey> = match (&args.public_key, &args.key) {
        (Some(p), _) => {
            let text = String::from_utf8(read_file(p, "public key file")?).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not a PEM file", p.display()))
            })?;
            Some(default_provider().parse_public_key_pem(&text)?)
        }
        (None, Some(r)) => {
            let m = ctx.manager()?;
            let key = m.resolve(r)?;
            // The key named may be a logical key: the version that made the assertion.
            let made_by = m
                .rotation()
                .logical_key(&key)?
                .and_then(|l| {
                    l.versions()
                        .iter()
                        .find(|v| v.fingerprint() == a.fingerprint)
                        .and_then(|v| m.resolve(&format!("{}:{}", l.backend(), v.key_id())).ok())
                })
                .unwrap_or(key);
            local_revocation = m.revocations().revocation_of(&made_by)?;
            Some(made_by.info.public_key)
        }
        (None, None) => None,
    };
    match a.verify_input(Some(input.as_sign_input())) {
        Ok(()) => {}
        Err(e) if e.kind() == keyhaven::ErrorKind::BadSignature => {
            verdict("invalid");
            errln!("the assertion's signature or its signed metadata does not verify");
            return Ok(VERIFY_FAILED);
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(pk) = expected
        && pk.fingerprint().to_hex() != a.fingerprint
    {
        verdict("invalid");
        errln!(
            "the assertion was made by key {}, not the one given",
            a.fingerprint
        );
        return Ok(VERIFY_FAILED);
    }
    // The home's own revocations, when the key was named in it: a compromised key's
    // assertions are refused whatever time they claim, a revoked one's after its revocation.
    if let Some(r) = local_revocation
        && (r.compromised || a.created_at_unix()? >= r.revoked_at)
    {
        verdict("revoked");
        return Err(CoreError::Revoked(format!(
            "the assertion verifies, but its key {} was revoked at {} ({})",
            r.key_id,
            rfc3339(r.revoked_at),
            r.reason
        ))
        .into());
    }
    if let (Some(list), Some(authority)) = (&args.revocations, &args.authority) {
        let list =
            RevocationList::parse(&read_file(list, "revocation list")?).map_err(CoreError::from)?;
        let verified = list.verify_pinned(authority).map_err(CoreError::from)?;
        if let Some(r) = verified.refuses(&a.public_key()?, Some(a.created_at_unix()?)) {
            verdict("revoked");
            return Err(CoreError::Revoked(format!(
                "the assertion is valid, but its key {} was revoked at {} ({})",
                r.key_id,
                rfc3339(r.revoked_at),
                r.reason
            ))
            .into());
        }
    }
    // What the assertion shows of its protection claim.
    if let Some(bad) = args
        .trusted_ak
        .iter()
        .find(|a| a.len() != 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(CoreError::InvalidInput(format!(
            "--trusted-ak {bad:?} is 64 hex digits: the attestation_key `keyhaven key attest` prints"
        ))
        .into());
    }
    let protection = match a.check_protection(&args.trusted_ak) {
        Ok(p) => p,
        Err(e) if e.kind() == keyhaven::ErrorKind::BadSignature => {
            verdict("invalid");
            errln!(
                "the assertion's key attestation does not check: not this key's, not for this \
                 signature, or not signed by its attestation key"
            );
            return Ok(VERIFY_FAILED);
        }
        Err(e) => return Err(e.into()),
    };
    let (shown, proved) = match &protection {
        ProtectionCheck::Proved {
            attestation_key,
            trusted: true,
        } => (
            format!("proved by a TPM certification by trusted attestation key {attestation_key}"),
            true,
        ),
        ProtectionCheck::Proved {
            attestation_key, ..
        } => (
            format!(
                "certified by TPM attestation key {attestation_key}, which no --trusted-ak \
                 names: trust it to count it as proof"
            ),
            false,
        ),
        ProtectionCheck::Stated { token, bound } => (
            format!(
                "stated by token '{token}' (its attributes, not a proof): {}",
                if *bound {
                    "never extractable, always sensitive, made on the token"
                } else {
                    "the key may have been extractable or made outside the token"
                }
            ),
            false,
        ),
        ProtectionCheck::Claimed => ("claimed, with no key attestation".into(), false),
        _ => ("a software key".into(), false),
    };
    if args.require_hardware && !proved {
        verdict("unproved");
        errln!("the assertion's signature verifies, but its hardware protection is {shown}");
        return Ok(VERIFY_FAILED);
    }
    verdict("valid");
    errln!("protection: {shown}");
    if args.public_key.is_none() && args.key.is_none() {
        errln!(
            "note: no --key or --public-key was given, so this only shows that the assertion's \
             own key signed it: its metadata is that key holder's claim"
        );
    }
    errln!(
        "signed by {} key {} ({}) in backend '{}' ({}) at {}",
        a.protection,
        a.key_label,
        a.key_id,
        a.backend,
        a.backend_type,
        a.created_at
    );
    Ok(OK)
}

/// Prints the verdict. The exit code is the answer, so a closed standard output must not turn
/// "invalid" into a successful exit: a failure to print is ignored here.
fn verdict(word: &str) {
    let _ = outln!("{word}");
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["digest", "message_file", "stdin"])))]
pub(crate) struct SignArgs {
    /// The key (default: the default key).
    #[arg(long, value_name = "ID|LABEL")]
    pub(crate) key: Option<String>,
    /// Sign this prehashed digest (hex; ECDSA: 48 bytes for P-384, 32 for P-256).
    #[arg(long, value_name = "HEX")]
    pub(crate) digest: Option<String>,
    /// Sign the contents of this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) message_file: Option<PathBuf>,
    /// `-`: sign standard input.
    #[arg(value_name = "-", value_parser = dash)]
    pub(crate) stdin: Option<String>,
    /// der (ASN.1, what openssl reads) or raw (r||s). Ed25519 signatures are always raw.
    #[arg(long, value_enum, default_value_t = FormatArg::Der)]
    pub(crate) signature_format: FormatArg,
    /// Write the signature here (0600, atomically; default: standard output, base64 if that is
    /// a terminal).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Also write a JSON assertion (key, backend, protection, fingerprint, time) here, after
    /// the signature.
    #[arg(long, value_name = "FILE")]
    pub(crate) assertion: Option<PathBuf>,
    /// Put the key's attestation in the assertion (`key attest`): a TPM certifies the key over
    /// this signature; a PKCS#11 token states its attributes. Software keys have none.
    #[arg(long, requires = "assertion")]
    pub(crate) attest: bool,
    /// The passphrase of a TPM key made with `key generate --key-auth-file`: the first line of
    /// this file (mode 0600). Without it, such a key's passphrase is asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_auth_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("who").args(["key", "public_key"])))]
#[command(group(clap::ArgGroup::new("input").required(true).args(["digest", "message_file"])))]
pub(crate) struct VerifyArgs {
    /// A key in a backend.
    #[arg(long, value_name = "ID|LABEL")]
    pub(crate) key: Option<String>,
    /// A public key PEM file (SPKI). Needs no home and no passphrase.
    #[arg(long, value_name = "PEM_FILE")]
    pub(crate) public_key: Option<PathBuf>,
    /// The prehashed digest that was signed (hex).
    #[arg(long, value_name = "HEX")]
    pub(crate) digest: Option<String>,
    /// The file that was signed.
    #[arg(long, value_name = "FILE")]
    pub(crate) message_file: Option<PathBuf>,
    /// The signature file. Without it, --assertion gives the signature (and its signed
    /// metadata is checked too).
    #[arg(long, value_name = "FILE", required_unless_present = "assertion")]
    pub(crate) signature: Option<PathBuf>,
    /// der or raw.
    #[arg(long, value_enum, default_value_t = FormatArg::Der)]
    pub(crate) signature_format: FormatArg,
    /// With --key: also accept retired versions of the key (revoked, compromised and
    /// destroyed versions never verify).
    #[arg(long, requires = "key")]
    pub(crate) allow_retired: bool,
    /// The assertion written with the signature (`keyhaven sign --assertion`): its signed
    /// metadata is checked (an edited field makes it invalid), and its time decides whether a
    /// revocation applies (signatures asserted before it still verify). Without --signature,
    /// it is checked on its own (with --key or --public-key: it must be that key's).
    #[arg(long, value_name = "FILE")]
    pub(crate) assertion: Option<PathBuf>,
    /// A TPM attestation key the verifier trusts (SHA-256 of its TPM2B_PUBLIC, hex, as `key
    /// attest` prints it as attestation_key); repeat for more. An assertion's TPM
    /// certification by it proves its hardware protection.
    #[arg(
        long,
        value_name = "HEX",
        requires = "assertion",
        conflicts_with = "signature"
    )]
    pub(crate) trusted_ak: Vec<String>,
    /// Fail unless the assertion proves its key lives in hardware: a TPM certification by an
    /// attestation key named with --trusted-ak (a token's statement or a bare claim is not
    /// proof).
    #[arg(long, requires = "assertion", conflicts_with = "signature")]
    pub(crate) require_hardware: bool,
    /// A revocation list (`keyhaven revocations export`) to check the key against; needs
    /// --authority. With --key, the home's own revocations are always checked.
    #[arg(long, value_name = "FILE", requires = "authority")]
    pub(crate) revocations: Option<PathBuf>,
    /// The fingerprint (hex, at least 16 characters) of the authority that must have signed
    /// the revocation list.
    #[arg(long, value_name = "FINGERPRINT", requires = "revocations")]
    pub(crate) authority: Option<String>,
}

/// The only value `--message -` takes: standard input.
fn dash(s: &str) -> Result<String, String> {
    if s == "-" {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not '-': use --message-file FILE to sign a file, or - for standard input"
        ))
    }
}
