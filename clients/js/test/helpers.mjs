// Helpers of the SDK's tests: the workspace's `keyhaven` binary (KEYHAVEN_BIN), homes in
// temporary directories, a live `keyhaven serve`, a static server for the test page, and the
// interop Python (KEYHAVEN_PYTHON) for checks by code nobody here wrote.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, chmodSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, normalize, extname, dirname } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const PASSPHRASE = "correct horse battery staple";
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

export function keyhavenBin() {
  const bin = process.env.KEYHAVEN_BIN;
  if (!bin) throw new Error("KEYHAVEN_BIN is not set: run the tests with `cargo xtask test`");
  return bin;
}

export function tempDir(prefix = "kh-js-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Runs `keyhaven --home HOME ...args`; throws with its stderr unless `check: false`. */
export function cli(home, args, { env = {}, check = true, input } = {}) {
  const out = spawnSync(keyhavenBin(), ["--home", home, ...args], {
    env: { ...process.env, KEYHAVEN_PASSPHRASE: PASSPHRASE, ...env },
    input,
    timeout: 120_000,
  });
  if (check && out.status !== 0) {
    throw new Error(`keyhaven ${args.join(" ")} exited ${out.status}: ${out.stderr}`);
  }
  return { status: out.status, stdout: out.stdout.toString(), stderr: out.stderr.toString() };
}

/** A private file (0600) with `text`. */
export function secretFile(dir, name, text) {
  const p = join(dir, name);
  writeFileSync(p, text, { mode: 0o600 });
  chmodSync(p, 0o600);
  return p;
}

/** A new home with an encrypted backend. */
export function newHome(dir, name = "home") {
  const home = join(dir, name);
  cli(home, ["backend", "add", "encrypted", "default"]);
  return home;
}

/** `keyhaven serve` on a loopback port (a server home with an admin key), with CORS for
 * `origins`. Resolves to { url, fingerprint, home, stop() }. */
export async function serve(dir, origins = []) {
  const home = newHome(dir, "server-home");
  cli(home, ["key", "generate", "--label", "admin", "--algorithm", "p256"]);
  cli(home, ["serve", "init", "--admin", "admin"]);
  const args = ["--home", home, "serve", "--listen", "127.0.0.1:0"];
  for (const o of origins) args.push("--cors-origin", o);
  const child = spawn(keyhavenBin(), args, {
    env: { ...process.env, KEYHAVEN_PASSPHRASE: PASSPHRASE },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const lines = createInterface({ input: child.stdout });
  const it = lines[Symbol.asyncIterator]();
  const first = (await it.next()).value ?? "";
  const second = (await it.next()).value ?? "";
  const url = /listening on (\S+)/.exec(first)?.[1];
  const fingerprint = /server key: ([0-9a-f]{64})/.exec(second)?.[1];
  if (!url || !fingerprint) {
    child.kill();
    throw new Error(`keyhaven serve said ${first} / ${second}: ${stderr}`);
  }
  return {
    url: url.replace(/\/$/, ""),
    fingerprint,
    home,
    stop: () => child.kill("SIGTERM"),
  };
}

const TYPES = { ".js": "text/javascript", ".html": "text/html", ".mjs": "text/javascript" };

/** Serves `dist/` and `test/page.html` of this package on a loopback port. */
export async function staticServer() {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = path === "/" ? "/test/page.html" : path;
    if (!file.startsWith("/dist/") && !file.startsWith("/examples/") && file !== "/test/page.html") {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(join(ROOT, file));
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return { origin: `http://127.0.0.1:${port}`, close: () => server.close() };
}

/** Runs `code` with the interop Python, `input` as JSON on stdin; its stdout as JSON. */
export function python(code, input) {
  const py = process.env.KEYHAVEN_PYTHON;
  if (!py) throw new Error("KEYHAVEN_PYTHON is not set: run the tests with `cargo xtask test`");
  const out = spawnSync(py, ["-c", code], { input: JSON.stringify(input), timeout: 60_000 });
  if (out.status !== 0) throw new Error(`python failed: ${out.stderr}`);
  return JSON.parse(out.stdout.toString());
}

/** Verifies RFC 9421 request headers with PyPI's http-message-signatures (Ed25519). */
export const PY_VERIFY_REQUEST = `
import base64, hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
job = json.load(sys.stdin)
public = serialization.load_pem_public_key(job["public_key_pem"].encode())
class Keys(HTTPSignatureKeyResolver):
    def resolve_public_key(self, key_id):
        assert key_id == job["fingerprint"], key_id
        return public
class Msg:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers
out = {}
try:
    r = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=Keys()).verify(
        Msg(job["method"], job["url"], job["headers"]), max_age=None)
    out["ok"] = True
    out["covered"] = [str(c) for c in r[0].covered_components]
except Exception as e:
    out["ok"] = False
    out["error"] = f"{type(e).__name__}: {e}"
body = base64.b64decode(job.get("body", ""))
out["digest_ok"] = job["headers"].get("Content-Digest") in (None, "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":")
print(json.dumps(out))
`;
