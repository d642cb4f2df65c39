/**
 * Encrypted PKCS#8 (RFC 5958 `EncryptedPrivateKeyInfo`, PBES2 of RFC 8018): PBKDF2 with
 * HMAC-SHA-256 and AES-256-CBC, the one scheme WebCrypto can do and `openssl pkey`,
 * `keyhaven key import` and `keyhaven key export --pbkdf2` share. Why this format and not a
 * keyhaven backup file: a backup file's key derivation is Argon2id, which WebCrypto does not
 * have; encrypted PKCS#8 is read by every toolkit, keyhaven included.
 */

import {
  OCTET_STRING,
  concat,
  integer,
  isOid,
  nullValue,
  octets,
  oid,
  readInteger,
  readSequence,
  readTlv,
  sequence,
} from "./der.js";
import { BadPasswordError, InvalidInputError } from "./errors.js";

const PBES2 = "1.2.840.113549.1.5.13";
const PBKDF2 = "1.2.840.113549.1.5.12";
const HMAC_SHA256 = "1.2.840.113549.2.9";
const AES256_CBC = "2.16.840.1.101.3.4.1.42";

/** PBKDF2-SHA-256 iterations of a new backup (OWASP's 2023 figure, as keyhaven's). */
export const DEFAULT_ITERATIONS = 600_000;
/** The most iterations a backup may ask for (a forged file cannot make a page spin). */
export const MAX_ITERATIONS = 10_000_000;

const subtle = () => globalThis.crypto.subtle;

/** `u` as WebCrypto's `BufferSource` (TypeScript types views of shared buffers apart). */
export function bs(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u as Uint8Array<ArrayBuffer>;
}

async function aesKey(password: string, salt: Uint8Array, iterations: number, usage: KeyUsage) {
  const base = await subtle().importKey(
    "raw",
    new TextEncoder().encode(password),
    "PBKDF2",
    false,
    ["deriveKey"],
  );
  return subtle().deriveKey(
    { name: "PBKDF2", hash: "SHA-256", salt: bs(salt), iterations },
    base,
    { name: "AES-CBC", length: 256 },
    false,
    [usage],
  );
}

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function fromBase64(text: string): Uint8Array {
  let raw: string;
  try {
    raw = atob(text);
  } catch (e) {
    throw new InvalidInputError("not base64", { cause: e });
  }
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** DER as PEM with `label`, 64-character lines. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = toBase64(der).replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** The DER inside a PEM block labelled `label`. */
export function fromPem(text: string, label: string): Uint8Array {
  const m = new RegExp(
    `-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`,
  ).exec(text);
  if (!m) throw new InvalidInputError(`not a PEM "${label}" block`);
  return fromBase64(m[1]!.replace(/\s+/g, ""));
}

/**
 * Encrypts PKCS#8 DER under `password` as an `ENCRYPTED PRIVATE KEY` PEM.
 */
export async function encryptPkcs8(
  pkcs8: Uint8Array,
  password: string,
  iterations = DEFAULT_ITERATIONS,
): Promise<string> {
  if (password.length < 8) throw new InvalidInputError("a backup password has at least 8 characters");
  const salt = globalThis.crypto.getRandomValues(new Uint8Array(16));
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(16));
  const key = await aesKey(password, salt, iterations, "encrypt");
  const ciphertext = new Uint8Array(await subtle().encrypt({ name: "AES-CBC", iv }, key, bs(pkcs8)));
  const algorithm = sequence(
    oid(PBES2),
    sequence(
      sequence(
        oid(PBKDF2),
        sequence(octets(salt), integer(iterations), sequence(oid(HMAC_SHA256), nullValue())),
      ),
      sequence(oid(AES256_CBC), octets(iv)),
    ),
  );
  return toPem("ENCRYPTED PRIVATE KEY", sequence(algorithm, octets(ciphertext)));
}

/**
 * Decrypts an `ENCRYPTED PRIVATE KEY` PEM (PBES2, PBKDF2-HMAC-SHA-256, AES-256-CBC) into
 * PKCS#8 DER. A scrypt-encrypted key (keyhaven's default export) is refused naming the fix.
 */
export async function decryptPkcs8(pem: string, password: string): Promise<Uint8Array> {
  const der = fromPem(pem, "ENCRYPTED PRIVATE KEY");
  const outer = readTlv(der);
  if (outer.end !== der.length) throw new InvalidInputError("trailing bytes after the key");
  const [algorithm, data] = readSequence(outer);
  if (!algorithm || !data || data.tag !== OCTET_STRING) {
    throw new InvalidInputError("not an EncryptedPrivateKeyInfo");
  }
  const [scheme, params] = readSequence(algorithm);
  if (!scheme || !params || !isOid(scheme, PBES2)) {
    throw new InvalidInputError("only PBES2-encrypted keys are read");
  }
  const [kdf, cipher] = readSequence(params);
  if (!kdf || !cipher) throw new InvalidInputError("malformed PBES2 parameters");
  const [kdfOid, kdfParams] = readSequence(kdf);
  if (!kdfOid || !kdfParams || !isOid(kdfOid, PBKDF2)) {
    throw new InvalidInputError(
      "the key is encrypted with scrypt, which browsers cannot do: export it with " +
        "`keyhaven key export --pbkdf2`",
    );
  }
  const [salt, count, ...rest] = readSequence(kdfParams);
  if (!salt || salt.tag !== OCTET_STRING || !count) {
    throw new InvalidInputError("malformed PBKDF2 parameters");
  }
  const iterations = readInteger(count);
  if (iterations < 1000 || iterations > MAX_ITERATIONS) {
    throw new InvalidInputError(`PBKDF2 iterations ${iterations} are outside 1000..${MAX_ITERATIONS}`);
  }
  // keyLength (optional INTEGER), then the PRF, which must be HMAC-SHA-256.
  const prf = rest.find((t) => t.tag === 0x30);
  const prfOid = prf ? readSequence(prf)[0] : undefined;
  if (!prfOid || !isOid(prfOid, HMAC_SHA256)) {
    throw new InvalidInputError("only PBKDF2 with HMAC-SHA-256 is read");
  }
  const [cipherOid, iv] = readSequence(cipher);
  if (!cipherOid || !iv || !isOid(cipherOid, AES256_CBC) || iv.tag !== OCTET_STRING || iv.content.length !== 16) {
    throw new InvalidInputError("only AES-256-CBC is read");
  }
  const key = await aesKey(password, salt.content, iterations, "decrypt");
  let plain: Uint8Array;
  try {
    plain = new Uint8Array(
      await subtle().decrypt({ name: "AES-CBC", iv: bs(iv.content) }, key, bs(data.content)),
    );
  } catch (e) {
    throw new BadPasswordError("cannot decrypt the key: wrong password, or the backup was changed", {
      cause: e,
    });
  }
  // A wrong password that happens to leave valid padding still yields no PKCS#8 structure.
  try {
    const inner = readTlv(plain);
    if (inner.end !== plain.length) throw new Error("trailing bytes");
    readSequence(inner);
  } catch (e) {
    plain.fill(0);
    throw new BadPasswordError("cannot decrypt the key: wrong password, or the backup was changed", {
      cause: e,
    });
  }
  return plain;
}

/** An Ed25519 public key's SPKI DER from its 32 raw bytes. */
export function ed25519Spki(raw: Uint8Array): Uint8Array {
  if (raw.length !== 32) throw new InvalidInputError("an Ed25519 public key is 32 bytes");
  return concat(new Uint8Array([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]), raw);
}
