// The parts that need no page, in Node's own WebCrypto: encrypted PKCS#8 read and written
// as openssl and the keyhaven command read and write it, bad backups refused, and request
// signatures checked by PyPI's http-message-signatures.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  BadPasswordError,
  InvalidInputError,
  decryptPkcs8,
  dictionaryMember,
  encryptPkcs8,
  signRequest,
} from "../dist/index.js";
import { PY_VERIFY_REQUEST, cli, newHome, python, secretFile, tempDir } from "./helpers.mjs";

const subtle = globalThis.crypto.subtle;

async function ed25519() {
  const pair = await subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  const pkcs8 = new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey));
  const spki = new Uint8Array(await subtle.exportKey("spki", pair.publicKey));
  return { pair, pkcs8, spki };
}

function pem(label, der) {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

test("a backup is encrypted PKCS#8 that openssl and keyhaven read", async () => {
  const dir = tempDir();
  const { pkcs8, spki } = await ed25519();
  const backup = await encryptPkcs8(pkcs8, "a backup password");
  assert.match(backup, /^-----BEGIN ENCRYPTED PRIVATE KEY-----/);
  writeFileSync(join(dir, "k.pem"), backup);
  const out = spawnSync("openssl", ["pkey", "-in", "k.pem", "-passin", "pass:a backup password", "-pubout"], {
    cwd: dir,
  });
  assert.equal(out.status, 0, out.stderr.toString());
  assert.equal(out.stdout.toString(), pem("PUBLIC KEY", spki));
  const asn1 = spawnSync("openssl", ["asn1parse", "-in", "k.pem"], { cwd: dir }).stdout.toString();
  assert.match(asn1, /PBES2/);
  assert.match(asn1, /hmacWithSHA256/);
  assert.match(asn1, /aes-256-cbc/);
  const home = newHome(dir);
  const pass = secretFile(dir, "pass", "a backup password\n");
  const imported = JSON.parse(
    cli(home, ["key", "import", "--label", "from-js", "--key-passphrase-file", pass, "--json", join(dir, "k.pem")]).stdout,
  );
  const fp = Buffer.from(await subtle.digest("SHA-256", spki)).toString("hex");
  assert.equal(imported.fingerprint, fp);
});

test("a keyhaven export (--pbkdf2) decrypts here; scrypt, a wrong password, tampering are refused", async () => {
  const dir = tempDir();
  const home = newHome(dir);
  cli(home, ["key", "generate", "--label", "cli", "--algorithm", "ed25519"]);
  const pass = secretFile(dir, "pass", "an export password\n");
  cli(home, ["key", "export", "cli", "--out", join(dir, "cli.pem"), "--export-passphrase-file", pass, "--pbkdf2"]);
  const exported = readFileSync(join(dir, "cli.pem"), "utf8");
  const pkcs8 = await decryptPkcs8(exported, "an export password");
  const key = await subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
  const jwk = await subtle.exportKey("jwk", key);
  const pub = cli(home, ["key", "public", "cli"]).stdout;
  const raw = Buffer.from(pub.replace(/-----[^-]+-----|\s/g, ""), "base64").subarray(12);
  assert.equal(Buffer.from(jwk.x, "base64url").toString("hex"), raw.toString("hex"));

  await assert.rejects(decryptPkcs8(exported, "not the password"), BadPasswordError);
  const der = Buffer.from(exported.replace(/-----[^-]+-----|\s/g, ""), "base64");
  der[der.length - 20] ^= 0x01;
  await assert.rejects(decryptPkcs8(pem("ENCRYPTED PRIVATE KEY", der), "an export password"), BadPasswordError);
  cli(home, ["key", "export", "cli", "--out", join(dir, "scrypt.pem"), "--export-passphrase-file", pass]);
  await assert.rejects(
    decryptPkcs8(readFileSync(join(dir, "scrypt.pem"), "utf8"), "an export password"),
    (e) => e instanceof InvalidInputError && /--pbkdf2/.test(e.message),
  );
  await assert.rejects(decryptPkcs8("not a pem", "x"), InvalidInputError);
  // Every truncation of a backup is a clear refusal, never a crash of another kind.
  for (let cut = 1; cut < der.length; cut += 7) {
    await assert.rejects(
      decryptPkcs8(pem("ENCRYPTED PRIVATE KEY", der.subarray(0, cut)), "an export password"),
      (e) => e instanceof InvalidInputError || e instanceof BadPasswordError,
    );
  }
});

test("request signatures verify with an independent RFC 9421 implementation", async () => {
  const { pair, spki } = await ed25519();
  const fingerprint = Buffer.from(await subtle.digest("SHA-256", spki)).toString("hex");
  const body = new TextEncoder().encode('{"amount": 100}');
  const url = "https://keys.example.com/v1/things?x=1";
  const signed = await signRequest({ privateKey: pair.privateKey, fingerprint }, "post", url, body);
  assert.equal(signed.method, "POST");
  assert.ok(dictionaryMember(signed.headers["Signature-Input"], "keyhaven"));
  const job = {
    public_key_pem: pem("PUBLIC KEY", spki),
    fingerprint,
    method: "POST",
    url,
    headers: signed.headers,
    body: Buffer.from(body).toString("base64"),
  };
  const verdict = python(PY_VERIFY_REQUEST, job);
  assert.equal(verdict.ok, true, verdict.error);
  assert.equal(verdict.digest_ok, true);
  assert.deepEqual(verdict.covered.slice(0, 3), ['"@method"', '"@target-uri"', '"content-digest"']);
  // Another method or URL does not verify.
  assert.equal(python(PY_VERIFY_REQUEST, { ...job, method: "PUT" }).ok, false);
  assert.equal(python(PY_VERIFY_REQUEST, { ...job, url: "https://keys.example.com/v1/other" }).ok, false);
});

test("structured-field dictionaries are read past quotes and inner lists", () => {
  const field = 'other=("a" "b,c");x="y,z", keyhaven=("@status");created=1;keyid="k", last=:AAA=:';
  assert.equal(dictionaryMember(field, "keyhaven"), '("@status");created=1;keyid="k"');
  assert.equal(dictionaryMember(field, "other"), '("a" "b,c");x="y,z"');
  assert.equal(dictionaryMember(field, "missing"), undefined);
});
