"""Bad input gets a clear exception of its kind, with the command line's exit code, and
loses nothing."""

import os
import stat

import pytest

import keyhaven
from conftest import PASSPHRASE, cli


def test_every_error_is_a_keyhaven_error_with_its_exit_code(home):
    home.generate("taken", algorithm="ed25519")
    cases = [
        (lambda: home.key("missing"), keyhaven.NotFoundError, 3),
        (lambda: home.generate("taken", algorithm="ed25519"), keyhaven.AlreadyExistsError, 8),
        (lambda: home.generate("x", algorithm="rsa"), keyhaven.InvalidInputError, 9),
        (lambda: home.sign("taken", b"m", format="base64"), keyhaven.InvalidInputError, 9),
        (lambda: home.import_pem("y", "not a pem"), keyhaven.InvalidInputError, 9),
        (lambda: home.rotate("taken", migration_window="soon"), keyhaven.InvalidInputError, 9),
        (lambda: home.key(42), keyhaven.InvalidInputError, 9),
    ]
    for call, cls, code in cases:
        with pytest.raises(cls) as raised:
            call()
        assert isinstance(raised.value, keyhaven.KeyhavenError)
        assert raised.value.exit_code == code
        assert str(raised.value)
    assert [k.label for k in home.keys()] == ["taken"]


def test_agreement_keys_do_not_sign(home):
    key = home.generate("dh", algorithm="x25519")
    with pytest.raises(keyhaven.UnsupportedError) as raised:
        home.sign(key, b"m")
    assert raised.value.exit_code == 5


def test_a_wrong_passphrase_or_none_changes_nothing(home, tmp_path):
    key = home.generate("guarded", algorithm="p256")
    wrong = keyhaven.Home(home.path, passphrase="not the passphrase")
    with pytest.raises(keyhaven.BadPassphraseError) as raised:
        wrong.sign("guarded", b"m")
    assert raised.value.exit_code == 4
    env = os.environ.pop("KEYHAVEN_PASSPHRASE", None)
    try:
        locked = keyhaven.Home(home.path)
        with pytest.raises(keyhaven.BadPassphraseError):
            locked.sign("guarded", b"m")
    finally:
        if env is not None:
            os.environ["KEYHAVEN_PASSPHRASE"] = env
    # The right passphrase still works: nothing was damaged.
    again = keyhaven.Home(home.path, passphrase=PASSPHRASE)
    assert again.key("guarded") == key
    assert keyhaven.verify(key.public_key_pem, b"m", again.sign("guarded", b"m"))


def test_a_home_open_to_others_is_refused_naming_the_fix(tmp_path):
    path = tmp_path / "shared"
    h = keyhaven.Home(path, passphrase=PASSPHRASE)
    h.add_backend("default")
    os.chmod(path, 0o755)
    with pytest.raises(keyhaven.PermissionDeniedError) as raised:
        keyhaven.Home(path, passphrase=PASSPHRASE)
    assert "chmod" in str(raised.value)
    assert raised.value.exit_code == 6
    os.chmod(path, stat.S_IRWXU)


def test_a_revoked_key_no_longer_signs(home):
    key = home.generate("lost", algorithm="ed25519")
    cli(home.path, "key", "revoke", "lost", "--reason", "laptop stolen")
    with pytest.raises(keyhaven.RevokedError) as raised:
        home.sign(key, b"m")
    assert raised.value.exit_code == 12
    assert "laptop stolen" in str(raised.value)


def test_a_tampered_store_file_is_corrupt_not_a_wrong_answer(home):
    key = home.generate("sealed", algorithm="p384")
    keys_dir = home.path / "backends" / "default" / "keys"
    files = [p for p in keys_dir.iterdir() if p.is_file()]
    assert files, list(keys_dir.iterdir())
    target = files[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    fresh = keyhaven.Home(home.path, passphrase=PASSPHRASE)
    with pytest.raises(keyhaven.KeyhavenError) as raised:
        fresh.sign(key, b"m")
    assert isinstance(raised.value, (keyhaven.CorruptError, keyhaven.BadPassphraseError)), raised
