//! The three layers: the master key (in a backend), KEKs (wrapped by it), DEKs (wrapped by a
//! KEK, one per secret version).

use std::fmt;
use std::sync::Arc;

use keyhaven_core::{Algorithm, Fingerprint, KeyId, KeyInfo, KeyStore, PublicKey, SecretBytes};
use keyhaven_crypto::aead::{NONCE_LEN, Sealer, TAG_LEN};
use keyhaven_crypto::{default_provider, fill_random, kdf};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{EnvelopeError, Result};

/// The highest privacy tier (seed 004: 0 open, 1 encrypted, 2 secure, 3 GPU confidential
/// computing, 4 GPU TEE-I/O).
pub const MAX_TIER: u8 = 4;
/// The longest tenant name, in bytes.
pub const MAX_TENANT_LEN: usize = 255;
/// The longest secret path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

const KEK_MAGIC: &[u8; 4] = b"khk1";
const ENVELOPE_MAGIC: &[u8; 4] = b"khd1";
const KEY_LEN: usize = 32;
const WRAPPED_KEY_LEN: usize = KEY_LEN + TAG_LEN;

/// Domain separation for every derivation and every associated data of this format.
const KEK_WRAP_INFO: &[u8] = b"keyhaven-envelope/v1 kek-wrap\0";
const DEK_AAD: &[u8] = b"keyhaven-envelope/v1 dek\0";
const DATA_AAD: &[u8] = b"keyhaven-envelope/v1 data\0";
const DERIVE_INFO: &[u8] = b"keyhaven-envelope/v1 derive\0";

fn algorithm_code(algorithm: Algorithm) -> Option<u8> {
    match algorithm {
        Algorithm::X25519 => Some(1),
        Algorithm::EcdhP384 => Some(2),
        Algorithm::EcdhP256 => Some(3),
        _ => None,
    }
}

fn algorithm_of_code(code: u8) -> Option<Algorithm> {
    [Algorithm::X25519, Algorithm::EcdhP384, Algorithm::EcdhP256]
        .into_iter()
        .find(|a| algorithm_code(*a) == Some(code))
}

fn check_name(kind: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(EnvelopeError::InvalidInput(format!(
            "a {kind} is 1 to {max} bytes, not {}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(EnvelopeError::InvalidInput(format!(
            "the {kind} {value:?} has control characters"
        )));
    }
    Ok(())
}

fn check_tier(tier: u8) -> Result<()> {
    if tier > MAX_TIER {
        return Err(EnvelopeError::InvalidInput(format!(
            "tier {tier} does not exist: tiers are 0 to {MAX_TIER}"
        )));
    }
    Ok(())
}

/// Whose KEK this is: a tenant, a privacy tier and a version. A KEK serves exactly one tenant and
/// one tier, so a KEK exposed at a lower tier unwraps nothing of a higher one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KekScope {
    tenant: String,
    tier: u8,
    version: u32,
}

impl KekScope {
    /// A scope.
    ///
    /// # Errors
    /// [`EnvelopeError::InvalidInput`] for an empty or over-long tenant (or one with control
    /// characters), a tier above [`MAX_TIER`], or version 0 (versions count from 1).
    pub fn new(tenant: &str, tier: u8, version: u32) -> Result<Self> {
        check_name("tenant", tenant, MAX_TENANT_LEN)?;
        check_tier(tier)?;
        if version == 0 {
            return Err(EnvelopeError::InvalidInput(
                "KEK versions count from 1".into(),
            ));
        }
        Ok(KekScope {
            tenant: tenant.to_owned(),
            tier,
            version,
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The privacy tier.
    pub fn tier(&self) -> u8 {
        self.tier
    }

    /// The version (1, 2, ... as the KEK rotates).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The next version's scope.
    ///
    /// # Errors
    /// [`EnvelopeError::InvalidInput`] after version `u32::MAX`.
    pub fn next(&self) -> Result<Self> {
        let version = self
            .version
            .checked_add(1)
            .ok_or_else(|| EnvelopeError::InvalidInput("the KEK is at its last version".into()))?;
        Ok(KekScope {
            version,
            ..self.clone()
        })
    }
}

impl fmt::Display for KekScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant '{}' tier {} version {}",
            self.tenant, self.tier, self.version
        )
    }
}

