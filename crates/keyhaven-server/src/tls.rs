//! TLS (rustls) whose private key stays in its keyhaven backend: the handshake's signature is
//! made by the backend (an encrypted store, a PKCS#11 token, a TPM) through rustls's signing
//! interface, so the key server's TLS key is as non-extractable as its keys. A development
//! mode makes a self-signed certificate with the same key.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keyhaven::{Algorithm, PublicKey, ServiceSigner, SignatureFormat};
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::serve::ServeError;
use crate::server::Server;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and the backend key that proves it.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<BackendKey>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificate", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A backend key as rustls's signing key.
#[derive(Debug)]
struct BackendKey {
    signer: ServiceSigner,
    scheme: SignatureScheme,
}

impl SigningKey for BackendKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&self.scheme).then(|| {
            Box::new(BackendSigner {
                signer: self.signer.clone(),
                scheme: self.scheme,
            }) as Box<dyn Signer>
        })
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.scheme {
            SignatureScheme::ED25519 => SignatureAlgorithm::ED25519,
            _ => SignatureAlgorithm::ECDSA,
        }
    }
}

#[derive(Debug)]
struct BackendSigner {
    signer: ServiceSigner,
    scheme: SignatureScheme,
}

impl Signer for BackendSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // A device's signature blocks: on tokio's worker threads, tell the runtime so it moves
        // its other work elsewhere meanwhile.
        let sign = || self.signer.sign(message);
        let signature = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        }
        .map_err(|e| rustls::Error::General(format!("the TLS key cannot sign: {e}")))?;
        // TLS takes ECDSA signatures in DER; Ed25519's 64 bytes as they are.
        keyhaven::encoding::encode_signature(&signature, SignatureFormat::Der)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

fn scheme_of(algorithm: Algorithm) -> Result<SignatureScheme, ServeError> {
    match algorithm {
        Algorithm::Ed25519 => Ok(SignatureScheme::ED25519),
        Algorithm::EcdsaP256 => Ok(SignatureScheme::ECDSA_NISTP256_SHA256),
        Algorithm::EcdsaP384 => Ok(SignatureScheme::ECDSA_NISTP384_SHA384),
        other => Err(ServeError::Setup(format!(
            "a {other} key cannot be a TLS key; use an ed25519, p256 or p384 key"
        ))),
    }
}

/// rcgen's view of a backend key: it signs the self-signed certificate in the backend.
struct RemoteKey {
    signer: ServiceSigner,
    raw_public: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for RemoteKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw_public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for RemoteKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig = self
            .signer
            .sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        keyhaven::encoding::encode_signature(&sig, SignatureFormat::Der)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// The subject public key bits of an SPKI (what certificates carry).
fn raw_public_key(key: &PublicKey) -> Result<Vec<u8>, ServeError> {
    let spki = spki::SubjectPublicKeyInfoRef::try_from(key.spki_der())
        .map_err(|e| ServeError::Setup(format!("the TLS key's public key: {e}")))?;
    Ok(spki.subject_public_key.raw_bytes().to_vec())
}

impl TlsIdentity {
    /// A self-signed certificate for `names` (host names and IP addresses), made and signed
    /// with `signer`'s key in its backend: for development, or for clients that pin it.
    ///
    /// # Errors
    /// [`ServeError::Setup`] for a key that cannot be a TLS key or a name that cannot be in a
    /// certificate.
    pub fn self_signed(signer: ServiceSigner, names: &[String]) -> Result<Self, ServeError> {
        let algorithm = signer.public_key().algorithm();
        let scheme = scheme_of(algorithm)?;
        let rc_alg: &'static rcgen::SignatureAlgorithm = match algorithm {
            Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
            Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            _ => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let remote = RemoteKey {
            raw_public: raw_public_key(signer.public_key())?,
            signer: signer.clone(),
            algorithm: rc_alg,
        };
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| ServeError::Setup(format!("TLS names {names:?}: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyhaven server");
        let cert = params
            .self_signed(&remote)
            .map_err(|e| ServeError::Setup(format!("cannot make the TLS certificate: {e}")))?;
        Ok(TlsIdentity {
            chain: vec![cert.der().clone()],
            key: Arc::new(BackendKey { signer, scheme }),
        })
    }

    /// A certificate chain (PEM, the leaf first) for `signer`'s key.
    ///
    /// # Errors
    /// [`ServeError::Setup`] if the PEM holds no certificate or the leaf is not for this key.
    pub fn from_pem(chain_pem: &str, signer: ServiceSigner) -> Result<Self, ServeError> {
        let scheme = scheme_of(signer.public_key().algorithm())?;
        let mut chain = Vec::new();
        for block in chain_pem.split_inclusive("-----END CERTIFICATE-----") {
            let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
                continue;
            };
            let (_, der) = keyhaven::encoding::pem_decode(&block[start..], &["CERTIFICATE"])
                .map_err(|e| ServeError::Setup(format!("the TLS certificate: {e}")))?;
            chain.push(CertificateDer::from(der.to_vec()));
        }
        let leaf = chain
            .first()
            .ok_or_else(|| ServeError::Setup("the TLS certificate file holds none".into()))?;
        let raw = raw_public_key(signer.public_key())?;
        // The leaf's SubjectPublicKeyInfo must be the key's: its bits appear in the DER.
        if !leaf
            .as_ref()
            .windows(raw.len())
            .any(|w| w == raw.as_slice())
        {
            return Err(ServeError::Setup(
                "the TLS certificate is not for the TLS key (their public keys differ)".into(),
            ));
        }
        Ok(TlsIdentity {
            chain,
            key: Arc::new(BackendKey { signer, scheme }),
        })
    }

    /// The leaf certificate (DER).
    pub fn certificate_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    /// The leaf certificate (PEM), for clients to trust.
    pub fn certificate_pem(&self) -> String {
        // Encoding a certificate's DER cannot fail but for an absurd length.
        pem_rfc7468::encode_string(
            "CERTIFICATE",
            pem_rfc7468::LineEnding::LF,
            self.certificate_der(),
        )
        .unwrap_or_default()
    }

    /// SHA-256 of the leaf certificate (hex): what `openssl x509 -fingerprint -sha256` prints.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.certificate_der()))
    }

    fn config(&self) -> Result<rustls::ServerConfig, ServeError> {
        let certified = CertifiedKey::new(self.chain.clone(), self.key.clone());
        // ring: it builds with a C compiler alone (aws-lc-rs, whose post-quantum key exchange
        // rustls now prefers, needs cmake); the deprecation says only that.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Setup(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Serves `server` over TLS with `identity` on `listener` until `shutdown` completes, then
/// lets the connections in flight finish. A handshake has 10 s.
///
/// # Errors
/// [`ServeError::Setup`] if the TLS configuration cannot be made; [`ServeError::Io`] if the
/// listener fails.
pub async fn serve_tls(
    listener: TcpListener,
    server: Server,
    identity: TlsIdentity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.config()?));
    let pruner = crate::serve::spawn_pruner(&server);
    let router = server.router();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let service = router.map_request(
                move |r: http::Request<hyper::body::Incoming>| -> axum::extract::Request {
                    let mut r = r.map(axum::body::Body::new);
                    r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    r
                },
            );
            let builder = Builder::new(TokioExecutor::new());
            let conn =
                builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    pruner.abort();
    // Requests in flight finish; new ones are not taken.
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
    Ok(())
}
