"""Backups made through the binding restore through it and through the command line; an
expired or tampered backup, or a wrong passphrase, restores nothing."""

import json

import pytest

import keyhaven
from conftest import PASSPHRASE, cli


def test_a_backup_restores_into_a_fresh_home_and_the_keys_sign_as_before(home, tmp_path):
    a = home.generate("a", algorithm="p384")
    b = home.generate("b", algorithm="ed25519")
    header = home.backup(
        tmp_path / "keys.khb", "a backup passphrase", description="nightly", expires_in="30d"
    )
    assert header["key_count"] == 2
    assert header["description"] == "nightly"
    fresh = keyhaven.Home(tmp_path / "fresh", passphrase="the fresh home's passphrase")
    fresh.add_backend("default")
    report = fresh.restore(tmp_path / "keys.khb", "a backup passphrase")
    assert sorted(r["outcome"] for r in report) == ["restored", "restored"]
    for key in (a, b):
        again = fresh.key(key.label)
        assert again.fingerprint == key.fingerprint
        assert keyhaven.verify(key.public_key_pem, b"m", fresh.sign(again, b"m"))
    # The command line reads the same file.
    out = cli(tmp_path / "fresh", "backup", "inspect", str(tmp_path / "keys.khb"), "--json")
    assert json.loads(out.stdout)["key_count"] == 2


def test_bad_backups_and_passphrases_restore_nothing(home, tmp_path):
    home.generate("k", algorithm="p256")
    path = tmp_path / "keys.khb"
    with pytest.raises(keyhaven.InvalidInputError):
        home.backup(path, "a backup passphrase", expires_in="whenever")
    with pytest.raises(keyhaven.InvalidInputError):
        home.backup(path, PASSPHRASE)  # the stores' own passphrase: refused
    home.backup(path, "a backup passphrase")
    fresh = keyhaven.Home(tmp_path / "fresh", passphrase="the fresh home's passphrase")
    fresh.add_backend("default")
    with pytest.raises(keyhaven.BadPassphraseError):
        fresh.restore(path, "not the backup passphrase")
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    (tmp_path / "tampered.khb").write_bytes(bytes(data))
    with pytest.raises(keyhaven.KeyhavenError) as raised:
        fresh.restore(tmp_path / "tampered.khb", "a backup passphrase")
    assert isinstance(raised.value, (keyhaven.CorruptError, keyhaven.BadPassphraseError))
    with pytest.raises(keyhaven.InvalidInputError):
        fresh.restore(path, "a backup passphrase", on_conflict="merge")
    assert fresh.keys() == []


def test_an_expired_backup_needs_allow_expired(home, tmp_path):
    home.generate("k", algorithm="p256")
    path = tmp_path / "short.khb"
    home.backup(path, "a backup passphrase", expires_in="1d")
    later = keyhaven.Home(tmp_path / "later", passphrase="the later home's passphrase")
    later.add_backend("default")
    # The backup is checked against the clock of the process restoring it: move a
    # command-line restore two days ahead (the test build's injected clock).
    pass_file = tmp_path / "backup-pass"
    pass_file.write_text("a backup passphrase\n")
    pass_file.chmod(0o600)
    out = cli(
        tmp_path / "later",
        "backup",
        "restore",
        str(path),
        "--backup-passphrase-file",
        str(pass_file),
        env={"KEYHAVEN_TEST_CLOCK_OFFSET": str(2 * 86400)},
        check=False,
    )
    assert out.returncode != 0
    assert b"--allow-expired" in out.stderr
    assert later.keys() == []
    # Within its day the binding restores it.
    assert later.restore(path, "a backup passphrase")[0]["outcome"] == "restored"
