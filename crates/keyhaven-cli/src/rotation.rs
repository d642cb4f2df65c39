//! `keyhaven key rotate|history`, `keyhaven rotate --due`, `keyhaven policy check|explain`,
//! `keyhaven verify-continuity` and `keyhaven prekeys status|replenish|take`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use keyhaven::versions::{ContinuityProof, DueAction, LogicalKey, verify_chain};
use keyhaven::{CoreError, KeyManager, default_provider, rfc3339};

use crate::ctx::{Ctx, print_warnings};
use crate::exit::OK;
use crate::json::{
    DueJson, HistoryJson, PrekeyBundleJson, PrekeyJson, PrekeyStatusJson, RotationJson,
    SignedPrekeyJson, VersionJson,
};
use crate::output::{errln, outln, print_json, print_table, read_file};

/// `keyhaven policy ...`: rotation policies of this home, and the key broker's release
/// policies.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Load and validate the rotation policies (HOME/rotation.toml); exit 9 naming the field.
    Check,
    /// Which rotation policy applies to a key, and why.
    Explain {
        /// ID, LABEL or BACKEND:ID|LABEL.
        #[arg(value_name = "ID|LABEL")]
        key: String,
    },
    #[command(flatten)]
    Release(crate::policy::PolicyCommand),
}

