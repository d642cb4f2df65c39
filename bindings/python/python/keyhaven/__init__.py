"""keyhaven: one interface over cryptographic keys kept anywhere.

Open a home (the directory the ``keyhaven`` command uses), make and use keys in any of its
backends (an encrypted file store, PEM files, a PKCS#11 token, a TPM), back them up, rotate
them, and sign requests to keyhaven-server (RFC 9421) from ``requests`` or ``httpx``::

    import keyhaven

    home = keyhaven.Home("/srv/keys", passphrase="correct horse battery staple")
    key = home.generate("release", algorithm="p384")
    signature = home.sign(key, b"artifact bytes")      # DER, as `openssl dgst -verify` reads
    assert home.verify(key, b"artifact bytes", signature)

Private keys never cross into Python; every call that waits on a device, a file or the network
releases the GIL. Errors are subclasses of :class:`KeyhavenError`, each with the ``keyhaven``
command's ``exit_code`` for its kind.
"""

from keyhaven._keyhaven import (
    AlreadyExistsError,
    BadPassphraseError,
    BadSignatureError,
    Client,
    CorruptError,
    Home,
    InternalError,
    InvalidInputError,
    Key,
    KeyhavenError,
    KeyhavenIOError,
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    Response,
    RevokedError,
    ServerError,
    UnavailableError,
    UnsupportedError,
    __version__,
    verify,
)

__all__ = [
    "AlreadyExistsError",
    "BadPassphraseError",
    "BadSignatureError",
    "Client",
    "CorruptError",
    "Home",
    "InternalError",
    "InvalidInputError",
    "Key",
    "KeyhavenError",
    "KeyhavenIOError",
    "LockedError",
    "NotFoundError",
    "PermissionDeniedError",
    "Response",
    "RevokedError",
    "ServerError",
    "UnavailableError",
    "UnsupportedError",
    "__version__",
    "verify",
]
