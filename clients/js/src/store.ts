/**
 * Ed25519 keys kept in IndexedDB as non-extractable WebCrypto `CryptoKey`s: page scripts can
 * sign with them but never read them, not even this SDK.
 *
 * Two modes, chosen when a key is made:
 * - **never-extractable** (the default): the key is generated non-extractable; no backup of it
 *   can ever exist. Losing the browser's storage loses the key.
 * - **backup-able** (`backupPassword`): the key is generated extractable, and at that one
 *   moment its PKCS#8 is encrypted under the password (PBKDF2-SHA-256, AES-256-CBC: what
 *   `openssl pkey` and `keyhaven key import` read), then imported again as non-extractable
 *   and the clear bytes are overwritten. Only the non-extractable key and the encrypted
 *   backup are kept. Anything that ran in the page during that moment could have read the
 *   key: make backup-able keys on a page you trust, before loading anything else.
 */

import {
  BadPasswordError,
  InvalidInputError,
  KeyExistsError,
  KeyNotFoundError,
  KeyStoreUnavailableError,
  NotBackupableError,
} from "./errors.js";
import { hex, sha256 } from "./httpsig.js";
import { bs, decryptPkcs8, ed25519Spki, encryptPkcs8, fromBase64, toPem } from "./pkcs8.js";

const STORE = "keys";
const LABEL_RE = /^[\p{L}\p{N}._@+-][\p{L}\p{N}._@+ -]{0,127}$/u;

/** What IndexedDB keeps for a key. */
interface KeyRecord {
  label: string;
  algorithm: "ed25519";
  privateKey: CryptoKey;
  spki: Uint8Array;
  fingerprint: string;
  createdAt: number;
  /** The encrypted PKCS#8 PEM made when the key was (backup-able keys only). */
  backup?: string;
}

/** A key of the store: its public half and a non-extractable private half. */
export class StoredKey {
  readonly label: string;
  readonly algorithm = "ed25519" as const;
  /** The non-extractable private key. */
  readonly privateKey: CryptoKey;
  /** The public key as SPKI DER. */
  readonly spki: Uint8Array;
  /** Lowercase hex SHA-256 of the SPKI DER (keyhaven's fingerprint, the RFC 9421 keyid). */
  readonly fingerprint: string;
  readonly createdAt: number;
  /** Whether an encrypted backup of this key exists. */
  readonly backupable: boolean;

  /** @internal */
  constructor(r: KeyRecord) {
    this.label = r.label;
    this.privateKey = r.privateKey;
    this.spki = r.spki;
    this.fingerprint = r.fingerprint;
    this.createdAt = r.createdAt;
    this.backupable = r.backup !== undefined;
  }

  /** The public key as a PEM `PUBLIC KEY`, as `openssl` and keyhaven read it. */
  get publicKeyPem(): string {
    return toPem("PUBLIC KEY", this.spki);
  }

  /** Signs `data` (Ed25519: 64 bytes). */
  async sign(data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await globalThis.crypto.subtle.sign({ name: "Ed25519" }, this.privateKey, bs(data)));
  }
}

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
  });
}

async function fingerprintOf(spki: Uint8Array): Promise<string> {
  return hex(await sha256(spki));
}

/** Options of a new key. */
export interface GenerateOptions {
  /** Make the key backup-able: its encrypted PKCS#8 is made now, under this password. */
  backupPassword?: string;
}

/** The keys of one origin, in IndexedDB. */
export class KeyStore {
  private constructor(private readonly db: IDBDatabase) {}

  /**
   * Opens (or makes) the store `name` in this origin's IndexedDB. Throws
   * `KeyStoreUnavailableError` where IndexedDB cannot be used (private windows of some
   * browsers, storage disabled): nothing is kept anywhere else instead.
   */
  static async open(options: { name?: string; indexedDB?: IDBFactory | null } = {}): Promise<KeyStore> {
    const factory = "indexedDB" in options ? options.indexedDB : globalThis.indexedDB;
    if (!factory) {
      throw new KeyStoreUnavailableError(
        "IndexedDB is not available here (a private window, or storage disabled): keys " +
          "cannot be kept; use a normal window or allow site storage",
      );
    }
    try {
      const open = factory.open(options.name ?? "keyhaven", 1);
      open.onupgradeneeded = () => {
        if (!open.result.objectStoreNames.contains(STORE)) {
          open.result.createObjectStore(STORE, { keyPath: "label" });
        }
      };
      return new KeyStore(await request(open));
    } catch (e) {
      throw new KeyStoreUnavailableError(`IndexedDB cannot be opened: ${String(e)}`, { cause: e });
    }
  }

  /** Stores a new key (refusing a taken label) and returns it. */
  private async keep(
    label: string,
    privateKey: CryptoKey,
    spki: Uint8Array,
    backup: string | undefined,
  ): Promise<StoredKey> {
    const record: KeyRecord = {
      label,
      algorithm: "ed25519",
      privateKey,
      spki,
      fingerprint: await fingerprintOf(spki),
      createdAt: Math.floor(Date.now() / 1000),
      backup,
    };
    await this.put(record);
    return new StoredKey(record);
  }

