"""Fixtures: homes made through the binding, the `keyhaven` command beside it (the same
workspace's build, `KEYHAVEN_BIN`), and a live `keyhaven serve` for the HTTP tests."""

import os
import re
import subprocess
import sys

import pytest

import keyhaven

PASSPHRASE = "correct horse battery staple"


def keyhaven_bin() -> str:
    path = os.environ.get("KEYHAVEN_BIN")
    if not path:
        pytest.fail("KEYHAVEN_BIN is not set: run the tests with `cargo xtask test`")
    return path


def cli(home_path, *args, env=None, check=True, input=None):
    """Runs `keyhaven --home HOME ARGS...` with the tests' passphrase."""
    full_env = dict(os.environ)
    full_env["KEYHAVEN_PASSPHRASE"] = PASSPHRASE
    full_env.pop("KEYHAVEN_HOME", None)
    if env:
        full_env.update(env)
    out = subprocess.run(
        [keyhaven_bin(), "--home", str(home_path), *args],
        capture_output=True,
        env=full_env,
        input=input,
        timeout=120,
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"keyhaven {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}"
        )
    return out


@pytest.fixture
def home(tmp_path):
    """A new home with an encrypted backend `default`, opened through the binding."""
    h = keyhaven.Home(tmp_path / "home", passphrase=PASSPHRASE)
    h.add_backend("default", "encrypted")
    return h


class Served:
    """`keyhaven serve` on a loopback port for one test."""

    def __init__(self, home_path):
        self.home_path = home_path
        env = dict(os.environ)
        env["KEYHAVEN_PASSPHRASE"] = PASSPHRASE
        self.proc = subprocess.Popen(
            [keyhaven_bin(), "--home", str(home_path), "serve", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"keyhaven serve said {line!r}: {self.proc.stderr.read()!r}")
        self.url = m.group(1).rstrip("/")
        second = self.proc.stdout.readline().decode()
        f = re.match(r"server key: ([0-9a-f]{64})", second)
        if not f:
            self.proc.kill()
            raise AssertionError(f"keyhaven serve said {second!r}")
        self.fingerprint = f.group(1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def server(tmp_path):
    """A keyhaven server (its own home, an admin key) and the PEM of its key."""
    server_home = tmp_path / "server-home"
    cli(server_home, "backend", "add", "encrypted", "default")
    cli(server_home, "key", "generate", "--label", "admin", "--algorithm", "p256")
    cli(server_home, "serve", "init", "--admin", "admin")
    served = Served(server_home)
    yield served
    served.stop()
