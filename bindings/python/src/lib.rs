//! The native half of the `keyhaven` Python package (`keyhaven._keyhaven`): a keyhaven home
//! ([`keyhaven::KeyManager`]) with its keys, signatures, imports and exports, backups,
//! rotation and default key, and requests to keyhaven-server signed with its keys (RFC 9421).
//!
//! Every call that can wait on a device, a file or the network runs with the GIL released
//! (`Python::detach`), so other Python threads go on meanwhile. Errors become one exception
//! hierarchy under `keyhaven.KeyhavenError`, one class per kind of error, each carrying the
//! `keyhaven` command line's exit code for that kind (`exit_code`). Secrets handed in
//! (passphrases, PEM text) are copied into zeroizing buffers at once; private keys never
//! cross into Python except as an encrypted PKCS#8 PEM the caller asked for.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use keyhaven::backup::{self as kb, KdfParams, OnConflict};
use keyhaven::secrecy::{ExposeSecret, SecretString};
use keyhaven::zeroize::Zeroizing;
use keyhaven::{
    Algorithm, BackendConfig, BackendKind, CoreError, ErrorKind, FixedPassphrase, KeyManager,
    ManagedKey, PublicKey, SecretBytes, SignatureFormat,
};
use keyhaven_client::{Client as ServerClient, RequestSigner};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use subtle::ConstantTimeEq;

pyo3::create_exception!(
    _keyhaven,
    KeyhavenError,
    PyException,
    "Every keyhaven error; `exit_code` is the `keyhaven` command's exit code for its kind."
);
pyo3::create_exception!(
    _keyhaven,
    NotFoundError,
    KeyhavenError,
    "A key, backend or file was not found (exit 3)."
);
pyo3::create_exception!(
    _keyhaven,
    BadPassphraseError,
    KeyhavenError,
    "Wrong passphrase or PIN (exit 4)."
);
pyo3::create_exception!(
    _keyhaven,
    LockedError,
    BadPassphraseError,
    "No passphrase or PIN was available, or the store is held by another process (exit 4)."
);
pyo3::create_exception!(
    _keyhaven,
    UnsupportedError,
    KeyhavenError,
    "The key or backend cannot do this: signing with X25519, exporting a hardware key (exit 5)."
);
pyo3::create_exception!(
    _keyhaven,
    PermissionDeniedError,
    KeyhavenError,
    "Not allowed by the access policy, or unsafe file permissions (exit 6)."
);
pyo3::create_exception!(
    _keyhaven,
    CorruptError,
    KeyhavenError,
    "Stored data was changed, truncated or rolled back (exit 7)."
);
pyo3::create_exception!(
    _keyhaven,
    AlreadyExistsError,
    KeyhavenError,
    "Something with that name already exists (exit 8)."
);
pyo3::create_exception!(
    _keyhaven,
    InvalidInputError,
    KeyhavenError,
    "Malformed input: PEM, algorithm name, digest length, configuration (exit 9)."
);
pyo3::create_exception!(
    _keyhaven,
    UnavailableError,
    KeyhavenError,
    "A backend (a token unplugged, a TPM away) or a server cannot be reached (exit 10)."
);
pyo3::create_exception!(
    _keyhaven,
    KeyhavenIOError,
    KeyhavenError,
    "An I/O error (exit 11)."
);
pyo3::create_exception!(
    _keyhaven,
    RevokedError,
    KeyhavenError,
    "The key is revoked (exit 12)."
);
pyo3::create_exception!(
    _keyhaven,
    BadSignatureError,
    KeyhavenError,
    "A signature does not verify (exit 1)."
);
pyo3::create_exception!(
    _keyhaven,
    ServerError,
    KeyhavenError,
    "keyhaven-server refused the request: `status`, `problem_type`, `title` and `detail` are its RFC 9457 problem's."
);
pyo3::create_exception!(
    _keyhaven,
    InternalError,
    KeyhavenError,
    "A failure that should not happen (exit 70)."
);