/// What a secret version is bound to: its tenant, path, version and tier. Every byte of it goes
/// into the associated data of both its DEK's wrapping and its data, so a ciphertext moved to
/// another tenant, path, version or tier does not open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretContext {
    tenant: String,
    path: String,
    version: u64,
    tier: u8,
}

impl SecretContext {
    /// A context.
    ///
    /// # Errors
    /// [`EnvelopeError::InvalidInput`] for an empty or over-long tenant or path (or one with
    /// control characters), or a tier above [`MAX_TIER`].
    pub fn new(tenant: &str, path: &str, version: u64, tier: u8) -> Result<Self> {
        check_name("tenant", tenant, MAX_TENANT_LEN)?;
        check_name("path", path, MAX_PATH_LEN)?;
        check_tier(tier)?;
        Ok(SecretContext {
            tenant: tenant.to_owned(),
            path: path.to_owned(),
            version,
            tier,
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The secret's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The tier.
    pub fn tier(&self) -> u8 {
        self.tier
    }

    fn aad(&self, domain: &[u8]) -> Writer {
        let mut w = Writer::default();
        w.bytes(domain)
            .field(self.tenant.as_bytes())
            .field(self.path.as_bytes())
            .u64(self.version)
            .u8(self.tier);
        w
    }
}

/// A key-encryption key in the clear, zeroized on drop; its `Debug` shows only its scope.
/// Outside this process a KEK only ever exists as a [`WrappedKek`].
pub struct Kek {
    scope: KekScope,
    key: Zeroizing<[u8; KEY_LEN]>,
    sealer: Sealer,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A secret version sealed under a fresh DEK, the DEK wrapped under a KEK.
///
/// Layout (`to_bytes`): `khd1`, the KEK version (u32), the DEK's nonce (12) and wrapped DEK
/// (48), the data's nonce (12), then the data's ciphertext and tag. The context is not stored:
/// the caller supplies it, and a wrong one does not open.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    kek_version: u32,
    dek_nonce: [u8; NONCE_LEN],
    wrapped_dek: [u8; WRAPPED_KEY_LEN],
    data_nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("kek_version", &self.kek_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// The version of the KEK its DEK is wrapped under (what `min_decryption_version` checks
    /// and what a KEK rotation rewraps).
    pub fn kek_version(&self) -> u32 {
        self.kek_version
    }

    /// The length of the sealed data (plaintext length plus the 16-byte tag).
    pub fn ciphertext_len(&self) -> usize {
        self.ciphertext.len()
    }

    /// The envelope as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(ENVELOPE_MAGIC)
            .u32(self.kek_version)
            .bytes(&self.dek_nonce)
            .bytes(&self.wrapped_dek)
            .bytes(&self.data_nonce)
            .bytes(&self.ciphertext);
        w.0
    }

    /// Reads what [`Envelope::to_bytes`] wrote. Nothing is authenticated here: opening is.
    ///
    /// # Errors
    /// [`EnvelopeError::Malformed`] saying what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new("envelope", bytes);
        r.tag(ENVELOPE_MAGIC)?;
        let kek_version = r.u32("KEK version")?;
        let dek_nonce = r.array("DEK nonce")?;
        let wrapped_dek = r.array("wrapped DEK")?;
        let data_nonce = r.array("data nonce")?;
        let ciphertext = r.rest().to_vec();
        if ciphertext.len() < TAG_LEN {
            return Err(r.malformed(format!(
                "its ciphertext is {} bytes, shorter than a tag",
                ciphertext.len()
            )));
        }
        Ok(Envelope {
            kek_version,
            dek_nonce,
            wrapped_dek,
            data_nonce,
            ciphertext,
        })
    }
}

impl Kek {
    /// A fresh random KEK for `scope`.
    ///
    /// # Errors
    /// [`EnvelopeError::Backend`] if the system RNG fails.
    pub fn generate(scope: KekScope) -> Result<Kek> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut())?;
        Kek::from_key(scope, key)
    }

