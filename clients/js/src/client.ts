/**
 * A client of keyhaven-server for pages: registration with proof of possession, and `fetch`
 * with every request signed by a stored key and every answer checked against the pinned
 * server key. The server must list the page's origin (`keyhaven serve --cors-origin ORIGIN`).
 */

import { InvalidInputError, ProblemError, UnauthenticResponseError, type Problem } from "./errors.js";
import { type ServerKey, importServerKey, signRequest, targetUri, verifyResponse } from "./httpsig.js";
import { fromBase64, toBase64 } from "./pkcs8.js";
import type { StoredKey } from "./store.js";

/** A verified answer. */
export interface VerifiedResponse {
  status: number;
  headers: Headers;
  body: Uint8Array;
  /** The body as JSON. */
  json<T = unknown>(): T;
  /** The body as text. */
  text(): string;
}

/** Options of `KeyhavenClient.connect`. */
export interface ConnectOptions {
  /**
   * The server key's fingerprint (lowercase hex SHA-256 of its SPKI), as `keyhaven serve`
   * prints it. Required unless `trustOnFirstUse`.
   */
  serverFingerprint?: string;
  /**
   * Trust the key the server presents now (its fingerprint is then `client.serverFingerprint`:
   * store it and pass it as `serverFingerprint` from then on). Anyone between the page and
   * the server at that moment can present their own key.
   */
  trustOnFirstUse?: boolean;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
}

/** The largest answer read (as keyhaven's Rust client). */
export const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

export class KeyhavenClient {
  private constructor(
    readonly baseUrl: string,
    readonly key: StoredKey,
    private readonly server: ServerKey,
    private readonly doFetch: typeof fetch,
  ) {}

  /** The fingerprint of the server key answers are checked against. */
  get serverFingerprint(): string {
    return this.server.fingerprint;
  }

  /**
   * Connects to the server at `baseUrl`: reads its key (`GET /v1/server`) and checks it
   * against `serverFingerprint`, then checks that answer's own signature with it.
   */
  static async connect(baseUrl: string, key: StoredKey, options: ConnectOptions = {}): Promise<KeyhavenClient> {
    const base = baseUrl.replace(/\/+$/, "");
    if (!options.serverFingerprint && !options.trustOnFirstUse) {
      throw new InvalidInputError(
        "pin the server key: pass serverFingerprint (as `keyhaven serve` printed it), or " +
          "trustOnFirstUse: true and keep client.serverFingerprint",
      );
    }
    const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    const url = `${base}/v1/server`;
    const r = await doFetch(url, { method: "GET", redirect: "error" });
    const body = new Uint8Array(await r.arrayBuffer());
    if (!r.ok) throw new UnauthenticResponseError(`GET ${url} answered ${r.status}`);
    let info: { algorithm: string; fingerprint: string; public_key: string };
    try {
      info = JSON.parse(new TextDecoder().decode(body));
    } catch (e) {
      throw new UnauthenticResponseError(`GET ${url}: the answer is not the server's JSON`, { cause: e });
    }
    if (typeof info?.public_key !== "string" || typeof info?.algorithm !== "string") {
      throw new UnauthenticResponseError(`GET ${url}: the answer names no server key`);
    }
    const server = await importServerKey(fromBase64(info.public_key), info.algorithm);
    if (options.serverFingerprint && options.serverFingerprint.toLowerCase() !== server.fingerprint) {
      throw new UnauthenticResponseError(
        `the server presents key ${server.fingerprint}, not the pinned ${options.serverFingerprint}`,
      );
    }
    await verifyResponse(server, r.status, r.headers, body, {
      headers: {},
      method: "GET",
      target: targetUri(url),
    });
    return new KeyhavenClient(base, key, server, doFetch);
  }