/// One error kind's exception, with its message (the error and its causes, `: `-joined).
fn kind_error(kind: ErrorKind, message: String) -> PyErr {
    match kind {
        ErrorKind::NotFound => NotFoundError::new_err(message),
        ErrorKind::AlreadyExists => AlreadyExistsError::new_err(message),
        ErrorKind::Unsupported => UnsupportedError::new_err(message),
        ErrorKind::InvalidInput => InvalidInputError::new_err(message),
        ErrorKind::PermissionDenied => PermissionDeniedError::new_err(message),
        ErrorKind::BadPassphrase => BadPassphraseError::new_err(message),
        ErrorKind::Locked => LockedError::new_err(message),
        ErrorKind::Corrupt => CorruptError::new_err(message),
        ErrorKind::Revoked => RevokedError::new_err(message),
        ErrorKind::BadSignature => BadSignatureError::new_err(message),
        ErrorKind::Unavailable => UnavailableError::new_err(message),
        ErrorKind::Io => KeyhavenIOError::new_err(message),
        _ => InternalError::new_err(message),
    }
}

/// The error and its causes, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn err(e: keyhaven::Error) -> PyErr {
    kind_error(e.kind(), chain(&e))
}

fn core_err(e: CoreError) -> PyErr {
    kind_error(e.kind(), chain(&e))
}

fn backup_err(e: kb::BackupError) -> PyErr {
    let core: CoreError = e.into();
    core_err(core)
}

fn client_err(py: Python<'_>, e: keyhaven_client::ClientError) -> PyErr {
    if let Some(p) = e.problem() {
        let unknown = matches!(e, keyhaven_client::ClientError::OutcomeUnknown(_));
        let message = if unknown {
            format!(
                "{} {}: {} (the request may have been carried out: check before sending it \
                 again)",
                p.status, p.title, p.detail
            )
        } else {
            format!("{} {}: {}", p.status, p.title, p.detail)
        };
        let error = ServerError::new_err(message);
        let value = error.value(py);
        // The command line's exit code for this refusal's kind (401 is 6, 404 is 3, ...).
        let _ = value.setattr("exit_code", exit_code(e.kind()));
        let _ = value.setattr("outcome_unknown", unknown);
        // The problem's fields, for code that tells refusals apart.
        let _ = value.setattr("status", p.status);
        let _ = value.setattr("problem_type", p.kind.clone());
        let _ = value.setattr("title", p.title.clone());
        let _ = value.setattr("detail", p.detail.clone());
        return error;
    }
    let kind = e.kind();
    kind_error(kind, chain(&e))
}

/// The `keyhaven` command's exit code for an error kind (crates/keyhaven-cli/src/exit.rs).
fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::BadSignature => 1,
        ErrorKind::NotFound => 3,
        ErrorKind::BadPassphrase | ErrorKind::Locked => 4,
        ErrorKind::Unsupported => 5,
        ErrorKind::PermissionDenied => 6,
        ErrorKind::Corrupt => 7,
        ErrorKind::AlreadyExists => 8,
        ErrorKind::InvalidInput => 9,
        ErrorKind::Unavailable => 10,
        ErrorKind::Io => 11,
        ErrorKind::Revoked => 12,
        _ => 70,
    }
}

fn invalid(message: impl Into<String>) -> PyErr {
    InvalidInputError::new_err(message.into())
}

/// A key of a home: what it is and where it lives (never its private key).
#[pyclass(module = "keyhaven", frozen)]
struct Key {
    inner: ManagedKey,
}

#[pymethods]
impl Key {
    /// The key's id in its backend.
    #[getter]
    fn id(&self) -> String {
        self.inner.id().to_string()
    }

    /// Its label.
    #[getter]
    fn label(&self) -> String {
        self.inner.label().to_owned()
    }

    /// The backend that holds it (a name of the home's configuration).
    #[getter]
    fn backend(&self) -> String {
        self.inner.backend.clone()
    }

    /// `BACKEND:ID`: names exactly this key wherever a reference is taken.
    #[getter]
    fn reference(&self) -> String {
        self.inner.reference()
    }

    /// `p384`, `p256`, `ed25519` or `x25519`.
    #[getter]
    fn algorithm(&self) -> String {
        self.inner.algorithm().short_name().to_owned()
    }

    /// `software-plain`, `software-encrypted` or `hardware`.
    #[getter]
    fn protection(&self) -> String {
        protection_name(self.inner.protection()).to_owned()
    }

