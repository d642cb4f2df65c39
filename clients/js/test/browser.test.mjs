// The SDK where users run it: a real headless Chromium (Debian's `chromium`, driven over the
// DevTools protocol by puppeteer-core) on a page served from another origin than a live
// `keyhaven serve` (which lists the page's origin for CORS). A key made in the browser is
// registered, used, kept across a reload, exported, imported by the command line and used
// there and from Python; a command-line key comes into the browser and signs there.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import puppeteer from "puppeteer-core";

import { PASSPHRASE, PY_VERIFY_REQUEST, cli, newHome, python, secretFile, serve, staticServer, tempDir } from "./helpers.mjs";

const CHROMIUM = process.env.KEYHAVEN_CHROMIUM ?? "/usr/bin/chromium";

let dir, site, server, browser, page;

before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run the tests with \`cargo xtask test\``);
  dir = tempDir();
  site = await staticServer();
  server = await serve(dir, [site.origin]);
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container: Chromium's sandbox needs user namespaces it may not get.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  page = await browser.newPage();
  await page.goto(`${site.origin}/`);
  await page.waitForFunction("window.ready === true");
});

after(async () => {
  await browser?.close();
  server?.stop();
  site?.close();
});

const ctx = () => ({ url: server.url, fp: server.fingerprint });

test("a browser key registers, signs requests the server accepts, and survives a reload", async () => {
  const made = await page.evaluate(async ({ url, fp }) => {
    const { KeyStore, KeyhavenClient } = window.keyhaven;
    const store = await KeyStore.open();
    const key = await store.generate("me", { backupPassword: "a backup password" });
    await store.generate("locked");
    let exported = "yes";
    try {
      await crypto.subtle.exportKey("pkcs8", key.privateKey);
    } catch (e) {
      exported = e.name;
    }
    const client = await KeyhavenClient.connect(url, key, { serverFingerprint: fp });
    const view = await client.register("browser");
    const who = await client.whoami();
    let locked;
    try {
      await store.exportBackup("locked");
    } catch (e) {
      locked = e.name;
    }
    return {
      fingerprint: key.fingerprint,
      extractable: key.privateKey.extractable,
      exported,
      view,
      who,
      locked,
      pem: key.publicKeyPem,
      backup: await store.exportBackup("me"),
    };
  }, ctx());
  assert.equal(made.extractable, false);
  assert.equal(made.exported, "InvalidAccessError", "page scripts cannot read the key");
  assert.equal(made.view.name, "browser");
  assert.ok(JSON.stringify(made.who).includes(made.fingerprint), JSON.stringify(made.who));
  assert.equal(made.locked, "NotBackupableError");

  await page.reload();
  await page.waitForFunction("window.ready === true");
  const again = await page.evaluate(async ({ url, fp }) => {
    const { KeyStore, KeyhavenClient } = window.keyhaven;
    const store = await KeyStore.open();
    const labels = (await store.list()).map((k) => k.label).sort();
    const key = await store.get("me");
    const client = await KeyhavenClient.connect(url, key, { serverFingerprint: fp });
    const me = await (await client.fetch("/v1/clients/me")).json();
    return { labels, fingerprint: key.fingerprint, me };
  }, ctx());
  assert.deepEqual(again.labels, ["locked", "me"]);
  assert.equal(again.fingerprint, made.fingerprint);
  assert.ok(JSON.stringify(again.me).includes(made.fingerprint));

  // The backup goes to the command line, which signs with it (openssl checks that with the
  // browser's public key) and makes signed requests the server takes as the same client.
  const home = newHome(dir, "cli-home");
  writeFileSync(join(dir, "me.pem"), made.backup);
  writeFileSync(join(dir, "me.pub"), made.pem);
  const pass = secretFile(dir, "pass", "a backup password\n");
  const imported = JSON.parse(
    cli(home, ["key", "import", "--label", "from-browser", "--key-passphrase-file", pass, "--json", join(dir, "me.pem")]).stdout,
  );
  assert.equal(imported.fingerprint, made.fingerprint);
  writeFileSync(join(dir, "msg"), "signed on the command line\n");
  cli(home, ["sign", "--key", "from-browser", "--message-file", join(dir, "msg"), "--out", join(dir, "msg.sig")]);
  const check = spawnSync("openssl", ["pkeyutl", "-verify", "-pubin", "-inkey", "me.pub", "-rawin", "-in", "msg", "-sigfile", "msg.sig"], { cwd: dir });
  assert.equal(check.status, 0, check.stderr.toString());
  cli(home, ["client", "--server", server.url, "--key", "from-browser", "trust", "--server-fingerprint", server.fingerprint]);
  const who = JSON.parse(cli(home, ["client", "--server", server.url, "--key", "from-browser", "--json", "whoami"]).stdout);
  assert.ok(JSON.stringify(who).includes(made.fingerprint), JSON.stringify(who));

  // ... and from Python, through the binding, over the same home.
  const fromPython = python(
    `
import json, sys, keyhaven
job = json.load(sys.stdin)
home = keyhaven.Home(job["home"], passphrase=job["passphrase"])
key = home.key("from-browser")
sig = home.sign(key, b"signed from python")
print(json.dumps({"fingerprint": key.fingerprint, "ok": keyhaven.verify(job["pem"], b"signed from python", sig)}))
`,
    { home, passphrase: PASSPHRASE, pem: made.pem },
  );
  assert.deepEqual(fromPython, { fingerprint: made.fingerprint, ok: true });
});

