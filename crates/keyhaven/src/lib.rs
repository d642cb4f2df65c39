#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod assertion;
#[cfg(feature = "file")]
mod authority;
mod backend;
pub mod backup;
pub mod config;
mod doctor;
mod error;
mod hardware;
pub mod integrity;
pub mod lifecycle;
mod manager;
mod passphrase;
pub mod rollback;
pub mod rotation;
mod tombstones;
mod views;

pub use assertion::{ASSERTION_JWS_TYPE, ASSERTION_VERSION, Assertion, ProtectionCheck, rfc3339};
pub use backend::{Backend, BackendKind};
pub use config::{BackendConfig, CONFIG_FILE, Config, DefaultKey, FallbackConfig, TokenRef};
pub use doctor::{
    BackendReport, DoctorReport, KeyringReport, MechanismDiagnosis, TokenDiagnosis, TpmDiagnosis,
};
pub use error::{Error, ErrorKind, Result};
pub use integrity::IntegrityStatus;
/// The audit log and the access-control and audit decorators (keyhaven-audit).
pub use keyhaven_audit as audit;
/// Compromise reports, detection, revocation and response (keyhaven-compromise).
pub use keyhaven_compromise as compromise;
/// The key hierarchy: a master key in any backend wraps KEKs, which wrap DEKs
/// (keyhaven-envelope). [`KeyManager::master_key`] opens a master key of the home.
pub use keyhaven_envelope as envelope;
/// Key versions, rotation policies, continuity proofs and prekeys (keyhaven-rotation).
pub use keyhaven_rotation as versions;
pub use lifecycle::{
    AccessConfig, AuditConfig, ScanOutcome, WEBHOOK_SIGNATURE_LABEL, WEBHOOK_SIGNATURE_TAG,
};
pub use manager::{
    HashedMessage, Inventory, KeyManager, ManagedKey, ManagedSigner, PRINCIPAL_ENV, ServiceSigner,
    SignInput, Warning,
};
pub use passphrase::{
    FixedPassphrase, NoPassphrase, PassphraseProvider, PassphrasePurpose, PassphraseRequest,
};
pub use rotation::VersionInfo;
pub use views::{AuditView, BackupsView, CompromiseView, RevocationsView, RotationView};

pub use keyhaven_core::{
    Algorithm, BackendInfo, Error as CoreError, Fingerprint, KeyAttestation, KeyDetails, KeyId,
    KeyInfo, KeyOptions, KeySpec, KeyStore, Protection, PublicKey, SecretBytes, Signature,
    SignatureFormat, is_invisible_format, now, unix_now, validate_label,
};
pub use keyhaven_crypto::{
    CryptoProvider, KeySigner, SignWith, StoreKey, default_provider, encoding, fill_random, jwe,
    jws, kdf, verify, verify_digest,
};
/// Private, durable files (atomic writes, 0600/0700 checks, locks): see [`keyhaven_fs`].
pub use keyhaven_fs as fs;
/// `secrecy`, re-exported: passphrases are [`secrecy::SecretString`]s.
pub use secrecy;
/// The RustCrypto `signature` traits [`KeyManager::signer`] implements.
pub use signature;
/// `zeroize`, re-exported: secret buffers (such as [`fs::read_secret`]'s) are
/// [`zeroize::Zeroizing`].
pub use zeroize;

/// **Hazardous material**: private keys in the clear (PEM/PKCS#8 conversion, PKCS#8
/// encryption). Use it only to move keys into a store or to write them encrypted; see
/// [`keyhaven_crypto::hazmat`].
pub mod hazmat {
    pub use keyhaven_crypto::hazmat::*;
}

/// The concrete stores compiled into this build, for callers that want one without a
/// configuration file. Most callers go through [`KeyManager`].
pub mod stores {
    #[cfg(feature = "pkcs11")]
    pub use keyhaven_hsm_pkcs11::{
        Pkcs11Config, Pkcs11Store, TokenReport, TokenSelector, pin_from_env, pin_from_file,
    };
    #[cfg(feature = "tpm")]
    pub use keyhaven_hsm_tpm::{KeyOptions, TpmConfig, TpmReport, TpmStore};
    #[cfg(feature = "file")]
    pub use keyhaven_store_file::{EncryptedStore, KdfParams, PemStore, StoreKind, detect};
    #[cfg(feature = "memory")]
    pub use keyhaven_store_memory::MemoryStore;
}
