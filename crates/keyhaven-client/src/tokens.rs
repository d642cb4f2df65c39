//! Capability tokens: [Biscuit](https://www.biscuitsec.org) tokens (`biscuit-auth`) that the
//! key broker mints for a tenant, bound to a holder key.
//!
//! - **Public-key verifiable**: the broker signs the first block with a root key derived from
//!   its master key (every node sharing the master key derives the same one); anyone with the
//!   root public key (`GET /v1/server`, `token_key`) checks a token offline.
//! - **Attenuable offline**: a holder appends a block that narrows operations, paths and
//!   lifetime ([`attenuate`]), asking no one; a block can only add checks, never rights.
//! - **Bound to a holder key**: the first block names the holder's key fingerprint, and the
//!   broker honours a token only on a request that key signed (RFC 9421): a stolen token is
//!   useless without the key.
//! - **Revocable by id**: each block has a revocation id; the broker refuses a token any of
//!   whose ids was revoked, on every node (the ids are in the shared database).
//!
//! A token travels as `kht_` and its base64url form, in `Authorization: Bearer` or in Vault's
//! `X-Vault-Token` header.
//!
//! ```
//! use keyhaven_client::tokens::{self, Attenuation};
//!
//! // (A token the broker minted; here one made with a throwaway root key.)
//! # let root = biscuit_auth::KeyPair::new();
//! # let grant = tokens::Grant { tenant: "tenant-1", minter: &"cd".repeat(32), holder: &"ab".repeat(32) };
//! # let minted = tokens::mint(&root, grant, &[tokens::Right::new("secret.release", "db/")?],
//! #     2_000_000_000)?;
//! let narrower = tokens::attenuate(&minted, &Attenuation {
//!     operations: Some(vec!["secret.release".into()]),
//!     prefix: Some("db/replica/".into()),
//!     expires_at: Some(1_900_000_000),
//! })?;
//! let view = tokens::inspect(&narrower)?;
//! assert_eq!(view.blocks.len(), 2);
//! assert_eq!(view.id, tokens::inspect(&minted)?.id, "one family: the first block's id");
//! # Ok::<(), keyhaven_client::ClientError>(())
//! ```

use std::collections::HashMap;

use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::{KeyPair, UnverifiedBiscuit};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// What every keyhaven token starts with.
pub const PREFIX: &str = "kht_";
/// The longest token accepted (bytes, as sent).
pub const MAX_TOKEN: usize = 16 * 1024;
/// The most blocks a token may have (each attenuation adds one).
pub const MAX_BLOCKS: usize = 16;

/// The operations a right can name (`*` names them all).
pub const OPERATIONS: &[&str] = &[
    "secret.write",
    "secret.read",
    "secret.list",
    "secret.delete",
    "secret.release",
    "transit.create",
    "transit.read",
    "transit.list",
    "transit.rotate",
    "transit.config",
    "transit.encrypt",
    "transit.decrypt",
    "transit.rewrap",
    "transit.datakey",
    "transit.sign",
    "transit.verify",
];

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::InvalidInput(message.into())
}

/// An operation (or `*`) on the paths (secret paths, transit key names) that start with a
/// prefix (empty: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Right {
    /// One of [`OPERATIONS`], or `*`.
    pub operation: String,
    /// The path prefix.
    pub prefix: String,
}

