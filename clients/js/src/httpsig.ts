/**
 * RFC 9421 HTTP message signatures as keyhaven-server makes and checks them (label
 * `keyhaven`), with RFC 9530 `Content-Digest` (SHA-256):
 *
 * - a request covers `@method`, `@target-uri`, `authorization` when sent and
 *   `content-digest` when there is a body, with `created`, `expires`, a fresh `nonce` and the
 *   key's fingerprint as `keyid`;
 * - the server's answer covers `@status`, its `content-digest`, and the request's `@method`,
 *   `@target-uri`, `signature-input` and `signature` (`;req`): it is bound to the request it
 *   answers, so an answer cannot be replayed onto another request.
 */

import { InvalidInputError, UnauthenticResponseError } from "./errors.js";
import { bs, fromBase64, toBase64 } from "./pkcs8.js";

export const LABEL = "keyhaven";
/** How long a request signature is valid (its `expires`), as keyhaven's own client. */
export const SIGNATURE_LIFETIME = 60;
/** How far a response's `created` may be from this clock, either way (seconds). */
export const RESPONSE_SKEW = 300;

const subtle = () => globalThis.crypto.subtle;
const text = new TextEncoder();

export async function sha256(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().digest("SHA-256", bs(data)));
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** RFC 9530 `Content-Digest` of `body` (SHA-256). */
export async function contentDigest(body: Uint8Array): Promise<string> {
  return `sha-256=:${toBase64(await sha256(body))}:`;
}

/** The `@target-uri` of `url`: scheme, authority, path and query, as the server rebuilds it. */
export function targetUri(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}${u.pathname}${u.search}`;
}

function base64url(bytes: Uint8Array): string {
  return toBase64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** What signs: a private key and the public key whose fingerprint is the `keyid`. */
export interface RequestKey {
  privateKey: CryptoKey;
  /** Lowercase hex SHA-256 of the public key's SPKI DER. */
  fingerprint: string;
}

/** The headers that sign one request, and what the answer must be bound to. */
export interface SignedHeaders {
  headers: Record<string, string>;
  method: string;
  target: string;
}

/**
 * Signs a request: returns the headers to add (`Content-Digest` when there is a body,
 * `Signature-Input`, `Signature`).
 */
export async function signRequest(
  key: RequestKey,
  method: string,
  url: string,
  body: Uint8Array | undefined,
  options: { authorization?: string; now?: number } = {},
): Promise<SignedHeaders> {
  const m = method.toUpperCase();
  const target = targetUri(url);
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const headers: Record<string, string> = {};
  const lines: string[] = [`"@method": ${m}`, `"@target-uri": ${target}`];
  const covered = ['"@method"', '"@target-uri"'];
  if (options.authorization !== undefined) {
    lines.push(`"authorization": ${options.authorization.trim()}`);
    covered.push('"authorization"');
  }
  if (body && body.length > 0) {
    const digest = await contentDigest(body);
    headers["Content-Digest"] = digest;
    lines.push(`"content-digest": ${digest}`);
    covered.push('"content-digest"');
  }
  const nonce = base64url(globalThis.crypto.getRandomValues(new Uint8Array(16)));
  const params =
    `(${covered.join(" ")});created=${now};expires=${now + SIGNATURE_LIFETIME}` +
    `;nonce="${nonce}";keyid="${key.fingerprint}"`;
  lines.push(`"@signature-params": ${params}`);
  const signature = new Uint8Array(
    await subtle().sign({ name: "Ed25519" }, key.privateKey, text.encode(lines.join("\n"))),
  );
  headers["Signature-Input"] = `${LABEL}=${params}`;
  headers["Signature"] = `${LABEL}=:${toBase64(signature)}:`;
  return { headers, method: m, target };
}

/** A server key to check answers with. */
export interface ServerKey {
  key: CryptoKey;
  algorithm: "ed25519" | "p256" | "p384";
  fingerprint: string;
}

/** Imports a server key from its SPKI DER (what `GET /v1/server` gives, base64). */
export async function importServerKey(spki: Uint8Array, algorithm: string): Promise<ServerKey> {
  const fingerprint = hex(await sha256(spki));
  const params: Record<string, AlgorithmIdentifier | EcKeyImportParams> = {
    ed25519: { name: "Ed25519" },
    p256: { name: "ECDSA", namedCurve: "P-256" } as EcKeyImportParams,
    p384: { name: "ECDSA", namedCurve: "P-384" } as EcKeyImportParams,
  };
  const p = params[algorithm];
  if (!p) throw new InvalidInputError(`server key algorithm ${algorithm} is not supported`);
  const key = await subtle().importKey("spki", bs(spki), p, false, ["verify"]);
  return { key, algorithm: algorithm as ServerKey["algorithm"], fingerprint };
}

/** The member `label` of a structured-field dictionary, as its raw text (inner list and
 * parameters, or an item), scanning past quoted strings and parentheses. */
export function dictionaryMember(field: string, label: string): string | undefined {
  let depth = 0;
  let quoted = false;
  let start = 0;
  const members: string[] = [];
  for (let i = 0; i < field.length; i++) {
    const c = field[i];
    if (quoted) {
      if (c === "\\") i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (c === "," && depth === 0) {
      members.push(field.slice(start, i));
      start = i + 1;
    }
  }
  members.push(field.slice(start));
  // RFC 8941: a key given twice takes its last value.
  let found: string | undefined;
  for (const m of members) {
    const t = m.trim();
    const eq = t.indexOf("=");
    if (eq > 0 && t.slice(0, eq) === label) found = t.slice(eq + 1);
  }
  return found;
}

/** The component identifiers of an inner list `("a" "b";req ...)`, as written. */
function components(params: string): { list: string[]; rest: string } {
  if (!params.startsWith("(")) throw new UnauthenticResponseError("Signature-Input is not an inner list");
  const close = params.indexOf(")");
  if (close < 0) throw new UnauthenticResponseError("Signature-Input: unterminated inner list");
  const list = params
    .slice(1, close)
    .trim()
    .split(/\s+/)
    .filter((s) => s.length > 0);
  for (const c of list) {
    if (!/^"[a-z0-9@\-_.]+"(;req)?$/.test(c)) {
      throw new UnauthenticResponseError(`Signature-Input: unsupported component ${c}`);
    }
  }
  return { list, rest: params.slice(close + 1) };
}

function param(rest: string, name: string): string | undefined {
  const m = new RegExp(`;${name}=("([^"\\\\]*)"|([0-9]+))`).exec(rest);
  return m ? (m[2] ?? m[3]) : undefined;
}

