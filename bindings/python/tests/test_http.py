"""Requests signed by the binding (its Client, and the requests and httpx hooks) against a
live `keyhaven serve`, and checked by an RFC 9421 implementation nobody here wrote (PyPI's
`http-message-signatures`)."""

import base64
import hashlib
import json

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

import keyhaven
from keyhaven.auth import HttpxAuth, RequestsAuth


def registered(home, server, label="app", algorithm="ed25519"):
    key = home.generate(label, algorithm=algorithm)
    with pytest.raises(keyhaven.InvalidInputError):
        home.client(server.url, key)  # no pin, no trust on first use: refused
    with pytest.raises(keyhaven.InvalidInputError):
        home.client(server.url, key, server_fingerprint="00" * 32)
    client = home.client(server.url, key, trust_on_first_use=True)
    # Trust on first use, checked against what the server printed when it started.
    server_pub = serialization.load_pem_public_key(client.server_key.encode())
    der = server_pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert hashlib.sha256(der).hexdigest() == server.fingerprint
    view = client.register(f"{label}-service")
    assert view["name"] == f"{label}-service"
    return key, client


@pytest.mark.parametrize("algorithm", ["ed25519", "p256", "p384"])
def test_a_key_registers_and_its_requests_are_accepted(home, server, algorithm):
    key, client = registered(home, server, f"app-{algorithm}", algorithm)
    who = client.whoami()
    assert key.fingerprint in json.dumps(who)
    r = client.send("GET", f"{server.url}/v1/clients/me")
    assert r.status == 200
    assert key.fingerprint in r.body.decode()
    # Pinned by PEM, the same.
    pinned = home.client(server.url, key, server_key=client.server_key)
    assert pinned.whoami() == who
    by_fingerprint = home.client(server.url, key, server_fingerprint=server.fingerprint)
    assert by_fingerprint.whoami() == who


def test_requests_and_httpx_hooks_sign_what_the_server_accepts(home, server):
    key, _ = registered(home, server)
    r = requests.get(f"{server.url}/v1/whoami", auth=RequestsAuth(home, key), timeout=30)
    assert r.status_code == 200, r.text
    assert key.fingerprint in r.text
    with httpx.Client(auth=HttpxAuth(home, "app"), timeout=30) as c:
        r = c.get(f"{server.url}/v1/clients/me")
        assert r.status_code == 200, r.text
    # The same signed request sent twice: the server refuses the replay by its nonce.
    session = requests.Session()
    prepared = session.prepare_request(
        requests.Request("GET", f"{server.url}/v1/whoami", auth=RequestsAuth(home, key))
    )
    assert session.send(prepared, timeout=30).status_code == 200
    again = session.send(prepared, timeout=30)
    assert again.status_code == 401
    assert again.headers["content-type"].startswith("application/problem+json")
    assert "replayed-nonce" in again.json()["type"]


def test_a_refusal_surfaces_the_servers_problem(home, server):
    stranger = home.generate("stranger", algorithm="ed25519")
    client = home.client(server.url, stranger, server_fingerprint=server.fingerprint)
    with pytest.raises(keyhaven.ServerError) as raised:
        client.whoami()
    e = raised.value
    assert e.status == 401
    assert e.exit_code == 6, "the CLI's code for a 401"
    assert e.outcome_unknown is False
    assert e.problem_type.endswith("unknown-key"), e.problem_type
    assert e.detail
    assert isinstance(e, keyhaven.KeyhavenError)
    r = requests.get(f"{server.url}/v1/whoami", auth=RequestsAuth(home, stranger), timeout=30)
    assert r.status_code == 401
    assert r.json()["status"] == 401


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, key):
        self.key = key

    def resolve_public_key(self, key_id):
        assert key_id == self.key.fingerprint, key_id
        return serialization.load_pem_public_key(self.key.public_key_pem.encode())


@pytest.mark.parametrize(
    "algorithm,alg",
    [("ed25519", algorithms.ED25519), ("p256", algorithms.ECDSA_P256_SHA256)],
)
def test_an_independent_rfc9421_verifier_accepts_the_hooks_signatures(home, algorithm, alg):
    key = home.generate(f"v-{algorithm}", algorithm=algorithm)
    body = b'{"transfer": 100}'
    prepared = requests.Request(
        "POST", "https://keys.example.com/v1/things?x=1", data=body, auth=RequestsAuth(home, key)
    ).prepare()
    want = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert prepared.headers["Content-Digest"] == want
    verified = HTTPMessageVerifier(signature_algorithm=alg, key_resolver=_Keys(key)).verify(
        prepared, max_age=None
    )
    covered = [str(c) for c in verified[0].covered_components]
    assert covered[:3] == ['"@method"', '"@target-uri"', '"content-digest"']
    params = verified[0].parameters
    assert {"created", "expires", "nonce", "keyid"} <= {str(k) for k in params}
    # One changed byte of the body no longer matches the signed digest; a changed method
    # no longer verifies.
    prepared.method = "PUT"
    with pytest.raises(Exception):
        HTTPMessageVerifier(signature_algorithm=alg, key_resolver=_Keys(key)).verify(
            prepared, max_age=None
        )
