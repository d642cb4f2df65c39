/**
 * keyhaven in the browser. Ed25519 keys kept as non-extractable WebCrypto keys in IndexedDB,
 * encrypted PKCS#8 backups that `keyhaven key import` and `openssl pkey` read, registration
 * with keyhaven-server and `fetch` with RFC 9421 signatures whose answers are verified.
 *
 * ```ts
 * import { KeyStore, KeyhavenClient } from "@keyhaven/browser";
 * const store = await KeyStore.open();
 * const key = await store.generate("me");
 * const client = await KeyhavenClient.connect("https://keys.example.com", key, {
 *   serverFingerprint: "3b1f…",
 * });
 * await client.register("alice's laptop");
 * const me = await client.whoami();
 * ```
 */

export * from "./errors.js";
export { KeyStore, StoredKey, type GenerateOptions } from "./store.js";
export { KeyhavenClient, type ConnectOptions, type VerifiedResponse } from "./client.js";
export {
  contentDigest,
  dictionaryMember,
  importServerKey,
  signRequest,
  targetUri,
  verifyResponse,
  type RequestKey,
  type ServerKey,
  type SignedHeaders,
} from "./httpsig.js";
export { decryptPkcs8, encryptPkcs8, fromPem, toPem, DEFAULT_ITERATIONS } from "./pkcs8.js";