    fn from_key(scope: KekScope, key: Zeroizing<[u8; KEY_LEN]>) -> Result<Kek> {
        let sealer = Sealer::new(key.as_ref())?;
        Ok(Kek { scope, key, sealer })
    }

    /// The KEK's scope.
    pub fn scope(&self) -> &KekScope {
        &self.scope
    }

    /// The `algorithm` signing key this KEK stands for: derived from it (HKDF-SHA-256 with
    /// the scope and `purpose` in the label), never stored, so a transit key's versions sign
    /// without a second wrapped secret, and the KEK of another scope gives another key.
    ///
    /// # Errors
    /// [`EnvelopeError::Backend`] for an algorithm that does not sign.
    pub fn signing_key(
        &self,
        algorithm: keyhaven_core::Algorithm,
        purpose: &str,
    ) -> Result<keyhaven_crypto::hazmat::SeededKey> {
        let mut label = Vec::with_capacity(purpose.len() + 64);
        label.extend_from_slice(purpose.as_bytes());
        label.push(0);
        label.extend_from_slice(self.scope.to_string().as_bytes());
        Ok(keyhaven_crypto::hazmat::SeededKey::derive(
            algorithm,
            self.key.as_ref(),
            &label,
        )?)
    }

    fn check_context(&self, ctx: &SecretContext, needed: u32) -> Result<()> {
        if ctx.tenant != self.scope.tenant
            || ctx.tier != self.scope.tier
            || needed != self.scope.version
        {
            return Err(EnvelopeError::WrongKek {
                tenant: ctx.tenant.clone(),
                tier: ctx.tier,
                needed,
                have: self.scope.to_string(),
            });
        }
        Ok(())
    }

    fn dek_aad(&self, ctx: &SecretContext) -> Vec<u8> {
        let mut w = ctx.aad(DEK_AAD);
        w.u32(self.scope.version);
        w.0
    }

    fn wrap_dek(
        &self,
        ctx: &SecretContext,
        dek: &[u8; KEY_LEN],
    ) -> Result<([u8; NONCE_LEN], [u8; WRAPPED_KEY_LEN])> {
        let (nonce, sealed) = self.sealer.seal(dek, &self.dek_aad(ctx))?;
        let wrapped = <[u8; WRAPPED_KEY_LEN]>::try_from(sealed.as_slice())
            .map_err(|_| keyhaven_core::Error::Crypto)?;
        Ok((nonce, wrapped))
    }

    /// The envelope's DEK, unwrapped with this KEK (zeroized on drop).
    fn unwrap_dek(&self, ctx: &SecretContext, env: &Envelope) -> Result<Zeroizing<Vec<u8>>> {
        self.check_context(ctx, env.kek_version)?;
        self.sealer
            .open(&env.dek_nonce, &env.wrapped_dek, &self.dek_aad(ctx))
            .filter(|dek| dek.len() == KEY_LEN)
            .ok_or(EnvelopeError::Unauthentic {
                what: "the wrapped DEK",
                bound_to: "tenant, path, version or tier",
            })
    }

