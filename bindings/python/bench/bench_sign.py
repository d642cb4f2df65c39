#!/usr/bin/env python3
"""The binding's overhead per call: `Home.sign` from a Python loop against the same signatures
made by the Rust facade's own loop (`Home._sign_many`, one call), in the same run, with the
same key (Ed25519 in a memory backend: the fastest signature keyhaven makes, so the overhead
is as visible as it gets). Target: under 10 microseconds per call.

Run it with `cargo xtask bench-python` (a release wheel)."""

import statistics
import tempfile
import time

import keyhaven

N = 5_000
ROUNDS = 7


def per_call(f, n=N):
    start = time.perf_counter()
    f(n)
    return (time.perf_counter() - start) / n


def main():
    with tempfile.TemporaryDirectory() as tmp:
        # Audit off for this home: each audited signature waits for an fsync (its intent
        # record), whose jitter would hide a few microseconds of binding either way.
        import os

        os.mkdir(f"{tmp}/home", 0o700)
        with open(os.open(f"{tmp}/home/keyhaven.toml", os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("[audit]\nenabled = false\n")
        home = keyhaven.Home(f"{tmp}/home", passphrase="bench passphrase, not a secret")
        home.add_backend("mem", "memory")
        report = []
        for algorithm in ["ed25519", "p256"]:
            key = home.generate(f"bench-{algorithm}", algorithm=algorithm, backend="mem")
            data = b"\x5a" * 256

            def rust_loop(n):
                home._sign_many(key, data, n)

            def python_loop(n):
                sign = home.sign
                for _ in range(n):
                    sign(key, data)

            def python_by_label(n):
                sign = home.sign
                label = key.label
                for _ in range(n):
                    sign(label, data)

            n = N if algorithm == "ed25519" else N // 5
            rust_loop(n // 10)  # warm up
            rust, py, by_label = [], [], []
            for _ in range(ROUNDS):
                rust.append(per_call(rust_loop, n))
                py.append(per_call(python_loop, n))
                by_label.append(per_call(python_by_label, n // 5))
            r, p, lbl = (statistics.median(x) * 1e6 for x in (rust, py, by_label))
            report.append((algorithm, r, p, lbl))
        print(f"{'algorithm':10} {'facade loop':>12} {'binding':>10} {'overhead':>10} "
              f"{'ratio':>6} {'by label':>10}")
        for algorithm, r, p, lbl in report:
            print(f"{algorithm:10} {r:10.2f}us {p:8.2f}us {p - r:8.2f}us {p / r:6.3f} "
                  f"{lbl:8.2f}us")
        worst = max(p - r for _, r, p, _ in report)
        verdict = "meets" if worst < 10 else "misses"
        print(f"binding overhead per call: at most {worst:.2f} us ({verdict} the 10 us target)")


if __name__ == "__main__":
    main()