/** Raw r || s from an ECDSA signature (keyhaven's server sends raw, per RFC 9421). */
function verifyParams(k: ServerKey): AlgorithmIdentifier | EcdsaParams {
  switch (k.algorithm) {
    case "ed25519":
      return { name: "Ed25519" };
    case "p256":
      return { name: "ECDSA", hash: "SHA-256" } as EcdsaParams;
    case "p384":
      return { name: "ECDSA", hash: "SHA-384" } as EcdsaParams;
  }
}

/**
 * Checks an answer's signature: by `server`'s key, covering its status, its body's digest and
 * the request it answers (`request`). Throws `UnauthenticResponseError` naming what failed.
 */
export async function verifyResponse(
  server: ServerKey,
  status: number,
  headers: { get(name: string): string | null },
  body: Uint8Array,
  request: SignedHeaders,
  now = Math.floor(Date.now() / 1000),
): Promise<void> {
  const fail = (why: string) => new UnauthenticResponseError(`the server's answer ${why}`);
  const input = headers.get("signature-input");
  const sigField = headers.get("signature");
  if (!input || !sigField) throw fail("is not signed (no Signature-Input/Signature exposed)");
  const params = dictionaryMember(input, LABEL);
  const sigItem = dictionaryMember(sigField, LABEL);
  if (!params || !sigItem) throw fail(`has no signature labelled ${LABEL}`);
  const { list, rest } = components(params);
  if (param(rest, "keyid") !== server.fingerprint) throw fail("is signed by another key");
  const created = Number(param(rest, "created"));
  if (!Number.isFinite(created) || Math.abs(created - now) > RESPONSE_SKEW) {
    throw fail("was signed at another time (check this machine's clock)");
  }
  if (!list.includes('"@method";req')) {
    // The server answers some refusals (rate limited, too large, timed out) before it has a
    // request to bind them to: genuine, but replayable, so not believed.
    throw fail(`(status ${status}) is not bound to this request: the server refused it before reading it (rate limit, size, time), or it is a replay`);
  }
  for (const required of ['"@status"', '"content-digest"', '"@target-uri";req']) {
    if (!list.includes(required)) throw fail(`does not cover ${required}`);
  }
  if (request.headers["Signature"] && !list.includes('"signature";req')) {
    throw fail("is not bound to this request's signature");
  }
  const digest = headers.get("content-digest");
  if (!digest || digest !== (await contentDigest(body))) throw fail("body does not match its digest");
  const value = (c: string): string => {
    switch (c) {
      case '"@status"':
        return String(status);
      case '"content-digest"':
        return digest;
      case '"@method";req':
        return request.method;
      case '"@target-uri";req':
        return request.target;
      case '"signature-input";req':
        return request.headers["Signature-Input"] ?? "";
      case '"signature";req':
        return request.headers["Signature"] ?? "";
      case '"content-digest";req':
        if (request.headers["Content-Digest"] === undefined) throw fail("covers a request digest the request did not have");
        return request.headers["Content-Digest"];
      default:
        throw fail(`covers ${c}, which this SDK does not check`);
    }
  };
  const base = [...list.map((c) => `${c}: ${value(c)}`), `"@signature-params": ${params}`].join("\n");
  const m = /^:([A-Za-z0-9+/=]+):$/.exec(sigItem.split(";")[0]!.trim());
  if (!m) throw fail("signature is not a byte sequence");
  const ok = await subtle().verify(verifyParams(server), server.key, bs(fromBase64(m[1]!)), text.encode(base));
  if (!ok) throw fail("signature does not verify with the pinned server key");
}