    /// Seals one secret version: a fresh DEK encrypts `plaintext` (associated data: the whole
    /// context), and this KEK wraps the DEK (associated data: the context and the KEK version).
    ///
    /// # Errors
    /// [`EnvelopeError::WrongKek`] if the context's tenant or tier is not this KEK's;
    /// [`EnvelopeError::Backend`] if the RNG fails.
    pub fn seal(&self, ctx: &SecretContext, plaintext: &[u8]) -> Result<Envelope> {
        self.check_context(ctx, self.scope.version)?;
        let mut dek = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(dek.as_mut())?;
        let (dek_nonce, wrapped_dek) = self.wrap_dek(ctx, &dek)?;
        let (data_nonce, ciphertext) =
            Sealer::new(dek.as_ref())?.seal(plaintext, &ctx.aad(DATA_AAD).0)?;
        Ok(Envelope {
            kek_version: self.scope.version,
            dek_nonce,
            wrapped_dek,
            data_nonce,
            ciphertext,
        })
    }

    /// Opens a secret version sealed under this KEK in the context `ctx`.
    ///
    /// # Errors
    /// [`EnvelopeError::WrongKek`] for an envelope under another KEK version, tenant or tier;
    /// [`EnvelopeError::Unauthentic`] for a changed envelope or another path or version.
    pub fn open(&self, ctx: &SecretContext, env: &Envelope) -> Result<SecretBytes> {
        let dek = Sealer::new(&self.unwrap_dek(ctx, env)?)?;
        let plain = dek
            .open(&env.data_nonce, &env.ciphertext, &ctx.aad(DATA_AAD).0)
            .ok_or(EnvelopeError::Unauthentic {
                what: "the secret",
                bound_to: "tenant, path, version or tier",
            })?;
        Ok(SecretBytes::copy_from(&plain))
    }

    /// Opens a secret version for the length of `f` only: the plaintext is zeroized when `f`
    /// returns, whatever it returns.
    ///
    /// # Errors
    /// As [`Kek::open`].
    pub fn use_secret<T>(
        &self,
        ctx: &SecretContext,
        env: &Envelope,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let secret = self.open(ctx, env)?;
        Ok(f(secret.expose_secret()))
    }

    /// Moves a secret version from the KEK `old` to this one: its DEK is unwrapped and wrapped
    /// again, its data is neither decrypted nor touched (the returned envelope has the same
    /// data ciphertext).
    ///
    /// # Errors
    /// As [`Kek::open`] for `old`; [`EnvelopeError::WrongKek`] if this KEK has another tenant or
    /// tier.
    pub fn rewrap(&self, old: &Kek, ctx: &SecretContext, env: &Envelope) -> Result<Envelope> {
        self.check_context(ctx, self.scope.version)?;
        let dek = old.unwrap_dek(ctx, env)?;
        let dek =
            <&[u8; KEY_LEN]>::try_from(dek.as_slice()).map_err(|_| keyhaven_core::Error::Crypto)?;
        let (dek_nonce, wrapped_dek) = self.wrap_dek(ctx, dek)?;
        Ok(Envelope {
            kek_version: self.scope.version,
            dek_nonce,
            wrapped_dek,
            ..env.clone()
        })
    }
}

/// A KEK wrapped by a master key: safe to store anywhere (a database row, a file).
///
/// Layout (`to_bytes`): `khk1`, the master key's algorithm (1 X25519, 2 ECDH P-384, 3 ECDH
/// P-256), the master key's fingerprint (32), the tier, the KEK version (u32), the tenant and
/// the ephemeral public key (SPKI DER) each after a 16-bit length, then the nonce (12) and the
/// sealed KEK (48). Everything before the nonce is the associated data of the seal.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKek {
    algorithm: Algorithm,
    master: [u8; 32],
    scope: KekScope,
    ephemeral: PublicKey,
    nonce: [u8; NONCE_LEN],
    sealed: [u8; WRAPPED_KEY_LEN],
}