    /// SHA-256 of the public key's SPKI DER, lowercase hex.
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.public_key().fingerprint().to_hex()
    }

    /// The public key as a PEM `PUBLIC KEY` (SPKI), as `openssl pkey -pubin` reads it.
    #[getter]
    fn public_key_pem(&self) -> PyResult<String> {
        self.inner.public_key().to_pem().map_err(core_err)
    }

    /// The public key as SPKI DER.
    #[getter]
    fn public_key_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.public_key().spki_der())
    }

    fn __repr__(&self) -> String {
        format!(
            "Key({}, label={:?}, {}, fingerprint={})",
            self.inner.reference(),
            self.inner.label(),
            self.inner.algorithm().short_name(),
            &self.inner.public_key().fingerprint().to_hex()[..16]
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Key>().is_ok_and(|o| {
            let o = o.get();
            o.inner.id() == self.inner.id() && o.inner.backend == self.inner.backend
        })
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.reference().hash(&mut h);
        h.finish()
    }
}

fn protection_name(p: keyhaven::Protection) -> &'static str {
    match p {
        keyhaven::Protection::SoftwarePlain => "software-plain",
        keyhaven::Protection::SoftwareEncrypted => "software-encrypted",
        _ => "hardware",
    }
}

fn key_of(inner: ManagedKey) -> Key {
    Key { inner }
}

/// A passphrase given as `str` or `bytes`, copied into a zeroizing buffer.
fn secret_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Zeroizing<String>> {
    if let Ok(s) = value.extract::<String>() {
        return Ok(Zeroizing::new(s));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return String::from_utf8(b.as_bytes().to_vec())
            .map(Zeroizing::new)
            .map_err(|_| invalid(format!("the {what} is not UTF-8")));
    }
    Err(invalid(format!("the {what} is a str or bytes")))
}

fn signature_format(format: &str) -> PyResult<SignatureFormat> {
    format.parse().map_err(core_err)
}

/// A keyhaven home: its configuration, backends and keys, as the `keyhaven` command sees
/// them. Thread-safe: one `Home` serves every thread of a program.
#[pyclass(module = "keyhaven", frozen)]
struct Home {
    manager: Arc<KeyManager>,
    /// The stores' passphrase, when one was given: a backup may not use it.
    passphrase: Option<SecretString>,
}