  /** `pathOrUrl` as a URL on this server: same origin, under its base path; anything else
   * (another host, port or scheme, a path that is not absolute) is refused before signing. */
  private resolve(pathOrUrl: string): string {
    const base = new URL(`${this.baseUrl}/`);
    let target: URL;
    try {
      target = /^[a-z][a-z0-9+.-]*:/i.test(pathOrUrl) ? new URL(pathOrUrl) : new URL(pathOrUrl, base);
    } catch (e) {
      throw new InvalidInputError(`${pathOrUrl} is not a URL`, { cause: e });
    }
    if (!/^[a-z][a-z0-9+.-]*:/i.test(pathOrUrl) && !pathOrUrl.startsWith("/")) {
      throw new InvalidInputError(`${pathOrUrl}: a path on the server starts with /`);
    }
    const basePath = base.pathname.replace(/\/$/, "");
    if (target.origin !== base.origin || !`${target.pathname}/`.startsWith(`${basePath}/`)) {
      throw new InvalidInputError(`${target.href} is not on ${this.baseUrl}: nothing was sent`);
    }
    if (!pathOrUrl.startsWith("/") || basePath === "") return target.href;
    return new URL(`${basePath}${pathOrUrl}`, base).href;
  }

  /**
   * Sends a request signed with the client's key (RFC 9421) and checks the answer's
   * signature. A refusal throws `ProblemError` with the server's RFC 9457 problem; an answer
   * that is not the server's throws `UnauthenticResponseError`.
   */
  async fetch(
    pathOrUrl: string,
    init: { method?: string; body?: Uint8Array | string | object; authorization?: string } = {},
  ): Promise<VerifiedResponse> {
    const url = this.resolve(pathOrUrl);
    const method = (init.method ?? (init.body === undefined ? "GET" : "POST")).toUpperCase();
    let body: Uint8Array | undefined;
    if (typeof init.body === "string") body = new TextEncoder().encode(init.body);
    else if (init.body instanceof Uint8Array) body = init.body;
    else if (init.body !== undefined) body = new TextEncoder().encode(JSON.stringify(init.body));
    const signed = await signRequest(this.key, method, url, body, { authorization: init.authorization });
    const headers: Record<string, string> = { ...signed.headers };
    if (body) {
      headers["Content-Type"] =
        init.body instanceof Uint8Array ? "application/octet-stream" : "application/json";
    }
    if (init.authorization) headers["Authorization"] = init.authorization;
    // Never followed: a redirect would carry the signature (and a token) to another place.
    const r = await this.doFetch(url, {
      method,
      headers,
      body: body as BodyInit | undefined,
      redirect: "error",
    });
    const answer = new Uint8Array(await r.arrayBuffer());
    if (answer.length > MAX_RESPONSE_BYTES) {
      throw new UnauthenticResponseError(`the answer is larger than ${MAX_RESPONSE_BYTES} bytes`);
    }
    await verifyResponse(this.server, r.status, r.headers, answer, signed);
    const decoded = () => new TextDecoder().decode(answer);
    if (!r.ok) {
      let problem: Problem;
      try {
        problem = JSON.parse(decoded()) as Problem;
      } catch {
        problem = { type: "about:blank", title: r.statusText, status: r.status, detail: decoded() };
      }
      throw new ProblemError(problem);
    }
    return {
      status: r.status,
      headers: r.headers,
      body: answer,
      json: <T>() => JSON.parse(decoded()) as T,
      text: decoded,
    };
  }

  /**
   * Registers the key under `name`: asks for a challenge, then sends it with the public key
   * in a request the key signs (its proof of possession). Returns the server's view.
   */
  async register(name: string): Promise<Record<string, unknown>> {
    const challenge = (await this.fetch("/v1/challenge", { method: "POST" })).json<{ challenge: string }>();
    const registration = {
      challenge: challenge.challenge,
      name,
      algorithm: "ed25519",
      public_key: toBase64(this.key.spki),
    };
    return (await this.fetch("/v1/clients", { method: "POST", body: registration })).json();
  }

  /** What the server makes of this key's signature (`GET /v1/whoami`). */
  async whoami(): Promise<Record<string, unknown>> {
    return (await this.fetch("/v1/whoami")).json();
  }
}