impl fmt::Debug for WrappedKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKek")
            .field("scope", &self.scope)
            .field("algorithm", &self.algorithm)
            .field("master", &hex_short(&self.master))
            .finish_non_exhaustive()
    }
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl WrappedKek {
    /// The KEK's scope (read without unwrapping; authenticated when unwrapped).
    pub fn scope(&self) -> &KekScope {
        &self.scope
    }

    /// The master key's fingerprint (SHA-256 of its SPKI DER).
    pub fn master_fingerprint(&self) -> &[u8; 32] {
        &self.master
    }

    fn header(&self) -> Writer {
        let mut w = Writer::default();
        w.bytes(KEK_MAGIC)
            .u8(algorithm_code(self.algorithm).unwrap_or(0))
            .bytes(&self.master)
            .u8(self.scope.tier)
            .u32(self.scope.version)
            .field(self.scope.tenant.as_bytes())
            .field(self.ephemeral.spki_der());
        w
    }

    /// The wrapped KEK as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = self.header();
        w.bytes(&self.nonce).bytes(&self.sealed);
        w.0
    }

    /// The scope a wrapped KEK claims, read from its header alone (no key is parsed: cheap
    /// enough for every call). It is authenticated only when the KEK is unwrapped.
    ///
    /// # Errors
    /// [`EnvelopeError::Malformed`] for bytes that are not a wrapped KEK's header.
    pub fn peek_scope(bytes: &[u8]) -> Result<KekScope> {
        let mut r = Reader::new("wrapped KEK", bytes);
        Ok(Self::read_head(&mut r)?.2)
    }

    /// The header: magic, algorithm, master fingerprint and scope.
    fn read_head(r: &mut Reader<'_>) -> Result<(Algorithm, [u8; 32], KekScope)> {
        r.tag(KEK_MAGIC)?;
        let code = r.u8("algorithm")?;
        let algorithm = algorithm_of_code(code)
            .ok_or_else(|| r.malformed(format!("unknown master key algorithm {code}")))?;
        let master = r.array("master key fingerprint")?;
        let tier = r.u8("tier")?;
        let version = r.u32("KEK version")?;
        let tenant = std::str::from_utf8(r.field("tenant")?)
            .map_err(|_| r.malformed("its tenant is not UTF-8"))?;
        let scope = KekScope::new(tenant, tier, version).map_err(|e| r.malformed(e.to_string()))?;
        Ok((algorithm, master, scope))
    }

    /// Reads what [`WrappedKek::to_bytes`] wrote, checking the ephemeral key is a valid point
    /// of the named algorithm. Nothing is authenticated here: unwrapping is.
    ///
    /// # Errors
    /// [`EnvelopeError::Malformed`] saying what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new("wrapped KEK", bytes);
        let (algorithm, master, scope) = Self::read_head(&mut r)?;
        let spki = r.field("ephemeral public key")?;
        let ephemeral = default_provider()
            .parse_public_key_der_as(algorithm, spki)
            .map_err(|e| r.malformed(format!("its ephemeral public key: {e}")))?;
        let nonce = r.array("nonce")?;
        let sealed = r.array("sealed KEK")?;
        r.finish()?;
        Ok(WrappedKek {
            algorithm,
            master,
            scope,
            ephemeral,
            nonce,
            sealed,
        })
    }
}

