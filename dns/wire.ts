/**
 * A small, strict DNS message codec for the one thing this server does: read a query (header,
 * one question, optional OPT) and write an answer. dns2's general-purpose Packet codec costs
 * about 10x more per query and is lenient where we must be strict (it accepts labels > 63 and
 * compression loops, and throws on short input), so the hot path does not use it.
 *
 * parseQuery never throws on any input: it returns undefined (drop: not a query we may answer)
 * or a DnsQuery, flagged `malformed` when the header was readable but the rest was not (FORMERR).
 */
import { isIP } from 'node:net';

/** RFC 1035 §3.2.2, RFC 3596, RFC 6891, RFC 1995/5936. */
export const RRType = {
  A: 1,
  NS: 2,
  SOA: 6,
  HINFO: 13,
  AAAA: 28,
  OPT: 41,
  IXFR: 251,
  AXFR: 252,
  ANY: 255,
} as const;

export const CLASS_IN = 1;

/** RFC 1035 §4.1.1 and RFC 6891 §9 (BADVERS is an extended, 12-bit rcode). */
export const Rcode = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16,
} as const;

export const OPCODE_QUERY = 0;

const RCODE_NAMES = new Map<number, string>(Object.entries(Rcode).map(([name, code]) => [code, name]));

/** "NOERROR", "REFUSED", ...; "RCODE<n>" for codes we never send. */
export function rcodeName(rcode: number): string {
  return RCODE_NAMES.get(rcode) ?? `RCODE${rcode}`;
}

/** RFC 1035 §2.3.4. */
export const MAX_LABEL = 63;
export const MAX_NAME_WIRE = 255;
/** RFC 1035 §4.2.1: UDP without EDNS. */
export const UDP_CLASSIC_LIMIT = 512;
/** RFC 1035 §4.2.2: a TCP message carries a 16-bit length. */
export const TCP_LIMIT = 65535;

const HEADER = 12;
const FLAG_QR = 0x8000;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_CD = 0x0010;

export interface Question {
  /** Labels exactly as asked (bytes as latin1), so the answer can echo them (RFC 4343 §4.1). */
  labels: readonly string[];
  type: number;
  class: number;
}

export interface Edns {
  /** Requestor's UDP payload size (RFC 6891 §6.2.3), as sent. */
  udpSize: number;
  version: number;
  /** DNSSEC OK; RFC 3225 §3: copied into the response. */
  do: boolean;
}

export interface DnsQuery {
  id: number;
  opcode: number;
  rd: boolean;
  cd: boolean;
  /** Undefined when malformed. */
  question: Question | undefined;
  edns: Edns | undefined;
  /** Header readable, the rest not (bad counts, truncated, label type, pointer in the question...). */
  malformed: boolean;
}

/** Every record this server emits is owned by the name asked or by the zone apex. */
export type Owner = 'qname' | 'apex';

export type RData =
  | { kind: 'A'; address: string }
  | { kind: 'AAAA'; address: string }
  | { kind: 'NS'; host: string }
  | {
      kind: 'SOA';
      mname: string;
      rname: string;
      serial: number;
      refresh: number;
      retry: number;
      expire: number;
      minimum: number;
    }
  | { kind: 'HINFO'; cpu: string; os: string };

export interface ResourceRecord {
  owner: Owner;
  type: number;
  ttl: number;
  data: RData;
}

export interface DnsResponse {
  id: number;
  opcode: number;
  /** 12-bit: the low 4 bits go in the header, the rest in the OPT record (RFC 6891 §6.1.3). */
  rcode: number;
  aa: boolean;
  rd: boolean;
  cd: boolean;
  question: Question | undefined;
  /** Zone apex labels (lowercase), for owner 'apex'. */
  apex: readonly string[];
  answers: readonly ResourceRecord[];
  authority: readonly ResourceRecord[];
  /** Present: an OPT record goes in the additional section. */
  edns: { udpSize: number; do: boolean } | undefined;
}

// ---------------------------------------------------------------------------------------------
// Decoding