test("a command-line key comes into the browser and signs there", async () => {
  const home = newHome(dir, "cli-origin");
  cli(home, ["key", "generate", "--label", "desk", "--algorithm", "ed25519"]);
  const pass = secretFile(dir, "export-pass", "an export password\n");
  cli(home, ["key", "export", "desk", "--out", join(dir, "desk.pem"), "--export-passphrase-file", pass, "--pbkdf2"]);
  const pem = spawnSync("cat", [join(dir, "desk.pem")]).stdout.toString();
  const cliPub = cli(home, ["key", "public", "desk"]).stdout;
  const result = await page.evaluate(async ({ url, fp, pem }) => {
    const { KeyStore, KeyhavenClient, BadPasswordError } = window.keyhaven;
    const store = await KeyStore.open();
    let wrong;
    try {
      await store.importBackup("desk", pem, "not the password");
    } catch (e) {
      wrong = e instanceof BadPasswordError ? e.name : `other: ${e}`;
    }
    const key = await store.importBackup("desk", pem, "an export password");
    const client = await KeyhavenClient.connect(url, key, { serverFingerprint: fp });
    await client.register("desk-in-browser");
    const who = await client.whoami();
    const sig = await key.sign(new TextEncoder().encode("from the browser"));
    return {
      wrong,
      extractable: key.privateKey.extractable,
      pub: key.publicKeyPem,
      who,
      sig: btoa(String.fromCharCode(...sig)),
      labels: (await store.list()).map((k) => k.label),
    };
  }, { ...ctx(), pem });
  assert.equal(result.wrong, "BadPasswordError");
  assert.equal(result.extractable, false);
  assert.equal(result.pub, cliPub);
  assert.ok(result.labels.includes("desk"));
  writeFileSync(join(dir, "b.msg"), "from the browser");
  writeFileSync(join(dir, "b.sig"), Buffer.from(result.sig, "base64"));
  writeFileSync(join(dir, "desk.pub"), cliPub);
  const check = spawnSync("openssl", ["pkeyutl", "-verify", "-pubin", "-inkey", "desk.pub", "-rawin", "-in", "b.msg", "-sigfile", "b.sig"], { cwd: dir });
  assert.equal(check.status, 0, check.stderr.toString());
});

test("the page's signed requests verify with an independent RFC 9421 implementation", async () => {
  const signed = await page.evaluate(async () => {
    const { KeyStore, signRequest } = window.keyhaven;
    const key = await (await KeyStore.open()).get("me");
    const body = new TextEncoder().encode('{"n": 1}');
    const s = await signRequest(key, "POST", "https://keys.example.com/v1/x", body);
    return { headers: s.headers, pem: key.publicKeyPem, fingerprint: key.fingerprint };
  });
  const verdict = python(PY_VERIFY_REQUEST, {
    public_key_pem: signed.pem,
    fingerprint: signed.fingerprint,
    method: "POST",
    url: "https://keys.example.com/v1/x",
    headers: signed.headers,
    body: Buffer.from('{"n": 1}').toString("base64"),
  });
  assert.equal(verdict.ok, true, verdict.error);
  assert.equal(verdict.digest_ok, true);
});