/// The root of the hierarchy: an agreement key (ECDH P-384/P-256 on a PKCS#11 token or a TPM,
/// or X25519) in any [`KeyStore`], used for nothing else. Its private key never leaves the
/// backend: wrapping and unwrapping ask the backend for agreements, nothing more.
///
/// The wrap is ECIES-shaped, *authenticated by the master key itself*: a fresh ephemeral key per
/// wrap, `Z` = ECDH(ephemeral, master) and `S` = ECDH(master, master's own public key) (which
/// only the holder of the private key can compute: it is the square-Diffie-Hellman value of the
/// public key), the wrapping key = HKDF-SHA-256(`Z || S`, salt = the ephemeral SPKI, info = a
/// domain label and the master SPKI), then AES-256-GCM over the KEK with the header (algorithm,
/// master fingerprint, tenant, tier, version, ephemeral key) as associated data. Without `S`, a
/// wrap could be made by anyone with the public key, and a KEK planted in the database would be
/// taken for the master's.
///
/// `S` is computed in the backend once, when the master key is opened, together with a check
/// that the backend's private key matches the recorded public key; it is kept in memory
/// (zeroized on drop), never stored.
pub struct MasterKey {
    store: Arc<dyn KeyStore>,
    info: KeyInfo,
    own: SecretBytes,
    /// The public key's fingerprint, named in every wrap.
    fingerprint: Fingerprint,
    /// The HKDF info of every wrap: the domain label, then the master SPKI.
    wrap_info: Vec<u8>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.info.id)
            .field("algorithm", &self.info.algorithm)
            .field("backend", &self.store.info().kind)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// The master key `id_or_label` of `store`. Asks the backend for two agreements: one that
    /// checks its private key is the one of the recorded public key (a swapped public key in a
    /// record would otherwise have every wrap made to someone else's key), and `S`.
    ///
    /// # Errors
    /// [`EnvelopeError::NotAgreementKey`] for a signing key; [`EnvelopeError::Unauthentic`] if
    /// the private key does not match the recorded public key; the store's error if there is
    /// no such key or the backend cannot be reached.
    pub fn new(store: Arc<dyn KeyStore>, id_or_label: &str) -> Result<Self> {
        let info = store.resolve(id_or_label)?;
        if algorithm_code(info.algorithm).is_none() {
            return Err(EnvelopeError::NotAgreementKey {
                key: info.id.to_string(),
                algorithm: info.algorithm,
            });
        }
        let probe = default_provider().generate(info.algorithm)?;
        let theirs = probe.agree(&info.public_key)?;
        let ours = store.agree(&info.id, probe.public_key())?;
        if theirs != ours {
            return Err(EnvelopeError::Unauthentic {
                what: "the master key's recorded public key",
                bound_to: "private key (the record and the backend disagree)",
            });
        }
        let own = store.agree(&info.id, &info.public_key)?;
        let fingerprint = info.fingerprint();
        let wrap_info = [KEK_WRAP_INFO, info.public_key.spki_der()].concat();
        Ok(MasterKey {
            store,
            info,
            own,
            fingerprint,
            wrap_info,
        })
    }

    /// The master key's info.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn wrapping_key(
        &self,
        shared: &SecretBytes,
        ephemeral: &PublicKey,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let mut ikm = Zeroizing::new(Vec::with_capacity(shared.len() + self.own.len()));
        ikm.extend_from_slice(shared.expose_secret());
        ikm.extend_from_slice(self.own.expose_secret());
        Ok(kdf::derive_array::<KEY_LEN>(
            &ikm,
            ephemeral.spki_der(),
            &self.wrap_info,
        )?)
    }

    /// Wraps `kek` under this master key (no backend call: `S` was computed when it was opened).
    ///
    /// # Errors
    /// [`EnvelopeError::Backend`] if the RNG fails.
    pub fn wrap(&self, kek: &Kek) -> Result<WrappedKek> {
        let ephemeral = default_provider().generate(self.info.algorithm)?;
        let shared = ephemeral.agree(&self.info.public_key)?;
        let wrapping = self.wrapping_key(&shared, ephemeral.public_key())?;
        let mut wrapped = WrappedKek {
            algorithm: self.info.algorithm,
            master: *self.fingerprint.as_bytes(),
            scope: kek.scope.clone(),
            ephemeral: ephemeral.public_key().clone(),
            nonce: [0; NONCE_LEN],
            sealed: [0; WRAPPED_KEY_LEN],
        };
        let (nonce, sealed) =
            Sealer::new(wrapping.as_ref())?.seal(kek.key.as_ref(), &wrapped.header().0)?;
        wrapped.nonce = nonce;
        wrapped.sealed = <[u8; WRAPPED_KEY_LEN]>::try_from(sealed.as_slice())
            .map_err(|_| keyhaven_core::Error::Crypto)?;
        Ok(wrapped)
    }

    /// Unwraps the KEK of scope `expected`: one agreement in the backend, then HKDF and
    /// AES-256-GCM here. The scope is checked first: a wrapped KEK of another tenant, tier or
    /// version (an old version's row copied over a newer one, say) is refused.
    ///
    /// # Errors
    /// [`EnvelopeError::WrongKek`] for another scope, [`EnvelopeError::WrongMaster`] for a KEK
    /// wrapped by another master key, [`EnvelopeError::Unauthentic`] for a changed or forged
    /// one, the backend's error (kind kept: an unplugged token is `Unavailable`) if the
    /// agreement fails.
    pub fn unwrap(&self, wrapped: &WrappedKek, expected: &KekScope) -> Result<Kek> {
        if &wrapped.scope != expected {
            return Err(EnvelopeError::WrongKek {
                tenant: expected.tenant.clone(),
                tier: expected.tier,
                needed: expected.version,
                have: wrapped.scope.to_string(),
            });
        }
        let mine = &self.fingerprint;
        if wrapped.master != *mine.as_bytes() || wrapped.algorithm != self.info.algorithm {
            return Err(EnvelopeError::WrongMaster {
                tenant: wrapped.scope.tenant.clone(),
                tier: wrapped.scope.tier,
                version: wrapped.scope.version,
                expected: hex_short(&wrapped.master),
                found: mine.short(),
            });
        }
        let shared = self.store.agree(&self.info.id, &wrapped.ephemeral)?;
        let wrapping = self.wrapping_key(&shared, &wrapped.ephemeral)?;
        let opened = Sealer::new(wrapping.as_ref())?
            .open(&wrapped.nonce, &wrapped.sealed, &wrapped.header().0)
            .ok_or(EnvelopeError::Unauthentic {
                what: "the wrapped KEK",
                bound_to: "master key, tenant, tier or version (or it was not made with the master key)",
            })?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if opened.len() != KEY_LEN {
            return Err(keyhaven_core::Error::Crypto.into());
        }
        key.copy_from_slice(&opened);
        Kek::from_key(wrapped.scope.clone(), key)
    }

    /// HKDF-SHA-256 over an agreement of this master key with `peer`, done in the backend, for
    /// the caller's own purpose. The caller's `info` is prefixed with a label of its own
    /// (`keyhaven-envelope/v1 derive`), so no value derived here can be a KEK's wrapping key,
    /// whatever `peer`, `salt` and `info` are.
    ///
    /// # Errors
    /// As [`derive_key`].
    pub fn derive_key(
        &self,
        peer: &PublicKey,
        salt: &[u8],
        info: &[u8],
        len: usize,
    ) -> Result<SecretBytes> {
        let mut labelled = DERIVE_INFO.to_vec();
        labelled.extend_from_slice(info);
        derive_key(
            self.store.as_ref(),
            &self.info.id,
            peer,
            salt,
            &labelled,
            len,
        )
    }
}

/// Derives `len` bytes from the key `id` of `store` and a peer's public key: the backend does
/// the agreement (on the token or TPM for hardware keys, so the private key never leaves it),
/// then HKDF-SHA-256 (RFC 5869) turns the shared secret into key material for the purpose named
/// by `info`. The shared secret itself is zeroized before this returns.
///
/// For a key that is also a [`MasterKey`], use [`MasterKey::derive_key`], which keeps what it
/// derives apart from the hierarchy's own keys.
///
/// # Errors
/// The backend's error (`Unsupported` for a signing key, `InvalidInput` for a peer key on
/// another curve or off the curve, `NotFound`); `InvalidInput` for a length HKDF cannot give.
pub fn derive_key(
    store: &dyn KeyStore,
    id: &KeyId,
    peer: &PublicKey,
    salt: &[u8],
    info: &[u8],
    len: usize,
) -> Result<SecretBytes> {
    let shared = store.agree(id, peer)?;
    Ok(kdf::derive_key(shared.expose_secret(), salt, info, len)?)
}