impl Home {
    /// The key `key` names: a `Key`, or any reference the command line takes (a label,
    /// `BACKEND:ID`, an id).
    fn resolve(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<ManagedKey> {
        if let Ok(k) = key.cast::<Key>() {
            return Ok(k.get().inner.clone());
        }
        let reference: String = key
            .extract()
            .map_err(|_| invalid("a key is a keyhaven.Key or a reference (str)"))?;
        let m = self.manager.clone();
        py.detach(move || m.resolve(&reference)).map_err(err)
    }
}

#[pymethods]
impl Home {
    /// Opens the home at `path` (default: `$KEYHAVEN_HOME`, else the platform data directory's
    /// `keyhaven`), unlocking its encrypted stores with `passphrase` (default:
    /// `$KEYHAVEN_PASSPHRASE`). A home that does not exist yet is made on first use.
    #[new]
    #[pyo3(signature = (path=None, passphrase=None))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        passphrase: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let path = match path {
            Some(p) => p,
            None => match std::env::var_os("KEYHAVEN_HOME") {
                Some(h) => PathBuf::from(h),
                None => default_home()?,
            },
        };
        let path = std::path::absolute(&path)
            .map_err(|e| kind_error(ErrorKind::Io, format!("{}: {e}", path.display())))?;
        let passphrase: Option<Zeroizing<String>> = match passphrase {
            Some(p) => Some(secret_arg(p, "passphrase")?),
            None => std::env::var("KEYHAVEN_PASSPHRASE")
                .ok()
                .map(Zeroizing::new),
        };
        let kept = passphrase
            .as_ref()
            .map(|p| SecretString::from(p.as_str().to_owned()));
        let manager = py.detach(move || match passphrase {
            Some(p) => KeyManager::open(&path, FixedPassphrase::new(p.as_str())),
            None => KeyManager::open(&path, keyhaven::NoPassphrase),
        });
        Ok(Home {
            manager: Arc::new(manager.map_err(err)?),
            passphrase: kept,
        })
    }

    /// The home's directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.manager.home().to_path_buf()
    }

    /// Declares a backend `name` of type `kind` (`encrypted`, `pem` or `memory`; PKCS#11 and
    /// TPM backends are declared with `keyhaven backend add`), at `path` (default: under the
    /// home). The first one becomes the default backend.
    #[pyo3(signature = (name, kind="encrypted", path=None))]
    fn add_backend(
        &self,
        py: Python<'_>,
        name: String,
        kind: &str,
        path: Option<PathBuf>,
    ) -> PyResult<()> {
        let kind: BackendKind = kind.parse().map_err(core_err)?;
        if !matches!(
            kind,
            BackendKind::Encrypted | BackendKind::Pem | BackendKind::Memory
        ) {
            return Err(invalid(format!(
                "backend type {kind}: declare it with `keyhaven backend add` (it needs a \
                 device's settings)"
            )));
        }
        let m = self.manager.clone();
        py.detach(move || m.add_backend(&name, BackendConfig::new(kind, path)))
            .map(|_| ())
            .map_err(err)
    }

    /// Every key of every reachable backend.
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<Key>> {
        let m = self.manager.clone();
        let keys = py.detach(move || m.list_keys()).map_err(err)?;
        Ok(keys.into_iter().map(key_of).collect())
    }

    /// The key `reference` names (a label, `BACKEND:ID`, an id).
    fn key(&self, py: Python<'_>, reference: &Bound<'_, PyAny>) -> PyResult<Key> {
        self.resolve(py, reference).map(key_of)
    }

    /// Makes a key pair of `algorithm` (`p384`, `p256`, `ed25519`, `x25519`) inside `backend`
    /// (default: the home's default backend); its private key never leaves the backend.
    #[pyo3(signature = (label, algorithm="p384", backend=None))]
    fn generate(
        &self,
        py: Python<'_>,
        label: String,
        algorithm: &str,
        backend: Option<String>,
    ) -> PyResult<Key> {
        let algorithm: Algorithm = algorithm.parse().map_err(core_err)?;
        let m = self.manager.clone();
        py.detach(move || m.generate(backend.as_deref(), algorithm, &label))
            .map(key_of)
            .map_err(err)
    }

    /// Signs `data` with `key` (ECDSA hashes it with the curve's hash: SHA-384 for P-384,
    /// SHA-256 for P-256). `format` `der` (what `openssl dgst -verify` reads) or `raw`
    /// (`r || s`, as JOSE and WebCrypto). A rotated key signs with its current version.
    #[pyo3(signature = (key, data, format="der"))]
    fn sign<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        data: Vec<u8>,
        format: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let format = signature_format(format)?;
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let signature = py.detach(move || m.sign(&key, &data)).map_err(err)?;
        let bytes = keyhaven::encoding::encode_signature(&signature, format).map_err(core_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Signs a prehashed `digest` (ECDSA only: 48 bytes for P-384, 32 for P-256).
    #[pyo3(signature = (key, digest, format="der"))]
    fn sign_digest<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        digest: Vec<u8>,
        format: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let format = signature_format(format)?;
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let signature = py
            .detach(move || m.sign_digest(&key, &digest))
            .map_err(err)?;
        let bytes = keyhaven::encoding::encode_signature(&signature, format).map_err(core_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Whether `signature` (`format` `der` or `raw`) is `key`'s over `data`. The check is
    /// audited (a burst of failures against one key is a finding of `keyhaven compromise
    /// scan`).
    #[pyo3(signature = (key, data, signature, format="der"))]
    fn verify(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        data: Vec<u8>,
        signature: Vec<u8>,
        format: &str,
    ) -> PyResult<bool> {
        let format = signature_format(format)?;
        let key = self.resolve(py, key)?;
        let signature = keyhaven::encoding::decode_signature(key.algorithm(), &signature, format)
            .map_err(core_err)?;
        let m = self.manager.clone();
        match py.detach(move || m.verify(&key, keyhaven::SignInput::Message(&data), &signature)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::BadSignature => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// The public key `key` presents now (a rotated key's current version), as PEM.
    fn public_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<String> {
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let current = py
            .detach(move || m.rotation().current_version(&key))
            .map_err(err)?;
        current.public_key().to_pem().map_err(core_err)
    }

    /// Imports a private key PEM (`PRIVATE KEY`, `ENCRYPTED PRIVATE KEY` with `password`, or
    /// `EC PRIVATE KEY`) into `backend` under `label`.
    #[pyo3(signature = (label, pem, password=None, backend=None))]
    fn import_pem(
        &self,
        py: Python<'_>,
        label: String,
        pem: &Bound<'_, PyAny>,
        password: Option<&Bound<'_, PyAny>>,
        backend: Option<String>,
    ) -> PyResult<Key> {
        let pem = secret_arg(pem, "PEM")?;
        let password = password.map(|p| secret_arg(p, "password")).transpose()?;
        let m = self.manager.clone();
        py.detach(move || -> Result<ManagedKey, keyhaven::Error> {
            let der = keyhaven::hazmat::private_key_pem_to_pkcs8(
                pem.as_str(),
                password.as_ref().map(|p| p.as_bytes()),
            )?;
            m.import_pkcs8(backend.as_deref(), &label, &der)
        })
        .map(key_of)
        .map_err(err)
    }

    /// Exports `key`'s private key as an `ENCRYPTED PRIVATE KEY` PEM under `password`
    /// (PKCS#8, PBES2 with PBKDF2-SHA256 and AES-256-CBC: `openssl pkey -passin` reads it).
    /// Refused for keys that cannot leave their backend (hardware) or by the access policy.
    fn export_pem(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        password: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let password = secret_arg(password, "password")?;
        if password.chars().count() < 8 {
            return Err(invalid("the export password has at least 8 characters"));
        }
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let pem = py.detach(move || -> PyResult<Zeroizing<String>> {
            let der = m.export_pkcs8(&key).map_err(err)?;
            let password = SecretString::from(password.as_str().to_owned());
            kb::export_pkcs8_pem(&der, &password, kb::Pbes2::pbkdf2_sha256()).map_err(backup_err)
        })?;
        // Encrypted under the caller's password: the text itself is no secret.
        Ok(pem.as_str().to_owned())
    }

    /// Rotates `key`: a new version becomes primary; the old one verifies until the migration
    /// window (`migration_window`, e.g. `"14d"`; default: the policy's) ends. Returns the new
    /// version.
    #[pyo3(signature = (key, reason="rotated from Python", migration_window=None))]
    fn rotate(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        reason: &str,
        migration_window: Option<&str>,
    ) -> PyResult<Key> {
        let window = migration_window
            .map(|w| {
                humantime::parse_duration(w)
                    .map_err(|e| invalid(format!("migration window {w:?}: {e} (e.g. 14d)")))
            })
            .transpose()?;
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let reason = reason.to_owned();
        py.detach(move || -> Result<ManagedKey, keyhaven::Error> {
            m.rotation().rotate_key_with_window(&key, &reason, window)?;
            m.rotation().current_version(&key)
        })
        .map(key_of)
        .map_err(err)
    }

    /// The home's default key, or `None`.
    fn default_key(&self, py: Python<'_>) -> PyResult<Option<Key>> {
        let m = self.manager.clone();
        match py.detach(move || m.default_key()) {
            Ok(k) => Ok(Some(key_of(k))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Makes `key` the home's default key.
    fn set_default_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        py.detach(move || m.set_default_key(&key)).map_err(err)
    }

    /// Writes an encrypted backup of `keys` (references; default: every key) to `path` under
    /// `passphrase` (which may not be the stores' own), with an optional `description` and
    /// expiry (`expires_in`, e.g. `"90d"`). Returns the backup's header as a dict.
    #[pyo3(signature = (path, passphrase, keys=None, description=None, expires_in=None))]
    fn backup(
        &self,
        py: Python<'_>,
        path: PathBuf,
        passphrase: &Bound<'_, PyAny>,
        keys: Option<Vec<String>>,
        description: Option<String>,
        expires_in: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        let passphrase = secret_arg(passphrase, "backup passphrase")?;
        if let Some(store) = &self.passphrase
            && bool::from(
                store
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(passphrase.as_bytes()),
            )
        {
            return Err(invalid(
                "the backup's passphrase is the stores' passphrase: whoever learns one would \
                 have both. Choose another for the backup",
            ));
        }
        let valid_for = expires_in
            .map(|d| {
                humantime::parse_duration(d)
                    .map(|d| d.as_secs().max(1))
                    .map_err(|e| invalid(format!("expires_in {d:?}: {e} (e.g. 90d)")))
            })
            .transpose()?;
        let m = self.manager.clone();
        let header = py.detach(move || -> PyResult<String> {
            let entries = m.backups().collect(keys.as_deref()).map_err(err)?;
            if entries.is_empty() {
                return Err(NotFoundError::new_err("keys to back up: there are none"));
            }
            let meta =
                kb::BackupMeta::new(Some(m.caller().principal.clone()), description, valid_for);
            let pass = SecretString::from(passphrase.as_str().to_owned());
            let bytes = kb::write_with_meta(
                &entries,
                &pass,
                KdfParams::default(),
                kb::Format::Text,
                &meta,
            )
            .map_err(backup_err)?;
            kb::save(&path, &bytes).map_err(core_err)?;
            let header = kb::inspect(&bytes).map_err(backup_err)?;
            serde_json::to_string(&header).map_err(|e| invalid(e.to_string()))
        })?;
        json_to_py(py, &header)
    }

    /// Restores the backup at `path` (opened with `passphrase`) into `backend` (default: the
    /// default backend). `on_conflict`: `fail` (default), `skip`, `rename` or `replace`. An
    /// expired backup is refused unless `allow_expired`. Returns one dict per key.
    #[pyo3(signature = (path, passphrase, backend=None, on_conflict="fail", allow_expired=false))]
    fn restore(
        &self,
        py: Python<'_>,
        path: PathBuf,
        passphrase: &Bound<'_, PyAny>,
        backend: Option<String>,
        on_conflict: &str,
        allow_expired: bool,
    ) -> PyResult<Py<PyAny>> {
        let passphrase = secret_arg(passphrase, "backup passphrase")?;
        let on_conflict = match on_conflict {
            "fail" => OnConflict::Fail,
            "skip" => OnConflict::Skip,
            "rename" => OnConflict::Rename,
            "replace" => OnConflict::Replace,
            other => {
                return Err(invalid(format!(
                    "on_conflict {other:?}: use fail, skip, rename or replace"
                )));
            }
        };
        let m = self.manager.clone();
        let report = py.detach(move || -> PyResult<String> {
            let bytes = keyhaven::fs::read_secret(&path).map_err(core_err)?;
            let secret =
                kb::BackupSecret::Passphrase(SecretString::from(passphrase.as_str().to_owned()));
            let entries = kb::open_with(&bytes, &secret, allow_expired).map_err(backup_err)?;
            let report = m
                .backups()
                .restore(&entries, backend.as_deref(), on_conflict)
                .map_err(err)?;
            let keys: Vec<serde_json::Value> = report
                .keys
                .iter()
                .map(|k| {
                    let (outcome, id) = match &k.outcome {
                        kb::Outcome::Restored { new_id } => ("restored", Some(new_id.to_string())),
                        kb::Outcome::Renamed { new_id, .. } => {
                            ("renamed", Some(new_id.to_string()))
                        }
                        kb::Outcome::Replaced { new_id, .. } => {
                            ("replaced", Some(new_id.to_string()))
                        }
                        kb::Outcome::HardwarePublicOnly => ("public-only", None),
                        _ => ("skipped", None),
                    };
                    serde_json::json!({
                        "label": k.label,
                        "fingerprint": k.fingerprint,
                        "outcome": outcome,
                        "id": id,
                    })
                })
                .collect();
            Ok(serde_json::Value::from(keys).to_string())
        })?;
        json_to_py(py, &report)
    }

    /// The RFC 9421 headers that sign a request to keyhaven-server with `key` (what the
    /// `requests` and `httpx` auth hooks add): `[(name, value), ...]`, `Content-Digest` first
    /// when `body` is not empty. `authorization` is the request's `Authorization` value, if
    /// any (then covered too).
    #[pyo3(signature = (key, method, url, body=None, authorization=None))]
    fn sign_request(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        method: String,
        url: String,
        body: Option<Vec<u8>>,
        authorization: Option<String>,
    ) -> PyResult<Vec<(String, String)>> {
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let signer = py.detach(move || HomeSigner::new(m, key))?;
        let signature = py
            .detach(move || {
                keyhaven_client::sign_request(
                    &signer,
                    &method,
                    &url,
                    authorization.as_deref(),
                    body.as_deref().unwrap_or_default(),
                    keyhaven::unix_now(),
                )
            })
            .map_err(|e| client_err(py, e))?;
        Ok(signature
            .headers()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect())
    }

    /// A client of the keyhaven-server at `base_url` signing with `key`, trusting answers
    /// signed by the server key: `server_key` (its PEM), or the key the server presents if its
    /// fingerprint is `server_fingerprint` (as `keyhaven serve` printed it), or, only with
    /// `trust_on_first_use=True`, whatever key it presents now (keep `client.server_key`).
    #[pyo3(signature = (base_url, key, server_key=None, server_fingerprint=None, trust_on_first_use=false))]
    fn client(
        &self,
        py: Python<'_>,
        base_url: String,
        key: &Bound<'_, PyAny>,
        server_key: Option<String>,
        server_fingerprint: Option<String>,
        trust_on_first_use: bool,
    ) -> PyResult<Client> {
        if server_key.is_none() && server_fingerprint.is_none() && !trust_on_first_use {
            return Err(invalid(
                "pin the server key: pass server_fingerprint= (as `keyhaven serve` printed it) \
                 or server_key=, or trust_on_first_use=True and keep client.server_key",
            ));
        }
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        let signer = Arc::new(py.detach(move || HomeSigner::new(m, key))?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| kind_error(ErrorKind::Internal, format!("a tokio runtime: {e}")))?;
        let pinned = server_key
            .map(|pem| {
                keyhaven::default_provider()
                    .parse_public_key_pem(&pem)
                    .map_err(core_err)
            })
            .transpose()?;
        let inner = py.detach(|| -> Result<ServerClient, keyhaven_client::ClientError> {
            let server_key = match pinned {
                Some(k) => k,
                None => {
                    let presented = runtime.block_on(keyhaven_client::discover(&base_url))?.1;
                    let fingerprint = presented.fingerprint().to_hex();
                    if let Some(want) = &server_fingerprint
                        && !want.eq_ignore_ascii_case(&fingerprint)
                    {
                        return Err(keyhaven_client::ClientError::InvalidInput(format!(
                            "the server presents key {fingerprint}, not the pinned {want}: \
                             nothing was sent"
                        )));
                    }
                    presented
                }
            };
            ServerClient::new(&base_url, signer, server_key)
        });
        let inner = inner.map_err(|e| client_err(py, e))?;
        Ok(Client {
            inner: Arc::new(inner),
            runtime: Arc::new(runtime),
        })
    }

    /// Signs `data` `n` times through the facade without returning to Python (the baseline
    /// of the binding's benchmark). Not part of the API.
    #[doc(hidden)]
    fn _sign_many(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        data: Vec<u8>,
        n: u64,
    ) -> PyResult<()> {
        let key = self.resolve(py, key)?;
        let m = self.manager.clone();
        py.detach(move || -> Result<(), keyhaven::Error> {
            for _ in 0..n {
                m.sign(&key, &data)?;
            }
            Ok(())
        })
        .map_err(err)
    }

    fn __repr__(&self) -> String {
        format!("Home({:?})", self.manager.home().display().to_string())
    }
}

/// The platform data directory's `keyhaven`: the command line's default home, found the same
/// way (`dirs::data_dir`), so both open the same keys.
fn default_home() -> PyResult<PathBuf> {
    let base = dirs::data_dir().ok_or_else(|| {
        NotFoundError::new_err(
            "the platform data directory (no HOME?): pass path= or set KEYHAVEN_HOME",
        )
    })?;
    Ok(base.join("keyhaven"))
}

fn json_to_py(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    let json = py.import("json")?;
    Ok(json.call_method1("loads", (text,))?.unbind())
}

/// A home's key as the signer of requests to keyhaven-server.
struct HomeSigner {
    manager: Arc<KeyManager>,
    key: ManagedKey,
    public: PublicKey,
}

impl HomeSigner {
    fn new(manager: Arc<KeyManager>, key: ManagedKey) -> PyResult<Self> {
        // The version that signs is the key's current one: its public key is the keyid's.
        let key = manager.rotation().current_version(&key).map_err(err)?;
        let public = key.public_key().clone();
        Ok(HomeSigner {
            manager,
            key,
            public,
        })
    }
}

impl RequestSigner for HomeSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, data: &[u8]) -> Result<keyhaven::Signature, CoreError> {
        self.manager
            .sign(&self.key, data)
            .map_err(|e| CoreError::other(e.kind(), "keyhaven", e))
    }
}

/// A response of keyhaven-server whose signature verified (bound to the request sent).
#[pyclass(module = "keyhaven", frozen)]
struct Response {
    /// The HTTP status.
    #[pyo3(get)]
    status: u16,
    body: Vec<u8>,
}

#[pymethods]
impl Response {
    /// The body.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.body)
    }

    /// The body parsed as JSON.
    fn json(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| invalid("the response body is not UTF-8"))?;
        json_to_py(py, text)
    }

    fn __repr__(&self) -> String {
        format!(
            "Response(status={}, {} bytes)",
            self.status,
            self.body.len()
        )
    }
}

/// A client of one keyhaven-server: every request signed with the home's key (RFC 9421),
/// every answer checked against the server's key. Refusals raise `ServerError` with the
/// server's RFC 9457 problem.
#[pyclass(module = "keyhaven", frozen)]
struct Client {
    inner: Arc<ServerClient>,
    runtime: Arc<tokio::runtime::Runtime>,
}

#[pymethods]
impl Client {
    /// Registers the key under `name` (proof of possession: the registration is a request
    /// the key signs). Returns the server's view of the client.
    fn register(&self, py: Python<'_>, name: String) -> PyResult<Py<PyAny>> {
        let (c, rt) = (self.inner.clone(), self.runtime.clone());
        let view = py
            .detach(move || rt.block_on(c.register(&name)))
            .map_err(|e| client_err(py, e))?;
        let text = serde_json::to_string(&view).map_err(|e| invalid(e.to_string()))?;
        json_to_py(py, &text)
    }

    /// Who the server takes this key for.
    fn whoami(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (c, rt) = (self.inner.clone(), self.runtime.clone());
        let who = py
            .detach(move || rt.block_on(c.whoami()))
            .map_err(|e| client_err(py, e))?;
        let text = serde_json::to_string(&who).map_err(|e| invalid(e.to_string()))?;
        json_to_py(py, &text)
    }

    /// Sends a signed request (`body`: JSON bytes) to `url` on the server; returns the
    /// verified response.
    #[pyo3(signature = (method, url, body=None))]
    fn send(
        &self,
        py: Python<'_>,
        method: String,
        url: String,
        body: Option<Vec<u8>>,
    ) -> PyResult<Response> {
        let (c, rt) = (self.inner.clone(), self.runtime.clone());
        let r = py
            .detach(move || rt.block_on(c.send(&method, &url, body)))
            .map_err(|e| client_err(py, e))?;
        Ok(Response {
            status: r.status,
            body: r.body.clone(),
        })
    }

    /// The fingerprint of the key this client signs with.
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.signer_fingerprint()
    }

    /// The server key answers are checked against, as PEM (pin it).
    #[getter]
    fn server_key(&self) -> PyResult<String> {
        self.inner.server_key().to_pem().map_err(core_err)
    }
}

