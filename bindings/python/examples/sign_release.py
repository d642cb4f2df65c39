#!/usr/bin/env python3
"""Sign every file of a release directory with a key kept in a PKCS#11 token (an HSM).

Each FILE gets FILE.sig beside it (ECDSA, DER), and the directory gets release.pub, so anyone
can check a file with nothing but OpenSSL:

    openssl dgst -sha384 -verify release.pub -signature FILE.sig FILE

The files are hashed here (SHA-384, streamed: artifacts of any size) and only the digest goes
to the token, which signs it; the private key never leaves the token. Set up the token's
backend once with the command line, e.g.

    keyhaven backend add pkcs11 hsm --module /usr/lib/softhsm/libsofthsm2.so \\
        --token release-hsm --pin-env RELEASE_HSM_PIN
    keyhaven key generate --backend hsm --algorithm p384 --label release

then run: RELEASE_HSM_PIN=... python sign_release.py --key release dist/
"""

import argparse
import hashlib
import os
import sys

import keyhaven

DIGESTS = {"p384": hashlib.sha384, "p256": hashlib.sha256}


def sign_release(home: keyhaven.Home, key_ref: str, directory: str) -> int:
    key = home.key(key_ref)
    digest_of = DIGESTS.get(key.algorithm)
    if digest_of is None:
        raise SystemExit(f"key {key_ref} is {key.algorithm}: use a P-384 or P-256 key")
    if key.protection != "hardware":
        print(f"warning: key {key_ref} is not in a token ({key.protection})", file=sys.stderr)
    count = 0
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or name.endswith(".sig") or name == "release.pub":
            continue
        h = digest_of()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        signature = home.sign_digest(key, h.digest())
        with open(path + ".sig", "wb") as out:
            out.write(signature)
        count += 1
        print(f"signed {name}")
    with open(os.path.join(directory, "release.pub"), "w") as out:
        out.write(home.public_key(key))
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--key", required=True, help="the signing key (label or BACKEND:ID)")
    parser.add_argument("--home", help="the keyhaven home (default: $KEYHAVEN_HOME)")
    args = parser.parse_args()
    try:
        home = keyhaven.Home(args.home)
        n = sign_release(home, args.key, args.directory)
    except keyhaven.KeyhavenError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{n} file(s) signed; check one with: openssl dgst -sha384 -verify release.pub "
          "-signature FILE.sig FILE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
