// Key generation and signed-fetch latency in headless Chromium, against a live keyhaven serve
// on loopback, each beside its baseline in the same run: a never-extractable key against a
// backup-able one (whose PBKDF2 of 600 000 iterations dominates), and a signed, verified
// `client.fetch` against a plain `fetch` of the same server's /healthz. Bounded: a fixed
// number of iterations, one page. Run with `cargo xtask bench-js`.

import puppeteer from "puppeteer-core";

import { serve, staticServer, tempDir } from "../test/helpers.mjs";

const dir = tempDir("kh-js-bench-");
const site = await staticServer();
const server = await serve(dir, [site.origin]);
const browser = await puppeteer.launch({
  executablePath: process.env.KEYHAVEN_CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${site.origin}/`);
  await page.waitForFunction("window.ready === true");
  const r = await page.evaluate(
    async ({ url, fp }) => {
      const { KeyStore, KeyhavenClient } = window.keyhaven;
      const store = await KeyStore.open({ name: "bench" });
      const time = async (n, f) => {
        const t = [];
        for (let i = 0; i < n; i++) {
          const s = performance.now();
          await f(i);
          t.push(performance.now() - s);
        }
        t.sort((a, b) => a - b);
        return { p50: t[Math.floor(n / 2)], p95: t[Math.floor(n * 0.95)], n };
      };
      const plain = await time(40, (i) => store.generate(`plain-${i}`));
      const backupable = await time(5, (i) =>
        store.generate(`backup-${i}`, { backupPassword: "a bench password" }),
      );
      const key = await store.get("plain-0");
      const client = await KeyhavenClient.connect(url, key, { serverFingerprint: fp });
      await client.register("bench");
      const baseline = await time(100, () => fetch(`${url}/healthz`).then((r) => r.arrayBuffer()));
      const signed = await time(100, () => client.whoami());
      return { plain, backupable, baseline, signed };
    },
    { url: server.url, fp: server.fingerprint },
  );
  const row = (name, s) =>
    console.log(`${name.padEnd(34)} p50 ${s.p50.toFixed(2).padStart(8)} ms  p95 ${s.p95.toFixed(2).padStart(8)} ms  (n=${s.n})`);
  row("generate, never-extractable", r.plain);
  row("generate, backup-able (PBKDF2)", r.backupable);
  row("plain fetch /healthz (baseline)", r.baseline);
  row("signed fetch /v1/whoami, verified", r.signed);
  console.log(`signed fetch / plain fetch: ${(r.signed.p50 / r.baseline.p50).toFixed(2)}x (p50)`);
} finally {
  await browser.close();
  server.stop();
  site.close();
}