function malformedQuery(id: number, opcode: number, rd: boolean, cd: boolean): DnsQuery {
  return { id, opcode, rd, cd, question: undefined, edns: undefined, malformed: true };
}

/**
 * Undefined = drop silently: shorter than a header, or a response (QR=1, RFC 1035 §4.1.1;
 * answering responses invites reflection loops).
 */
export function parseQuery(buf: Uint8Array): DnsQuery | undefined {
  const len = buf.length;
  if (len < HEADER) return undefined;
  const flags = (buf[2]! << 8) | buf[3]!;
  if (flags & FLAG_QR) return undefined;
  const id = (buf[0]! << 8) | buf[1]!;
  const opcode = (flags >> 11) & 0xf;
  const rd = (flags & FLAG_RD) !== 0;
  const cd = (flags & FLAG_CD) !== 0;
  const qdcount = (buf[4]! << 8) | buf[5]!;
  const ancount = (buf[6]! << 8) | buf[7]!;
  const nscount = (buf[8]! << 8) | buf[9]!;
  const arcount = (buf[10]! << 8) | buf[11]!;
  if (qdcount !== 1) return malformedQuery(id, opcode, rd, cd);

  // The question name: no compression pointers (nothing before it to point at), labels <= 63.
  const labels: string[] = [];
  let off = HEADER;
  for (;;) {
    if (off >= len) return malformedQuery(id, opcode, rd, cd);
    const l = buf[off]!;
    if (l === 0) {
      off += 1;
      break;
    }
    if (l > MAX_LABEL) return malformedQuery(id, opcode, rd, cd); // pointer or extended label type
    if (off + 1 + l > len || off + 1 + l + 1 - HEADER > MAX_NAME_WIRE) return malformedQuery(id, opcode, rd, cd);
    labels.push(latin1(buf, off + 1, off + 1 + l));
    off += 1 + l;
  }
  if (off + 4 > len) return malformedQuery(id, opcode, rd, cd);
  const question: Question = {
    labels,
    type: (buf[off]! << 8) | buf[off + 1]!,
    class: (buf[off + 2]! << 8) | buf[off + 3]!,
  };
  off += 4;

  // Answer and authority sections are unusual in a query; skip them to reach the OPT record.
  let edns: Edns | undefined;
  const records = ancount + nscount + arcount;
  for (let i = 0; i < records; i++) {
    const nameStart = off;
    off = skipName(buf, off);
    if (off < 0 || off + 10 > len) return malformedQuery(id, opcode, rd, cd);
    const type = (buf[off]! << 8) | buf[off + 1]!;
    const klass = (buf[off + 2]! << 8) | buf[off + 3]!;
    const ttl = ((buf[off + 4]! << 24) | (buf[off + 5]! << 16) | (buf[off + 6]! << 8) | buf[off + 7]!) >>> 0;
    const rdlength = (buf[off + 8]! << 8) | buf[off + 9]!;
    off += 10 + rdlength;
    if (off > len) return malformedQuery(id, opcode, rd, cd);
    if (type === RRType.OPT) {
      // RFC 6891 §6.1.1: only in the additional section, owner is the root, at most one.
      const inAdditional = i >= ancount + nscount;
      if (!inAdditional || edns || off - rdlength - 10 - nameStart !== 1) return malformedQuery(id, opcode, rd, cd);
      edns = { udpSize: klass, version: (ttl >>> 16) & 0xff, do: (ttl & 0x8000) !== 0 };
    }
  }
  return { id, opcode, rd, cd, question, edns, malformed: false };
}

/** Offset after a (possibly compressed) name in a record we skip; -1 when it is invalid. */
function skipName(buf: Uint8Array, off: number): number {
  const start = off;
  for (;;) {
    if (off >= buf.length) return -1;
    const l = buf[off]!;
    if (l === 0) return off - start + 1 > MAX_NAME_WIRE ? -1 : off + 1;
    if ((l & 0xc0) === 0xc0) return off + 2 <= buf.length ? off + 2 : -1; // a pointer ends the name
    if (l > MAX_LABEL) return -1;
    off += 1 + l;
  }
}