impl Right {
    /// A right, checked.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for an unknown operation or a prefix with control
    /// characters or over 512 bytes.
    pub fn new(operation: &str, prefix: &str) -> Result<Right> {
        check_operation(operation)?;
        check_prefix(prefix)?;
        Ok(Right {
            operation: operation.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

fn check_operation(operation: &str) -> Result<()> {
    if operation == "*" || OPERATIONS.contains(&operation) {
        Ok(())
    } else {
        Err(invalid(format!(
            "'{operation}' is not an operation: use * or one of {}",
            OPERATIONS.join(", ")
        )))
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > 512 || prefix.chars().any(char::is_control) {
        return Err(invalid(
            "a path prefix is at most 512 bytes, without control characters",
        ));
    }
    Ok(())
}

/// Reads `kht_...` into the token's bytes, unverified (any later check needs the root key).
///
/// # Errors
/// [`ClientError::InvalidInput`] for text that is not a keyhaven token.
pub fn parse(token: &str) -> Result<UnverifiedBiscuit> {
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return Err(invalid(format!("a token is at most {MAX_TOKEN} bytes")));
    }
    let body = token
        .strip_prefix(PREFIX)
        .ok_or_else(|| invalid(format!("a keyhaven token starts with {PREFIX}")))?;
    let b = UnverifiedBiscuit::from_base64(body)
        .map_err(|e| invalid(format!("not a capability token: {e}")))?;
    if b.block_count() > MAX_BLOCKS {
        return Err(invalid(format!(
            "the token has {} blocks; at most {MAX_BLOCKS} are read",
            b.block_count()
        )));
    }
    Ok(b)
}

fn format(b: &UnverifiedBiscuit) -> Result<String> {
    let body = b
        .to_base64()
        .map_err(|e| invalid(format!("the token cannot be written: {e}")))?;
    Ok(format!("{PREFIX}{body}"))
}

/// What a token's first block says: whose resources, minted by which of its keys, for which
/// holder key.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The tenant whose resources it lends.
    pub tenant: &'a str,
    /// The tenant's key that minted it (the token dies with that key's standing).
    pub minter: &'a str,
    /// The holder's key fingerprint.
    pub holder: &'a str,
}

/// Mints a token (the broker's part; exposed for tests and offline tooling): the grant, the
/// rights and the expiry (seconds since the epoch) in the first block, signed with `root`.
///
/// # Errors
/// [`ClientError::InvalidInput`] for no rights, or a token that cannot be built.
pub fn mint(root: &KeyPair, grant: Grant<'_>, rights: &[Right], expires_at: u64) -> Result<String> {
    mint_derived(root, grant, rights, expires_at, Parent::default())
}

/// The token a derived token was given through (see [`mint_derived`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Parent<'a> {
    /// Its revocation ids: revoking any of them revokes the derived token too.
    pub ids: &'a [String],
    /// The key that minted it: revoked or retired, the derived token dies with it too.
    pub minter: Option<&'a str>,
}

/// [`mint`] a token given through another (a capability a release gave instead of a secret,
/// say): the broker refuses it once `parent` is revoked or its minting key no longer stands.
///
/// # Errors
/// As [`mint`].
pub fn mint_derived(
    root: &KeyPair,
    grant: Grant<'_>,
    rights: &[Right],
    expires_at: u64,
    parent: Parent<'_>,
) -> Result<String> {
    let Grant {
        tenant,
        minter,
        holder,
    } = grant;
    if rights.is_empty() {
        return Err(invalid("a token carries at least one right"));
    }
    let mut params = HashMap::new();
    params.insert("tenant".to_owned(), Term::Str(tenant.to_owned()));
    params.insert("holder".to_owned(), Term::Str(holder.to_owned()));
    params.insert("minter".to_owned(), Term::Str(minter.to_owned()));
    params.insert("expires".to_owned(), Term::Date(expires_at));
    let mut builder = biscuit_auth::Biscuit::builder()
        .code_with_params(
            "tenant({tenant}); minter({minter}); holder({holder}); expires({expires});
             check if time($t), $t <= {expires};",
            params,
            HashMap::new(),
        )
        .map_err(|e| invalid(format!("the token: {e}")))?;
    for id in parent.ids {
        let mut p = HashMap::new();
        p.insert("id".to_owned(), Term::Str(id.clone()));
        builder = builder
            .code_with_params("parent({id});", p, HashMap::new())
            .map_err(|e| invalid(format!("the token: {e}")))?;
    }
    if let Some(m) = parent.minter {
        let mut p = HashMap::new();
        p.insert("m".to_owned(), Term::Str(m.to_owned()));
        builder = builder
            .code_with_params("parent_minter({m});", p, HashMap::new())
            .map_err(|e| invalid(format!("the token: {e}")))?;
    }
    for r in rights {
        check_operation(&r.operation)?;
        check_prefix(&r.prefix)?;
        let mut p = HashMap::new();
        p.insert("op".to_owned(), Term::Str(r.operation.clone()));
        p.insert("prefix".to_owned(), Term::Str(r.prefix.clone()));
        builder = builder
            .code_with_params("right({op}, {prefix});", p, HashMap::new())
            .map_err(|e| invalid(format!("the token: {e}")))?;
    }
    let b = builder
        .build(root)
        .map_err(|e| invalid(format!("the token cannot be signed: {e}")))?;
    let body = b
        .to_base64()
        .map_err(|e| invalid(format!("the token cannot be written: {e}")))?;
    Ok(format!("{PREFIX}{body}"))
}

/// How to narrow a token: each given limit is a check every later use must pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attenuation {
    /// Only these operations.
    pub operations: Option<Vec<String>>,
    /// Only paths starting with this.
    pub prefix: Option<String>,
    /// Not after this time (seconds since the epoch).
    pub expires_at: Option<u64>,
}

/// Appends a block with `narrow`'s checks: done offline, by the holder, without the root key.
/// The result can do less than `token`, never more.
///
/// # Errors
/// [`ClientError::InvalidInput`] for a malformed token, an empty attenuation, or an unknown
/// operation.
pub fn attenuate(token: &str, narrow: &Attenuation) -> Result<String> {
    let b = parse(token)?;
    if b.block_count() >= MAX_BLOCKS {
        return Err(invalid(format!("a token has at most {MAX_BLOCKS} blocks")));
    }
    let mut block = BlockBuilder::new();
    let mut any = false;
    if let Some(ops) = &narrow.operations {
        if ops.is_empty() {
            return Err(invalid("name at least one operation"));
        }
        for op in ops {
            check_operation(op)?;
        }
        let set: std::collections::BTreeSet<Term> =
            ops.iter().map(|o| Term::Str(o.clone())).collect();
        let mut p = HashMap::new();
        p.insert("ops".to_owned(), Term::Set(set));
        block = block
            .code_with_params(
                "check if operation($op), {ops}.contains($op);",
                p,
                HashMap::new(),
            )
            .map_err(|e| invalid(format!("the attenuation: {e}")))?;
        any = true;
    }
    if let Some(prefix) = &narrow.prefix {
        check_prefix(prefix)?;
        let mut p = HashMap::new();
        p.insert("prefix".to_owned(), Term::Str(prefix.clone()));
        block = block
            .code_with_params(
                "check if path($p), $p.starts_with({prefix});",
                p,
                HashMap::new(),
            )
            .map_err(|e| invalid(format!("the attenuation: {e}")))?;
        any = true;
    }
    if let Some(at) = narrow.expires_at {
        let mut p = HashMap::new();
        p.insert("expires".to_owned(), Term::Date(at));
        block = block
            .code_with_params("check if time($t), $t <= {expires};", p, HashMap::new())
            .map_err(|e| invalid(format!("the attenuation: {e}")))?;
        any = true;
    }
    if !any {
        return Err(invalid(
            "an attenuation narrows something: operations, a path prefix or an expiry",
        ));
    }
    let narrowed = b
        .append(block)
        .map_err(|e| invalid(format!("the token cannot be attenuated: {e}")))?;
    format(&narrowed)
}

/// What a token says, read without its root key (so not yet proof of anything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Its family's id: the first block's revocation id (hex). Revoking it revokes the token
    /// and every attenuation of it.
    pub id: String,
    /// Every block's revocation id (hex), first block first.
    pub revocation_ids: Vec<String>,
    /// Every block's Datalog source, first block first.
    pub blocks: Vec<String>,
}

