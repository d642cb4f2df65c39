"""The README's example application: release artifacts signed with a key in a SoftHSM2 token
(the test run's scratch token directory, SOFTHSM2_CONF), each checked by `openssl`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import keyhaven
from conftest import PASSPHRASE, cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sign_release.py"


def test_release_artifacts_are_signed_in_the_token_and_openssl_checks_them(home, tmp_path):
    module = os.environ.get("KEYHAVEN_PKCS11_MODULE")
    if not module or not os.environ.get("SOFTHSM2_CONF"):
        pytest.fail("no SoftHSM2 module/configuration: run the tests with `cargo xtask test`")
    label = f"kh-py-{os.getpid()}-{tmp_path.name[-12:]}"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--pin", "4321", "--so-pin", "87654321"],
        check=True,
        capture_output=True,
    )
    env = {"RELEASE_HSM_PIN": "4321"}
    cli(home.path, "backend", "add", "pkcs11", "hsm", "--module", module,
        "--token", label, "--pin-env", "RELEASE_HSM_PIN", env=env)
    os.environ["RELEASE_HSM_PIN"] = "4321"
    # A Home reads the configuration when opened: open it again to see the new backend.
    home = keyhaven.Home(home.path, passphrase=PASSPHRASE)
    try:
        key = home.generate("release", algorithm="p384", backend="hsm")
        assert key.protection == "hardware"
        # The token never hands its private key out.
        with pytest.raises(keyhaven.UnsupportedError):
            home.export_pem(key, "an export password")
        dist = tmp_path / "dist"
        dist.mkdir()
        (dist / "app.tar.gz").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
        (dist / "notes.txt").write_text("release 1.0\n")
        run_env = dict(os.environ, KEYHAVEN_PASSPHRASE=PASSPHRASE)
        out = subprocess.run(
            [sys.executable, str(EXAMPLE), "--home", str(home.path), "--key", "release",
             str(dist)],
            capture_output=True,
            env=run_env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert b"2 file(s) signed" in out.stdout
        for name in ["app.tar.gz", "notes.txt"]:
            check = subprocess.run(
                ["openssl", "dgst", "-sha384", "-verify", "release.pub", "-signature",
                 f"{name}.sig", name],
                cwd=dist,
                capture_output=True,
            )
            assert check.returncode == 0, check.stderr
        # A wrong PIN: the example exits with the command line's code for it.
        bad = subprocess.run(
            [sys.executable, str(EXAMPLE), "--home", str(home.path), "--key", "release",
             str(dist)],
            capture_output=True,
            env=dict(run_env, RELEASE_HSM_PIN="0000"),
            timeout=120,
        )
        assert bad.returncode == 4, bad.stderr
        assert b"error:" in bad.stderr
    finally:
        os.environ.pop("RELEASE_HSM_PIN", None)
