/**
 * The few DER shapes PKCS#8 encryption needs: SEQUENCE, INTEGER, OCTET STRING, OBJECT
 * IDENTIFIER and NULL, written and read strictly (definite lengths, minimal encodings, no
 * trailing bytes). Untrusted input (a backup file) is read through `readTlv`, which bounds
 * every length by what is left.
 */

import { InvalidInputError } from "./errors.js";

export const SEQUENCE = 0x30;
export const INTEGER = 0x02;
export const OCTET_STRING = 0x04;
export const OID = 0x06;
export const NULL = 0x05;

function lengthBytes(n: number): number[] {
  if (n < 0x80) return [n];
  const out: number[] = [];
  while (n > 0) {
    out.unshift(n & 0xff);
    n = Math.floor(n / 256);
  }
  return [0x80 | out.length, ...out];
}

/** One TLV. */
export function tlv(tag: number, content: Uint8Array): Uint8Array {
  const len = lengthBytes(content.length);
  const out = new Uint8Array(1 + len.length + content.length);
  out[0] = tag;
  out.set(len, 1);
  out.set(content, 1 + len.length);
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function sequence(...items: Uint8Array[]): Uint8Array {
  return tlv(SEQUENCE, concat(...items));
}

export function integer(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidInputError(`bad integer ${n}`);
  const bytes: number[] = [];
  do {
    bytes.unshift(n & 0xff);
    n = Math.floor(n / 256);
  } while (n > 0);
  if (bytes[0]! & 0x80) bytes.unshift(0);
  return tlv(INTEGER, new Uint8Array(bytes));
}

export function octets(b: Uint8Array): Uint8Array {
  return tlv(OCTET_STRING, b);
}

export function nullValue(): Uint8Array {
  return tlv(NULL, new Uint8Array(0));
}

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map(Number);
  const body: number[] = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const chunk: number[] = [arc & 0x7f];
    let v = Math.floor(arc / 128);
    while (v > 0) {
      chunk.unshift((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    body.push(...chunk);
  }
  return tlv(OID, new Uint8Array(body));
}

/** One read TLV: its tag, its content, and where the next one starts. */
export interface Tlv {
  tag: number;
  content: Uint8Array;
  end: number;
}

/** Reads the TLV at `at` of `buf`, refusing indefinite, non-minimal or overlong lengths. */
export function readTlv(buf: Uint8Array, at = 0): Tlv {
  const bad = (why: string) => new InvalidInputError(`malformed DER: ${why}`);
  if (at + 2 > buf.length) throw bad("truncated");
  const tag = buf[at]!;
  let len = buf[at + 1]!;
  let pos = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw bad("unsupported length form");
    if (pos + n > buf.length) throw bad("truncated length");
    if (buf[pos] === 0) throw bad("non-minimal length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[pos + i]!;
    if (len < 0x80) throw bad("non-minimal length");
    pos += n;
  }
  if (pos + len > buf.length) throw bad("length past the end");
  return { tag, content: buf.subarray(pos, pos + len), end: pos + len };
}

/** The TLVs inside a SEQUENCE's content, all of it. */
export function readSequence(t: Tlv): Tlv[] {
  if (t.tag !== SEQUENCE) throw new InvalidInputError("malformed DER: expected a SEQUENCE");
  const items: Tlv[] = [];
  let at = 0;
  while (at < t.content.length) {
    const item = readTlv(t.content, at);
    items.push(item);
    at = item.end;
  }
  return items;
}

/** A non-negative INTEGER that fits a safe JS number. */
export function readInteger(t: Tlv): number {
  if (t.tag !== INTEGER || t.content.length === 0 || t.content.length > 6) {
    throw new InvalidInputError("malformed DER: expected a small INTEGER");
  }
  if (t.content[0]! & 0x80) throw new InvalidInputError("malformed DER: negative INTEGER");
  if (t.content.length > 1 && t.content[0] === 0 && !(t.content[1]! & 0x80)) {
    throw new InvalidInputError("malformed DER: non-minimal INTEGER");
  }
  let n = 0;
  for (const b of t.content) n = n * 256 + b;
  return n;
}

/** Whether `t` is the OBJECT IDENTIFIER `dotted`. */
export function isOid(t: Tlv, dotted: string): boolean {
  const want = oid(dotted);
  const got = tlv(t.tag, t.content);
  return got.length === want.length && got.every((b, i) => b === want[i]);
}