/// Whether `signature` (`format` `der` or `raw`) over `data` verifies with `public_key` (a
/// PEM `PUBLIC KEY`): no home needed.
#[pyfunction]
#[pyo3(signature = (public_key, data, signature, format="der"))]
fn verify(
    py: Python<'_>,
    public_key: &str,
    data: Vec<u8>,
    signature: Vec<u8>,
    format: &str,
) -> PyResult<bool> {
    let format = signature_format(format)?;
    let pk = keyhaven::default_provider()
        .parse_public_key_pem(public_key)
        .map_err(core_err)?;
    let signature = keyhaven::encoding::decode_signature(pk.algorithm(), &signature, format)
        .map_err(core_err)?;
    Ok(py
        .detach(move || keyhaven::verify(&pk, &data, &signature))
        .is_ok())
}

/// The secrets this module handles never reach `Debug` output: a compile-time reminder that
/// the zeroizing buffer types are the ones used.
const _: fn(&SecretBytes, &SecretString) = |s, p| {
    let _ = (s.expose_secret(), p.expose_secret());
};

/// The module.
#[pymodule]
fn _keyhaven(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Home>()?;
    m.add_class::<Key>()?;
    m.add_class::<Client>()?;
    m.add_class::<Response>()?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for (name, class, code) in [
        ("KeyhavenError", py.get_type::<KeyhavenError>(), 70u8),
        ("NotFoundError", py.get_type::<NotFoundError>(), 3),
        ("BadPassphraseError", py.get_type::<BadPassphraseError>(), 4),
        ("LockedError", py.get_type::<LockedError>(), 4),
        ("UnsupportedError", py.get_type::<UnsupportedError>(), 5),
        (
            "PermissionDeniedError",
            py.get_type::<PermissionDeniedError>(),
            6,
        ),
        ("CorruptError", py.get_type::<CorruptError>(), 7),
        ("AlreadyExistsError", py.get_type::<AlreadyExistsError>(), 8),
        ("InvalidInputError", py.get_type::<InvalidInputError>(), 9),
        ("UnavailableError", py.get_type::<UnavailableError>(), 10),
        ("KeyhavenIOError", py.get_type::<KeyhavenIOError>(), 11),
        ("RevokedError", py.get_type::<RevokedError>(), 12),
        ("BadSignatureError", py.get_type::<BadSignatureError>(), 1),
        ("ServerError", py.get_type::<ServerError>(), 10),
        ("InternalError", py.get_type::<InternalError>(), 70),
    ] {
        class.setattr("exit_code", code)?;
        m.add(name, class)?;
    }
    Ok(())
}
