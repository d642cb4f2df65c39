"""Keys through the binding, checked by code nobody here wrote: Python's `cryptography` and
the `openssl` command."""

import hashlib
import subprocess

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import keyhaven


@pytest.mark.parametrize(
    "algorithm,hash_",
    [("p384", hashes.SHA384()), ("p256", hashes.SHA256()), ("ed25519", None)],
)
def test_signatures_verify_with_cryptography(home, algorithm, hash_):
    key = home.generate(f"k-{algorithm}", algorithm=algorithm)
    assert key.algorithm == algorithm
    assert key.protection == "software-encrypted"
    assert key.fingerprint == hashlib.sha256(key.public_key_der).hexdigest()
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    message = b"release 1.0 artifact"
    signature = home.sign(key, message)
    if hash_ is None:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, message)
    else:
        public.verify(signature, message, ec.ECDSA(hash_))
        with pytest.raises(InvalidSignature):
            public.verify(signature, message + b"!", ec.ECDSA(hash_))
    assert home.verify(key, message, signature)
    assert not home.verify(key, message + b"!", signature)
    assert keyhaven.verify(key.public_key_pem, message, signature)
    # The raw form (r || s) is what JOSE and WebCrypto take.
    raw = home.sign(key.label, message, format="raw")
    assert len(raw) == {"p384": 96, "p256": 64, "ed25519": 64}[algorithm]
    assert keyhaven.verify(key.public_key_pem, message, raw, format="raw")


def test_a_signature_verifies_with_openssl(home, tmp_path):
    key = home.generate("artifact", algorithm="p384")
    (tmp_path / "pub.pem").write_text(home.public_key(key))
    (tmp_path / "msg").write_bytes(b"x" * 10_000)
    (tmp_path / "msg.sig").write_bytes(home.sign(key, b"x" * 10_000))
    out = subprocess.run(
        ["openssl", "dgst", "-sha384", "-verify", "pub.pem", "-signature", "msg.sig", "msg"],
        cwd=tmp_path,
        capture_output=True,
    )
    assert out.returncode == 0, out.stderr
    assert b"Verified OK" in out.stdout


def test_prehashed_digests_sign_for_ecdsa_only(home):
    key = home.generate("digest", algorithm="p256")
    digest = hashlib.sha256(b"payload").digest()
    signature = home.sign_digest(key, digest)
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    with pytest.raises(keyhaven.InvalidInputError):
        home.sign_digest(key, digest[:20])


def test_listing_lookup_default_and_rotation(home):
    first = home.generate("first", algorithm="ed25519")
    second = home.generate("second", algorithm="p256")
    assert {k.label for k in home.keys()} == {"first", "second"}
    assert home.key("first") == first
    assert home.key(first.reference) == first
    assert home.default_key() == first
    home.set_default_key(second)
    assert home.default_key() == second
    v2 = home.rotate("second", migration_window="14d")
    assert v2.id != second.id and v2.label == "second.v2"
    # The label names the key in use: signatures are v2's, and its public key is exported.
    signature = home.sign("second", b"after rotation")
    assert keyhaven.verify(v2.public_key_pem, b"after rotation", signature)
    assert home.public_key("second") == v2.public_key_pem
    assert "Key(" in repr(v2) and "second.v2" in repr(v2)


def test_export_is_encrypted_pkcs8_that_openssl_reads_and_imports_back(home, tmp_path):
    key = home.generate("moving", algorithm="p384")
    pem = home.export_pem(key, "an export password")
    assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    (tmp_path / "k.pem").write_text(pem)
    out = subprocess.run(
        ["openssl", "pkey", "-in", "k.pem", "-passin", "pass:an export password", "-pubout"],
        cwd=tmp_path,
        capture_output=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == key.public_key_pem
    other = keyhaven.Home(tmp_path / "other", passphrase="another home's passphrase")
    other.add_backend("default")
    with pytest.raises(keyhaven.BadPassphraseError) as wrong:
        other.import_pem("moved", pem, password="not the password")
    assert wrong.value.exit_code == 4
    assert other.keys() == []
    moved = other.import_pem("moved", pem, password=b"an export password")
    assert moved.fingerprint == key.fingerprint
    assert keyhaven.verify(key.public_key_pem, b"m", other.sign(moved, b"m"))
    # An openssl-made key comes in too.
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ED25519", "-out", "ossl.pem"],
        cwd=tmp_path,
        check=True,
    )
    made = other.import_pem("ossl", (tmp_path / "ossl.pem").read_text())
    assert made.algorithm == "ed25519"


def test_the_gil_is_released_while_keys_work(home):
    import threading

    key = home.generate("busy", algorithm="p384")
    progress = []
    done = threading.Event()

    def sign_a_lot():
        try:
            home._sign_many(key, b"m", 300)
        finally:
            done.set()

    t = threading.Thread(target=sign_a_lot)
    t.start()
    # While the other thread is inside native code, this one keeps running Python.
    while not done.is_set():
        progress.append(1)
    t.join()
    assert len(progress) > 1000
