//! The client's error.

use keyhaven_core::ErrorKind;

use crate::wire::Problem;

/// A result with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request and said why (an RFC 9457 problem document, whose
    /// signature verified).
    #[error("the server refused the request ({}): {}", .0.status, .0.detail)]
    Problem(Problem),
    /// The server had already seen this request's signature: a copy of it (replayed by
    /// someone in between) reached the server first and may have been carried out. Ask for
    /// the state again (`status`) before retrying.
    #[error(
        "the server saw this request before (a copy arrived first): its outcome is unknown; check the state before retrying"
    )]
    OutcomeUnknown(Problem),
    /// The server could not be reached, or the connection failed.
    #[error("cannot reach {url}: {source}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The server's answer is not signed by the server key this client trusts, or the
    /// signature does not bind it to the request sent: it may be forged or replayed.
    #[error("the response is not from the trusted server: {0}")]
    Unauthentic(#[source] keyhaven_httpsig::HttpSigError),
    /// The answer is signed but not what the API promises (bad JSON, too large).
    #[error("unexpected response: {0}")]
    BadResponse(String),
    /// A release receipt that is not the server's, or not for this release: the secret it
    /// came with was not used.
    #[error("the release receipt does not check: {0}")]
    Receipt(String),
    /// The request could not be signed (a locked token, a revoked key, an X25519 key).
    #[error("cannot sign the request: {0}")]
    Sign(#[source] keyhaven_httpsig::HttpSigError),
    /// The arguments do not make a request (a base URL that is not `http(s)://host`, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl ClientError {
    /// The meaning of this error in keyhaven's one taxonomy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Problem(p) if p.kind.ends_with(":key-not-accepted") => ErrorKind::Revoked,
            ClientError::Problem(p) if p.kind.ends_with(":undecryptable") => ErrorKind::Corrupt,
            ClientError::Problem(p) => match p.status {
                401 | 403 => ErrorKind::PermissionDenied,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::AlreadyExists,
                429 | 500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::InvalidInput,
            },
            ClientError::Transport { .. } | ClientError::OutcomeUnknown(_) => {
                ErrorKind::Unavailable
            }
            ClientError::Unauthentic(_) | ClientError::BadResponse(_) | ClientError::Receipt(_) => {
                ErrorKind::Corrupt
            }
            ClientError::Sign(e) => e.kind(),
            ClientError::InvalidInput(_) => ErrorKind::InvalidInput,
        }
    }

    /// The problem document, when the server refused.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(p) | ClientError::OutcomeUnknown(p) => Some(p),
            _ => None,
        }
    }
}