test("bad input: no IndexedDB, a stranger's key, a forged answer, a wrong pin, a revoked key", async () => {
  const r = await page.evaluate(async ({ url, fp }) => {
    const kh = window.keyhaven;
    const out = {};
    try {
      await kh.KeyStore.open({ indexedDB: null });
    } catch (e) {
      out.noStorage = e.name;
    }
    const store = await kh.KeyStore.open();
    try {
      await store.generate("me");
    } catch (e) {
      out.taken = e.name;
    }
    try {
      await store.generate(" bad label");
    } catch (e) {
      out.badLabel = e.name;
    }
    const stranger = await store.generate("stranger");
    const client = await kh.KeyhavenClient.connect(url, stranger, { serverFingerprint: fp });
    try {
      await client.whoami();
    } catch (e) {
      out.stranger = { name: e.name, status: e.status, type: e.type, detail: e.detail };
    }
    try {
      await kh.KeyhavenClient.connect(url, stranger, { serverFingerprint: "00".repeat(32) });
    } catch (e) {
      out.wrongPin = e.name;
    }
    // An answer replaced on the way (another body under the real signature headers):
    // refused, not believed; so is a garbled server key document.
    const tamper = async (input, init) => {
      const r = await fetch(input, init);
      if (!String(input).includes("/whoami")) return r;
      await r.arrayBuffer();
      const forged = new TextEncoder().encode('{"client_id":"someone-else","role":"admin"}');
      return new Response(forged, { status: 200, headers: r.headers });
    };
    const forging = await kh.KeyhavenClient.connect(url, stranger, { serverFingerprint: fp, fetch: tamper });
    try {
      await forging.whoami();
    } catch (e) {
      out.forged = { name: e.name, message: e.message };
    }
    const garble = async (input, init) => {
      const r = await fetch(input, init);
      const body = new Uint8Array(await r.arrayBuffer());
      body[0] ^= 0x01;
      return new Response(body, { status: r.status, headers: r.headers });
    };
    try {
      await kh.KeyhavenClient.connect(url, stranger, { serverFingerprint: fp, fetch: garble });
    } catch (e) {
      out.garbled = e.name;
    }
    // Requests only ever go to the pinned server: another host, port or a relative trick is
    // refused before anything is signed or sent.
    out.offServer = [];
    const port = new URL(url).port;
    for (const target of [
      `http://127.0.0.1.evil.example:${port}/v1/whoami`,
      `http://127.0.0.1:${Number(port) + 1}/v1/whoami`,
      ".evil.example/v1/whoami",
      "https://example.com/v1/whoami",
    ]) {
      try {
        await client.fetch(target);
        out.offServer.push(`sent: ${target}`);
      } catch (e) {
        out.offServer.push(e.name);
      }
    }
    try {
      await kh.KeyhavenClient.connect(url, stranger);
    } catch (e) {
      out.unpinned = e.name;
    }
    const tofu = await kh.KeyhavenClient.connect(url, stranger, { trustOnFirstUse: true });
    out.tofu = tofu.serverFingerprint === fp;
    // A changed backup that still decrypts to some key is caught by the fingerprint it had.
    const backup = await store.exportBackup("me");
    const other = await store.generate("spare", { backupPassword: "another password" });
    try {
      await store.importBackup("me-again", backup, "a backup password", {
        expectedFingerprint: other.fingerprint,
      });
    } catch (e) {
      out.swapped = e.name;
    }
    // A key revoked by itself is refused from then on, with the server's reason.
    const me = await kh.KeyhavenClient.connect(url, await store.get("me"), { serverFingerprint: fp });
    await me.fetch("/v1/clients/me/revoke", { method: "POST", body: { reason: "laptop lost" } });
    try {
      await me.whoami();
    } catch (e) {
      out.revoked = { name: e.name, status: e.status, detail: e.detail };
    }
    return out;
  }, ctx());
  assert.equal(r.noStorage, "KeyStoreUnavailableError");
  assert.equal(r.taken, "KeyExistsError");
  assert.equal(r.badLabel, "InvalidInputError");
  assert.equal(r.stranger.name, "ProblemError");
  assert.equal(r.stranger.status, 401);
  assert.match(r.stranger.type, /unknown-key/);
  assert.equal(r.wrongPin, "UnauthenticResponseError");
  assert.equal(r.forged.name, "UnauthenticResponseError");
  assert.match(r.forged.message, /digest|signature/);
  assert.equal(r.garbled, "UnauthenticResponseError");
  assert.deepEqual(r.offServer, ["InvalidInputError", "InvalidInputError", "InvalidInputError", "InvalidInputError"]);
  assert.equal(r.unpinned, "InvalidInputError");
  assert.equal(r.tofu, true);
  assert.equal(r.swapped, "BadPasswordError");
  assert.equal(r.revoked.name, "ProblemError");
  assert.equal(r.revoked.status, 401);
  assert.match(r.revoked.detail, /revoked/);
});

test("the example page registers this browser and asks who it is", async () => {
  const example = await browser.newPage();
  await example.goto(`${site.origin}/examples/register.html`);
  await example.$eval("#server", (e, v) => (e.value = v), server.url);
  await example.$eval("#fingerprint", (e, v) => (e.value = v), server.fingerprint);
  await example.$eval("#name", (e) => (e.value = "example page"));
  await example.click("#register");
  await example.waitForFunction(() => document.getElementById("out").textContent.length > 0);
  const registered = await example.$eval("#out", (e) => e.textContent);
  assert.match(registered, /example page/);
  await example.$eval("#out", (e) => (e.textContent = ""));
  await example.click("#whoami");
  await example.waitForFunction(() => document.getElementById("out").textContent.length > 0);
  const who = await example.$eval("#out", (e) => e.textContent);
  assert.doesNotMatch(who, /Error/);
  // A wrong fingerprint: the page shows the SDK's error, nothing is sent signed.
  await example.$eval("#fingerprint", (e) => (e.value = "ab".repeat(32)));
  await example.$eval("#out", (e) => (e.textContent = ""));
  await example.click("#whoami");
  await example.waitForFunction(() => document.getElementById("out").textContent.length > 0);
  assert.match(await example.$eval("#out", (e) => e.textContent), /UnauthenticResponseError/);
  await example.close();
});