/// `keyhaven prekeys ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PrekeysCommand {
    /// The one-time prekey pool and the signed prekey of an identity key.
    Status {
        /// The identity key (default: the default key).
        #[arg(long, value_name = "ID|LABEL")]
        identity: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refill the pool when it is below its low-water mark (policy `[prekeys]`; defaults: below
    /// 10, refill to 100), and make a signed prekey if there is none.
    Replenish {
        /// The identity key (default: the default key).
        #[arg(long, value_name = "ID|LABEL")]
        identity: Option<String>,
    },
    /// Hand out one one-time prekey (never the same one twice, even to concurrent processes).
    Take {
        /// The identity key (default: the default key).
        #[arg(long, value_name = "ID|LABEL")]
        identity: Option<String>,
        /// Print JSON (id, public key PEM, the signed prekey and its signature).
        #[arg(long)]
        json: bool,
    },
    /// Use a taken one-time prekey once: agree with the peer's public key (the ephemeral key of
    /// its handshake) and destroy the prekey's private part. The shared secret is written to
    /// --out (a new 0600 file) or standard output, raw. A second use is refused (exit 12).
    Consume {
        /// The one-time prekey's id (as `prekeys take` gave it).
        #[arg(value_name = "PREKEY_ID")]
        prekey: String,
        /// The peer's public key (PEM).
        #[arg(long, value_name = "PEM_FILE")]
        peer: PathBuf,
        /// Write the shared secret here (a new file, 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The identity key (default: the default key).
        #[arg(long, value_name = "ID|LABEL")]
        identity: Option<String>,
    },
    /// Destroy a one-time prekey without using it (handed out to a peer that will never
    /// answer, or exposed).
    Discard {
        /// The one-time prekey's id.
        #[arg(value_name = "PREKEY_ID")]
        prekey: String,
        /// The identity key (default: the default key).
        #[arg(long, value_name = "ID|LABEL")]
        identity: Option<String>,
    },
}

pub(crate) fn rotate_key(
    m: &KeyManager,
    reference: &str,
    reason: &str,
    json: bool,
    proof_out: Option<&std::path::Path>,
    window: Option<std::time::Duration>,
) -> Result<u8> {
    let key = m.resolve(reference)?;
    let o = m.rotation().rotate_key_with_window(&key, reason, window)?;
    if let (Some(path), Some(proof)) = (proof_out, &o.proof) {
        keyhaven::fs::atomic_write(path, proof.to_text().as_bytes())?;
    }
    if json {
        print_json(&RotationJson::from(&o))?;
    } else {
        outln!("{}", o.new_key.id)?;
        errln!(
            "{} is now at version {} ({}, fingerprint {}); {}",
            key.label(),
            o.new_version,
            o.new_key.label,
            o.new_key.fingerprint().short(),
            match o.old_version {
                Some(v) => format!("v{v} verifies until {}", rfc3339(o.migration_end)),
                None => "no earlier version verifies".into(),
            }
        );
        if o.proof.is_some() && proof_out.is_none() {
            errln!(
                "A continuity proof was made (identity key): `keyhaven key history {} --json` \
                 shows it, or pass --proof-out FILE.",
                key.label()
            );
        }
    }
    if let Some(e) = &o.post_action_error {
        errln!("warning: the post-rotation action failed (the rotation stands): {e}");
    }
    Ok(OK)
}

pub(crate) fn history(m: &KeyManager, reference: &str, json: bool) -> Result<u8> {
    let key = match m.resolve(reference) {
        Ok(k) => k,
        // The backend is away: the history is in the registry, which needs no backend.
        Err(e @ keyhaven::Error::Unavailable { .. }) => {
            match m.rotation().find_logical_key(reference)? {
                Some(l) => {
                    errln!("warning: {e}; showing the history kept in the home");
                    return print_history(&l, json);
                }
                None => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let Some(l) = m.rotation().logical_key(&key)? else {
        if json {
            print_json(&HistoryJson {
                logical_key: None,
                label: None,
                backend: None,
                role: None,
                algorithm: None,
                versions: vec![VersionJson {
                    version: 1,
                    key_id: key.id().as_str().to_owned(),
                    state: m.rotation().version_info(&key)?.state,
                    label: None,
                    fingerprint: None,
                    since: None,
                    created_at: None,
                    continuity_proof: None,
                }],
                history: Vec::new(),
            })?;
        } else {
            outln!(
                "{key}: version 1, {}; never rotated",
                m.rotation().version_info(&key)?.state
            )?;
        }
        return Ok(OK);
    };
    print_history(&l, json)
}

fn print_history(l: &LogicalKey, json: bool) -> Result<u8> {
    if json {
        print_json(&HistoryJson::from(l))?;
        return Ok(OK);
    }
    outln!(
        "{} ({}, role {}, backend {})",
        l.label(),
        l.id(),
        l.role().as_str(),
        l.backend()
    )?;
    let rows: Vec<Vec<String>> = l
        .versions()
        .iter()
        .map(|v| {
            vec![
                format!("v{}", v.number()),
                v.key_id().to_string(),
                v.state().name().to_owned(),
                rfc3339(v.state_since()),
                v.fingerprint().get(..16).unwrap_or("").to_owned(),
            ]
        })
        .collect();
    print_table(
        &["VERSION", "KEY ID", "STATE", "SINCE", "FINGERPRINT"],
        &rows,
    )?;
    outln!()?;
    for h in l.history() {
        outln!(
            "{} v{} {}{}{}",
            rfc3339(h.at),
            h.version,
            h.kind.as_str(),
            match (&h.from, &h.to) {
                (Some(f), Some(t)) => format!(" {f} -> {t}"),
                _ => String::new(),
            },
            if h.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", h.detail)
            }
        )?;
    }
    Ok(OK)
}

pub(crate) fn rotate_due(ctx: &Ctx, dry_run: bool, json: bool) -> Result<u8> {
    let m = ctx.manager()?;
    if dry_run {
        let due = m.rotation().due_now();
        print_warnings(&m);
        let due = due?;
        if json {
            let items: Vec<_> = due
                .iter()
                .map(|d| DueJson {
                    key: d.key.clone(),
                    label: d.label.clone(),
                    reason: d.reason.to_string(),
                    action: "would act".into(),
                })
                .collect();
            print_json(&items)?;
        } else if due.is_empty() {
            errln!("Nothing is due.");
        } else {
            for d in &due {
                outln!("{} ({}): {} -> would act", d.label, d.key, d.reason)?;
            }
        }
        return Ok(OK);
    }
    let outcomes = m.rotation().rotate_due();
    print_warnings(&m);
    let outcomes = outcomes?;
    let mut failed = 0;
    let mut items = Vec::new();
    for o in &outcomes {
        let action = match &o.action {
            DueAction::WouldAct => "would act".to_owned(),
            DueAction::Rotated(r) => format!("rotated to v{} ({})", r.new_version, r.new_key.id),
            DueAction::Retired(v) => format!(
                "retired {}",
                v.iter()
                    .map(|n| format!("v{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DueAction::RolledBack => "interrupted rotation rolled back".into(),
            DueAction::Replenished(n) => format!("{n} prekeys added"),
            DueAction::SignedPrekeyRotated => "new signed prekey".into(),
            DueAction::Skipped(why) => format!("skipped: {why}"),
            DueAction::Notified(what) => format!("notified: {what}"),
            DueAction::Failed(e) => {
                failed += 1;
                format!("FAILED: {e}")
            }
            _ => "done".into(),
        };
        if json {
            items.push(DueJson {
                key: o.due.key.clone(),
                label: o.due.label.clone(),
                reason: o.due.reason.to_string(),
                action: action.to_string(),
            });
        } else {
            outln!(
                "{} ({}): {} -> {action}",
                o.due.label,
                o.due.key,
                o.due.reason
            )?;
        }
    }
    if json {
        print_json(&items)?;
    } else if outcomes.is_empty() {
        errln!("Nothing is due.");
    }
    if failed > 0 {
        return Err(CoreError::Unavailable {
            backend: "rotation".into(),
            reason: format!(
                "{failed} due item(s) failed (see above); the others were done, and the failed \
                 keys keep their current version: fix the cause and run `keyhaven rotate --due` \
                 again"
            ),
        }
        .into());
    }
    Ok(OK)
}

pub(crate) fn policy(ctx: &Ctx, cmd: PolicyCommand) -> Result<u8> {
    if let PolicyCommand::Release(cmd) = cmd {
        return crate::policy::run(ctx, cmd);
    }
    let m = ctx.manager()?;
    match cmd {
        // Answered above.
        PolicyCommand::Release(_) => {}
        PolicyCommand::Check => {
            let path = m.rotation().policy_path();
            // The file as written (so a new one can be checked before it is accepted) ...
            let set = keyhaven::versions::PolicySet::load_or_default(&path)
                .map_err(keyhaven::CoreError::from)?;
            // ... and whether the home trusts it.
            let pending = match m.rotation().policies() {
                Ok(_) => None,
                Err(keyhaven::Error::Core(keyhaven::CoreError::Corrupt { .. })) => Some(format!(
                    "not in use yet: the home's integrity manifest does not record it as it is \
                     now; run `keyhaven integrity accept {}`",
                    path.file_name().map_or_else(
                        || path.display().to_string(),
                        |n| n.to_string_lossy().into_owned()
                    )
                )),
                Err(e) => return Err(e.into()),
            };
            if path.exists() {
                outln!(
                    "{}: {} policies, defaults for {} role(s): valid",
                    path.display(),
                    set.policies().len(),
                    [
                        "identity",
                        "signing",
                        "encryption",
                        "signed-prekey",
                        "one-time-prekey"
                    ]
                    .iter()
                    .filter(|r| r.parse().ok().and_then(|r| set.role_default(r)).is_some())
                    .count()
                )?;
            } else {
                outln!(
                    "{} does not exist: seed 002's built-in schedule applies (identity keys \
                     yearly, signed prekeys monthly, one-time prekeys refilled below 10)",
                    path.display()
                )?;
            }
            outln!("{}", prekey_line(&set))?;
            if let Some(note) = pending {
                outln!("{note}")?;
            }
        }
        PolicyCommand::Explain { key } => {
            let key = m.resolve(&key)?;
            let e = m.rotation().explain_policy(&key)?;
            outln!("{key}")?;
            outln!("{e}")?;
            // An identity key's prekeys follow the prekey schedule: say which.
            if e.role == keyhaven::versions::Role::Identity {
                outln!("{}", prekey_line(&m.rotation().policies()?))?;
            }
            print_warnings(&m);
        }
    }
    Ok(OK)
}

/// The prekey schedule in one line, and where it comes from.
fn prekey_line(set: &keyhaven::versions::PolicySet) -> String {
    match set.prekey_schedule() {
        Some((p, source)) => format!(
            "prekeys: {source}: signed prekey rotated every {}, one-time prekeys refilled \
             below {} up to {}",
            humantime::format_duration(p.signed_prekey_max_age),
            p.low_water,
            p.refill_to
        ),
        None => "prekeys: no schedule (builtin_defaults = false and no [prekeys]): rotated and \
                 refilled by hand only (`keyhaven prekeys replenish`)"
            .to_owned(),
    }
}

pub(crate) fn verify_continuity(
    ctx: &Ctx,
    proof: Option<PathBuf>,
    old_public_key: Option<PathBuf>,
    key: Option<String>,
) -> Result<u8> {
    let (first, proofs) = match (&old_public_key, &key) {
        (Some(pem), _) => {
            let path = proof.as_ref().ok_or_else(|| {
                CoreError::InvalidInput("give the proof file (PROOF) with --old-public-key".into())
            })?;
            let text = String::from_utf8(read_file(pem, "public key file")?).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not a PEM file", pem.display()))
            })?;
            let first = default_provider().parse_public_key_pem(&text)?;
            let chain = String::from_utf8(read_file(path, "continuity proof")?).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not a text file", path.display()))
            })?;
            (
                first,
                ContinuityProof::parse_chain(&chain).map_err(CoreError::from)?,
            )
        }
        (None, Some(reference)) => {
            let m = ctx.manager()?;
            let k = m.resolve(reference)?;
            let l = m.rotation().logical_key(&k)?.ok_or_else(|| {
                CoreError::NotFound(format!("continuity proofs for {k}: it was never rotated"))
            })?;
            let v1 = l
                .version(1)
                .ok_or_else(|| CoreError::corrupt(l.id(), "no version 1"))?;
            let first = v1.public_key(l.algorithm()).map_err(CoreError::from)?;
            let proofs = match &proof {
                Some(path) => {
                    let chain =
                        String::from_utf8(read_file(path, "continuity proof")?).map_err(|_| {
                            CoreError::InvalidInput(format!(
                                "{} is not a text file",
                                path.display()
                            ))
                        })?;
                    ContinuityProof::parse_chain(&chain).map_err(CoreError::from)?
                }
                None => m.rotation().continuity_chain(&k)?,
            };
            (first, proofs)
        }
        (None, None) => {
            return Err(CoreError::InvalidInput(
                "give --old-public-key PEM (the first identity's public key) or --key REF".into(),
            )
            .into());
        }
    };
    let last = match verify_chain(&first, &proofs) {
        Ok(last) => last,
        // A bad signature or a broken chain is a verdict, like `keyhaven verify`'s: exit 1.
        Err(
            e @ (keyhaven::versions::RotationError::ContinuitySignature { .. }
            | keyhaven::versions::RotationError::Continuity { .. }),
        ) => {
            let _ = outln!("invalid");
            errln!("{e}");
            return Ok(crate::exit::VERIFY_FAILED);
        }
        Err(e) => return Err(CoreError::from(e).into()),
    };
    outln!("valid")?;
    errln!(
        "{} link(s) from {} to {}",
        proofs.len(),
        first.fingerprint().short(),
        last.fingerprint().short()
    );
    Ok(OK)
}

fn identity(m: &KeyManager, reference: Option<&str>) -> Result<keyhaven::ManagedKey> {
    Ok(match reference {
        Some(r) => m.resolve(r)?,
        None => m.default_key()?,
    })
}

pub(crate) fn prekeys(ctx: &Ctx, cmd: PrekeysCommand) -> Result<u8> {
    let m = ctx.manager()?;
    let result = prekeys_in(&m, cmd);
    print_warnings(&m);
    result
}

fn prekeys_in(m: &KeyManager, cmd: PrekeysCommand) -> Result<u8> {
    let settings = m.rotation().policies()?.prekeys();
    let map = |e: keyhaven::versions::RotationError| anyhow::Error::from(CoreError::from(e));
    match cmd {
        PrekeysCommand::Status { identity: id, json } => {
            let key = identity(m, id.as_deref())?;
            let pool = m.rotation().prekey_pool(&key)?;
            let s = pool.status().map_err(map)?;
            if json {
                print_json(&PrekeyStatusJson {
                    identity: key.id().as_str().to_owned(),
                    available: s.available,
                    taken: s.taken,
                    consumed: s.consumed,
                    signed_prekey_age_seconds: s.signed_prekey_age,
                    low_water: settings.low_water,
                    refill_to: settings.refill_to,
                })?;
            } else {
                outln!(
                    "one-time prekeys: {} available, {} taken, {} consumed (refill below {} to {})",
                    s.available,
                    s.taken,
                    s.consumed,
                    settings.low_water,
                    settings.refill_to
                )?;
                outln!(
                    "signed prekey: {}",
                    match s.signed_prekey_age {
                        Some(a) => format!("{a} s old"),
                        None => "none yet".into(),
                    }
                )?;
            }
        }
        PrekeysCommand::Replenish { identity: id } => {
            let key = identity(m, id.as_deref())?;
            let pool = m.rotation().prekey_pool(&key)?;
            let added = pool
                .replenish(settings.low_water, settings.refill_to)
                .map_err(map)?;
            if pool.signed_prekey().map_err(map)?.is_none() {
                pool.rotate_signed_prekey().map_err(map)?;
                errln!("made a signed prekey");
            }
            outln!("{added} one-time prekey(s) added")?;
        }
        PrekeysCommand::Take { identity: id, json } => {
            let key = identity(m, id.as_deref())?;
            let pool = m.rotation().prekey_pool(&key)?;
            let otpk = pool.take().map_err(map)?;
            let spk = pool.signed_prekey().map_err(map)?;
            if json {
                // A public key or signature that cannot be encoded is an error, never an
                // empty string in the bundle.
                let json_of = |s: &keyhaven::versions::SignedPrekey| -> Result<SignedPrekeyJson> {
                    Ok(SignedPrekeyJson {
                        id: s.key_id.as_str().to_owned(),
                        public_key_pem: s.key.to_pem()?,
                        created_at: rfc3339(s.created_at),
                        signature: hex::encode(keyhaven::encoding::encode_signature(
                            &s.signature,
                            keyhaven::SignatureFormat::Raw,
                        )?),
                    })
                };
                let signed_prekey = spk.as_ref().map(json_of).transpose()?;
                let identity_agreement_key = json_of(&pool.identity_agreement_key().map_err(map)?)?;
                print_json(&PrekeyBundleJson {
                    one_time_prekey: PrekeyJson {
                        id: otpk.id.as_str().to_owned(),
                        public_key_pem: otpk.public.to_pem()?,
                    },
                    signed_prekey,
                    identity_agreement_key,
                    identity_public_key_pem: m
                        .rotation()
                        .signing_target(&key)?
                        .public_key()
                        .to_pem()?,
                })?;
            } else {
                outln!("{}", otpk.id)?;
                outln!("{}", otpk.public.to_pem()?.trim_end())?;
            }
        }
        PrekeysCommand::Consume {
            prekey,
            peer,
            out,
            identity: id,
        } => {
            let key = identity(m, id.as_deref())?;
            let pool = m.rotation().prekey_pool(&key)?;
            let text = String::from_utf8(read_file(&peer, "peer public key")?).map_err(|_| {
                CoreError::InvalidInput(format!("{} is not a PEM file", peer.display()))
            })?;
            let peer_key = default_provider().parse_public_key_pem(&text)?;
            let prekey: keyhaven::KeyId = prekey.parse()?;
            let secret = pool.consume(&prekey, &peer_key).map_err(map)?;
            match out {
                Some(path) => {
                    keyhaven::fs::atomic_write_new(&path, secret.expose_secret())?;
                    errln!(
                        "prekey {prekey} used and destroyed; shared secret in {}",
                        path.display()
                    );
                }
                None => {
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(secret.expose_secret())?;
                    stdout.flush()?;
                }
            }
        }
        PrekeysCommand::Discard {
            prekey,
            identity: id,
        } => {
            let key = identity(m, id.as_deref())?;
            let pool = m.rotation().prekey_pool(&key)?;
            let prekey: keyhaven::KeyId = prekey.parse()?;
            pool.discard(&prekey).map_err(map)?;
            outln!("one-time prekey {prekey} destroyed")?;
        }
    }
    Ok(OK)
}