function latin1(buf: Uint8Array, start: number, end: number): string {
  let s = '';
  for (let i = start; i < end; i++) s += String.fromCharCode(buf[i]!);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** type..rdata of a record, computed once per record object: views reuse their records. */
const recordTails = new WeakMap<ResourceRecord, Buffer>();

function recordTail(rr: ResourceRecord): Buffer {
  let tail = recordTails.get(rr);
  if (tail) return tail;
  const rdata = encodeRData(rr.data);
  tail = Buffer.alloc(10 + rdata.length);
  tail.writeUInt16BE(rr.type, 0);
  tail.writeUInt16BE(CLASS_IN, 2);
  tail.writeUInt32BE(rr.ttl >>> 0, 4);
  tail.writeUInt16BE(rdata.length, 8);
  rdata.copy(tail, 10);
  recordTails.set(rr, tail);
  return tail;
}

function encodeRData(d: RData): Buffer {
  switch (d.kind) {
    case 'A':
      return Buffer.from(d.address.split('.').map(Number));
    case 'AAAA':
      return ipv6Bytes(d.address);
    case 'NS':
      return encodeName(d.host);
    case 'SOA': {
      const names = Buffer.concat([encodeName(d.mname), encodeName(d.rname)]);
      const nums = Buffer.alloc(20);
      [d.serial, d.refresh, d.retry, d.expire, d.minimum].forEach((n, i) => nums.writeUInt32BE(n >>> 0, i * 4));
      return Buffer.concat([names, nums]);
    }
    case 'HINFO':
      return Buffer.concat([characterString(d.cpu), characterString(d.os)]);
  }
}

function characterString(s: string): Buffer {
  const b = Buffer.from(s, 'latin1');
  return Buffer.concat([Buffer.from([Math.min(b.length, 255)]), b.subarray(0, 255)]);
}

/** "a.b.c" (no trailing dot, "" = root) -> uncompressed wire name. */
export function encodeName(name: string): Buffer {
  const labels = name === '' ? [] : name.split('.');
  return Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')])), Buffer.from([0])]);
}

/** 16 bytes of an IPv6 address already checked by isIP (zone id, if any, ignored). */
export function ipv6Bytes(address: string): Buffer {
  let s = address.split('%')[0] ?? '';
  const out = Buffer.alloc(16);
  // Embedded IPv4 tail (::ffff:1.2.3.4): rewrite as two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4?.[1] && isIP(v4[1]) === 4) {
    const [a, b, c, d] = v4[1].split('.').map(Number) as [number, number, number, number];
    s = s.slice(0, -v4[1].length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = s.split('::');
  const hs = head === '' ? [] : head.split(':');
  const ts = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? hs : [...hs, ...new Array<string>(8 - hs.length - ts.length).fill('0'), ...ts];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

function questionWireLength(q: Question): number {
  let n = 1 + 4;
  for (const l of q.labels) n += 1 + l.length;
  return n;
}

/**
 * Offset (from the message start) of the apex within the echoed question name, so records
 * owned by the apex compress to a pointer; -1 when the question is not under the apex.
 */
function apexOffset(q: Question, apex: readonly string[]): number {
  const skip = q.labels.length - apex.length;
  if (skip < 0) return -1;
  let off = HEADER;
  for (let i = 0; i < q.labels.length; i++) {
    if (i >= skip && q.labels[i]!.toLowerCase() !== apex[i - skip]) return -1;
    if (i < skip) off += 1 + q.labels[i]!.length;
  }
  return off;
}

const OPT_LENGTH = 11;

function sectionLength(rrs: readonly ResourceRecord[], qname: boolean, apexAt: number, apexWire: Buffer | undefined): number {
  let n = 0;
  for (let i = 0; i < rrs.length; i++) {
    const rr = rrs[i]!;
    n += (rr.owner === 'qname' && qname) || apexAt >= 0 ? 2 : apexWire!.length;
    n += recordTail(rr).length;
  }
  return n;
}

function writeSection(
  out: Buffer,
  off: number,
  rrs: readonly ResourceRecord[],
  qname: boolean,
  apexAt: number,
  apexWire: Buffer | undefined,
): number {
  for (let i = 0; i < rrs.length; i++) {
    const rr = rrs[i]!;
    // Owners compress to a pointer into the echoed question (RFC 1035 §4.1.4).
    const ptr = rr.owner === 'qname' && qname ? HEADER : apexAt;
    if (ptr >= 0) {
      out[off] = 0xc0 | (ptr >> 8);
      out[off + 1] = ptr & 0xff;
      off += 2;
    } else {
      off += apexWire!.copy(out, off);
    }
    off += recordTail(rr).copy(out, off);
  }
  return off;
}

/**
 * Wire form of a response, at most `limit` bytes. When the records do not fit, the answer is
 * header + question (+ OPT) with TC=1 (RFC 1035 §4.2.1, RFC 2181 §9: no partial RRsets).
 */
export function encodeResponse(res: DnsResponse, limit: number): Buffer {
  const q = res.question;
  const qlen = q ? questionWireLength(q) : 0;
  const hasRecords = res.answers.length + res.authority.length > 0;
  const apexAt = q && hasRecords ? apexOffset(q, res.apex) : -1;
  const apexWire = apexAt < 0 && hasRecords ? encodeName(res.apex.join('.')) : undefined;

  const fixed = HEADER + qlen + (res.edns ? OPT_LENGTH : 0);
  let size = fixed;
  if (hasRecords) {
    size += sectionLength(res.answers, q !== undefined, apexAt, apexWire);
    size += sectionLength(res.authority, q !== undefined, apexAt, apexWire);
  }
  const truncated = size > limit;
  if (truncated) size = fixed;

  const out = Buffer.allocUnsafe(size);
  let flags = FLAG_QR | ((res.opcode & 0xf) << 11) | (res.rcode & 0xf);
  if (res.aa) flags |= FLAG_AA;
  if (truncated) flags |= FLAG_TC;
  if (res.rd) flags |= FLAG_RD;
  if (res.cd) flags |= FLAG_CD;
  const an = truncated ? 0 : res.answers.length;
  const ns = truncated ? 0 : res.authority.length;
  out[0] = (res.id >> 8) & 0xff;
  out[1] = res.id & 0xff;
  out[2] = flags >> 8;
  out[3] = flags & 0xff;
  out[4] = 0;
  out[5] = q ? 1 : 0;
  out[6] = an >> 8;
  out[7] = an & 0xff;
  out[8] = ns >> 8;
  out[9] = ns & 0xff;
  out[10] = 0;
  out[11] = res.edns ? 1 : 0;
  let off = HEADER;
  if (q) {
    for (let i = 0; i < q.labels.length; i++) {
      const l = q.labels[i]!;
      out[off++] = l.length;
      for (let j = 0; j < l.length; j++) out[off++] = l.charCodeAt(j);
    }
    out[off++] = 0;
    out[off++] = q.type >> 8;
    out[off++] = q.type & 0xff;
    out[off++] = q.class >> 8;
    out[off++] = q.class & 0xff;
  }
  if (!truncated) {
    off = writeSection(out, off, res.answers, q !== undefined, apexAt, apexWire);
    off = writeSection(out, off, res.authority, q !== undefined, apexAt, apexWire);
  }
  if (res.edns) {
    const extended = (res.rcode >> 4) & 0xff;
    out[off] = 0; // root owner
    out.writeUInt16BE(RRType.OPT, off + 1);
    out.writeUInt16BE(res.edns.udpSize, off + 3);
    out.writeUInt32BE(((extended << 24) | (res.edns.do ? 0x8000 : 0)) >>> 0, off + 5); // version 0
    out.writeUInt16BE(0, off + 9);
    off += OPT_LENGTH;
  }
  return off === size ? out : out.subarray(0, off);
}