  private async put(record: KeyRecord): Promise<void> {
    const tx = this.db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    if ((await request(store.getKey(record.label))) !== undefined) {
      tx.abort();
      throw new KeyExistsError(`a key labelled ${record.label} exists already`);
    }
    store.add(record);
    try {
      await done(tx);
    } catch (e) {
      // Another tab took the label between the check and the write.
      if (e instanceof DOMException && e.name === "ConstraintError") {
        throw new KeyExistsError(`a key labelled ${record.label} exists already`, { cause: e });
      }
      throw e;
    }
  }

  private static checkLabel(label: string): void {
    if (!LABEL_RE.test(label)) {
      throw new InvalidInputError(
        `label ${JSON.stringify(label)}: 1 to 128 letters, digits, spaces and ._@+-, not starting with a space`,
      );
    }
  }

  /** Makes an Ed25519 key labelled `label` (see the module's note on the two modes). */
  async generate(label: string, options: GenerateOptions = {}): Promise<StoredKey> {
    KeyStore.checkLabel(label);
    if ((await this.find(label)) !== undefined) {
      throw new KeyExistsError(`a key labelled ${label} exists already`);
    }
    const subtle = globalThis.crypto.subtle;
    const backupable = options.backupPassword !== undefined;
    const pair = (await subtle.generateKey({ name: "Ed25519" }, backupable, [
      "sign",
      "verify",
    ])) as CryptoKeyPair;
    const spki = new Uint8Array(await subtle.exportKey("spki", pair.publicKey));
    let privateKey = pair.privateKey;
    let backup: string | undefined;
    if (backupable) {
      const pkcs8 = new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey));
      try {
        backup = await encryptPkcs8(pkcs8, options.backupPassword!);
        privateKey = await subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
      } finally {
        pkcs8.fill(0);
      }
    }
    return this.keep(label, privateKey, spki, backup);
  }

  /**
   * Imports an `ENCRYPTED PRIVATE KEY` PEM (PBES2 with PBKDF2-SHA-256: this SDK's backups,
   * `keyhaven key export --pbkdf2`, `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`)
   * as a non-extractable key labelled `label`. The PEM is kept as the key's backup.
   */
  async importBackup(
    label: string,
    pem: string,
    password: string,
    options: { expectedFingerprint?: string } = {},
  ): Promise<StoredKey> {
    KeyStore.checkLabel(label);
    if ((await this.find(label)) !== undefined) {
      throw new KeyExistsError(`a key labelled ${label} exists already`);
    }
    const subtle = globalThis.crypto.subtle;
    const pkcs8 = await decryptPkcs8(pem, password);
    let spki: Uint8Array;
    let privateKey: CryptoKey;
    try {
      let extractable: CryptoKey;
      try {
        extractable = await subtle.importKey("pkcs8", bs(pkcs8), { name: "Ed25519" }, true, ["sign"]);
      } catch (e) {
        throw new InvalidInputError("the backup holds no Ed25519 key (only Ed25519 keys are kept here)", {
          cause: e,
        });
      }
      // The public half, from the private key's JWK (`x`): PKCS#8 need not carry it.
      const jwk = await subtle.exportKey("jwk", extractable);
      const x = jwk.x!.replace(/-/g, "+").replace(/_/g, "/");
      spki = ed25519Spki(fromBase64(x + "=".repeat((4 - (x.length % 4)) % 4)));
      // AES-CBC has no integrity: a changed backup can decrypt to another valid key. With the
      // fingerprint the key had (what registration and the CLI show), that is caught here.
      const fingerprint = await fingerprintOf(spki);
      if (options.expectedFingerprint && options.expectedFingerprint.toLowerCase() !== fingerprint) {
        throw new BadPasswordError(
          `the backup holds key ${fingerprint}, not ${options.expectedFingerprint}: it was changed`,
        );
      }
      privateKey = await subtle.importKey("pkcs8", bs(pkcs8), { name: "Ed25519" }, false, ["sign"]);
    } finally {
      pkcs8.fill(0);
    }
    return this.keep(label, privateKey, spki, pem);
  }

  private async find(label: string): Promise<KeyRecord | undefined> {
    const tx = this.db.transaction(STORE, "readonly");
    return (await request(tx.objectStore(STORE).get(label))) as KeyRecord | undefined;
  }

  /** The key labelled `label`. */
  async get(label: string): Promise<StoredKey> {
    const r = await this.find(label);
    if (!r) throw new KeyNotFoundError(`no key labelled ${label}`);
    return new StoredKey(r);
  }

  /** Every key, by label. */
  async list(): Promise<StoredKey[]> {
    const tx = this.db.transaction(STORE, "readonly");
    const all = (await request(tx.objectStore(STORE).getAll())) as KeyRecord[];
    return all.map((r) => new StoredKey(r));
  }

  /** The encrypted PKCS#8 PEM of a backup-able key (under the password it was made with). */
  async exportBackup(label: string): Promise<string> {
    const r = await this.find(label);
    if (!r) throw new KeyNotFoundError(`no key labelled ${label}`);
    if (r.backup === undefined) {
      throw new NotBackupableError(
        `key ${label} was made never-extractable: no backup of it exists, by design`,
      );
    }
    return r.backup;
  }

  /** Deletes the key labelled `label` (its backup, if exported, still holds it). */
  async delete(label: string): Promise<void> {
    if ((await this.find(label)) === undefined) throw new KeyNotFoundError(`no key labelled ${label}`);
    const tx = this.db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).delete(label);
    await done(tx);
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