/// Reads a token's blocks and ids (no signature is checked: see [`TokenView`]).
///
/// # Errors
/// [`ClientError::InvalidInput`] for a malformed token.
pub fn inspect(token: &str) -> Result<TokenView> {
    let b = parse(token)?;
    let revocation_ids: Vec<String> = b.revocation_identifiers().iter().map(hex::encode).collect();
    let blocks = (0..b.block_count())
        .map(|i| {
            b.print_block_source(i)
                .map_err(|e| invalid(format!("block {i}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TokenView {
        id: revocation_ids.first().cloned().unwrap_or_default(),
        revocation_ids,
        blocks,
    })
}

/// A token the broker minted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minted {
    /// The token (`kht_...`): give it to its holder; alone it is worth nothing.
    pub token: String,
    /// Its id (to revoke it and every attenuation of it).
    pub id: String,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl crate::Client {
    /// Mints a token for this client's own resources, held by the registered key `holder`
    /// (fingerprint), with `rights`, for `ttl` seconds (at most 30 days).
    ///
    /// # Errors
    /// 404 for a holder that is not registered; 400 for bad rights; as
    /// [`crate::Client::send`].
    pub async fn mint_token(&self, holder: &str, rights: &[Right], ttl: u64) -> Result<Minted> {
        let body = serde_json::json!({ "holder": holder, "rights": rights, "ttl": ttl });
        let out: crate::wire::VaultData<Minted> =
            self.call("POST", "v1/tokens", Some(&body)).await?;
        Ok(out.data)
    }

    /// Revokes `token` (one of this client's tenant): with `family`, its first block's id, so
    /// it and every attenuation of it; otherwise only its last block's (this attenuation and
    /// what was made from it). Returns the id revoked.
    ///
    /// # Errors
    /// 403 for another tenant's token; as [`crate::Client::send`].
    pub async fn revoke_token(&self, token: &str, family: bool, reason: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct Revoked {
            id: String,
        }
        let scope = if family { "family" } else { "this" };
        let body = serde_json::json!({ "token": token, "scope": scope, "reason": reason });
        let out: crate::wire::VaultData<Revoked> =
            self.call("POST", "v1/tokens/revoke", Some(&body)).await?;
        Ok(out.data.id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn minted(root: &KeyPair) -> String {
        let minter = "cd".repeat(32);
        let holder = "ab".repeat(32);
        let grant = Grant {
            tenant: "tenant-a",
            minter: &minter,
            holder: &holder,
        };
        mint(
            root,
            grant,
            &[
                Right::new("secret.release", "db/").unwrap(),
                Right::new("*", "tmp/").unwrap(),
            ],
            2_000_000_000,
        )
        .unwrap()
    }

    #[test]
    fn a_token_reads_back_and_attenuations_only_add_blocks() {
        let root = KeyPair::new();
        let t = minted(&root);
        let view = inspect(&t).unwrap();
        assert_eq!(view.blocks.len(), 1);
        assert!(
            view.blocks[0].contains("tenant(\"tenant-a\")"),
            "{:?}",
            view.blocks
        );
        assert!(
            view.blocks[0].contains("right(\"secret.release\", \"db/\")"),
            "{:?}",
            view.blocks
        );
        let narrow = attenuate(
            &t,
            &Attenuation {
                operations: Some(vec!["secret.release".into()]),
                prefix: Some("db/x".into()),
                expires_at: Some(1_900_000_000),
            },
        )
        .unwrap();
        let nv = inspect(&narrow).unwrap();
        assert_eq!(nv.blocks.len(), 2);
        assert_eq!(nv.id, view.id, "the family id is the first block's");
        assert_eq!(nv.revocation_ids.len(), 2);
        assert!(nv.blocks[1].starts_with("check if"), "{:?}", nv.blocks);
        // A quote in a prefix stays data, never code.
        let tricky = attenuate(
            &t,
            &Attenuation {
                prefix: Some("a\"); right(\"*\", \"".into()),
                ..Attenuation::default()
            },
        )
        .unwrap();
        let tv = inspect(&tricky).unwrap();
        assert!(!tv.blocks[1].contains("\nright"), "{:?}", tv.blocks);
        // It still verifies with the root (so an attenuation is a real extension).
        parse(&narrow).unwrap().verify(root.public()).unwrap();
    }

    #[test]
    fn malformed_tokens_and_rights_are_refused_saying_why() {
        for (text, says) in [
            ("abc", "starts with kht_"),
            ("kht_!!!", "not a capability token"),
            ("kht_", "not a capability token"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(parse(&format!("kht_{}", "A".repeat(MAX_TOKEN))).is_err());
        assert!(Right::new("steal", "").is_err());
        assert!(Right::new("*", "a\nb").is_err());
        let root = KeyPair::new();
        let grant = Grant {
            tenant: "t",
            minter: "m",
            holder: "h",
        };
        assert!(mint(&root, grant, &[], 1).is_err());
        let t = minted(&root);
        assert!(
            attenuate(&t, &Attenuation::default()).is_err(),
            "an empty attenuation"
        );
        assert!(
            attenuate(
                &t,
                &Attenuation {
                    operations: Some(vec![]),
                    ..Attenuation::default()
                }
            )
            .is_err()
        );
    }

    /// Writes fuzz seeds (`KEYHAVEN_WRITE_SEEDS=DIR`): a minted token and an attenuated one.
    #[test]
    fn write_fuzz_seeds_when_asked() {
        let Some(dir) = std::env::var_os("KEYHAVEN_WRITE_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let t = minted(&KeyPair::new());
        std::fs::write(dir.join("minted"), &t).unwrap();
        let n = attenuate(
            &t,
            &Attenuation {
                prefix: Some("db/".into()),
                ..Attenuation::default()
            },
        )
        .unwrap();
        std::fs::write(dir.join("attenuated"), n).unwrap();
    }
}
