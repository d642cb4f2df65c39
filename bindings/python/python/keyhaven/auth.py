"""Auth hooks that sign outgoing HTTP requests with a keyhaven key (RFC 9421, as
keyhaven-server checks them: ``@method``, ``@target-uri``, ``authorization`` when present and
``content-digest`` when there is a body; ``created``, ``expires``, a fresh ``nonce`` and the
key's fingerprint as ``keyid``, under the label ``keyhaven``).

``requests``::

    session.auth = keyhaven.auth.RequestsAuth(home, "app")

``httpx``::

    httpx.Client(auth=keyhaven.auth.HttpxAuth(home, "app"))

The signature covers the exact URL and body sent: set them before the hook runs (both
libraries call it last). A streaming body cannot be signed and is refused.

These hooks only sign; they do not check the server's signed answer. Use
:meth:`keyhaven.Home.client` for requests whose answers must be verified too. Do not let the
library follow redirects (``allow_redirects=False`` / ``follow_redirects=False``, httpx's
default): a redirect is not signed again, and its target would receive the signed headers.
"""

from typing import Any, List, Optional, Tuple, Union

from keyhaven._keyhaven import Home, InvalidInputError, Key

KeyRef = Union[Key, str]


def _headers(
    home: Home, key: KeyRef, method: str, url: str, body: Optional[bytes], authorization: Optional[str]
) -> List[Tuple[str, str]]:
    return home.sign_request(key, method, url, body or None, authorization)


def _body_bytes(body: Any) -> Optional[bytes]:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    raise InvalidInputError(
        "a streaming or file body cannot be signed: pass the body as bytes or str"
    )


try:  # requests is optional
    import requests.auth as _requests_auth

    class RequestsAuth(_requests_auth.AuthBase):
        """A ``requests`` auth hook: signs each prepared request with ``key`` of ``home``."""

        def __init__(self, home: Home, key: KeyRef) -> None:
            self.home = home
            self.key = key

        def __call__(self, request: Any) -> Any:
            body = _body_bytes(request.body)
            # What is sent is exactly what is signed: a str body goes out as its UTF-8 bytes.
            if body is not None:
                request.body = body
            for name, value in _headers(
                self.home,
                self.key,
                request.method,
                request.url,
                body,
                request.headers.get("Authorization"),
            ):
                request.headers[name] = value
            return request

except ImportError:  # pragma: no cover - only without requests installed

    class RequestsAuth:  # type: ignore[no-redef]
        """Needs ``requests`` (``pip install keyhaven[requests]``)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("keyhaven.auth.RequestsAuth needs requests: pip install requests")


try:  # httpx is optional
    import httpx as _httpx

    class HttpxAuth(_httpx.Auth):
        """An ``httpx`` auth flow: signs each request with ``key`` of ``home``."""

        requires_request_body = True

        def __init__(self, home: Home, key: KeyRef) -> None:
            self.home = home
            self.key = key

        def auth_flow(self, request: Any) -> Any:
            for name, value in _headers(
                self.home,
                self.key,
                request.method,
                str(request.url),
                request.content,
                request.headers.get("Authorization"),
            ):
                request.headers[name] = value
            yield request

except ImportError:  # pragma: no cover - only without httpx installed

    class HttpxAuth:  # type: ignore[no-redef]
        """Needs ``httpx`` (``pip install keyhaven[httpx]``)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("keyhaven.auth.HttpxAuth needs httpx: pip install httpx")


__all__ = ["HttpxAuth", "RequestsAuth"]
