/**
 * The DNS answer as a pure function of (query, view), CoreDNS-style: no sockets, no clock,
 * no registry. The server module parses, calls `answer`, encodes and sends.
 *
 * The zone is a wildcard: every name at or under the apex exists and owns the gateways'
 * addresses, so there is never an NXDOMAIN, only data or NODATA (RFC 2308 §2.2).
 */
import { isIP } from 'node:net';
import type { GatewayRecord } from '../discovery/records.js';
import {
  CLASS_IN,
  OPCODE_QUERY,
  Rcode,
  RRType,
  type DnsQuery,
  type DnsResponse,
  type ResourceRecord,
} from './wire.js';

/** RFC 9715 / DNS flag day 2020: the payload size we advertise and the most we send over UDP. */
export const EDNS_UDP_SIZE = 1232;

/** Everything an answer depends on; immutable, rebuilt only when the gateway set changes. */
export interface DnsView {
  /** Lowercase, no trailing dot. */
  readonly domain: string;
  readonly apex: readonly string[];
  /** Gateway addresses, deduplicated, in registry order. */
  readonly a: readonly ResourceRecord[];
  readonly aaaa: readonly ResourceRecord[];
  /** One-record RRsets, kept as arrays so answering allocates nothing for them. */
  readonly soa: readonly ResourceRecord[];
  readonly ns: readonly ResourceRecord[];
  /** RFC 8482 §4.2: the synthesized answer to ANY when there are no addresses. */
  readonly hinfo: readonly ResourceRecord[];
}

export interface DnsViewOptions {
  domain: string;
  gateways: readonly GatewayRecord[];
  ttl: number;
  /** SOA serial; the caller makes it grow when the gateway set changes. */
  serial: number;
}

/** "Test.Priv." -> "test.priv"; throws a TypeError saying what is wrong with a bad zone name. */
export function normalizeZone(domain: string): string {
  const d = domain.toLowerCase().replace(/\.$/, '');
  const labels = d.split('.');
  if (d === '' || d.length > 253 || labels.some((l) => !/^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/.test(l))) {
    throw new TypeError(`dns: domain ${JSON.stringify(domain)} is not a zone name (labels of 1-63 of a-z, 0-9, '-', '_'; at most 253 characters)`);
  }
  return d;
}

export function buildDnsView(opts: DnsViewOptions): DnsView {
  const domain = normalizeZone(opts.domain);
  const ttl = opts.ttl;
  const v4 = new Set<string>();
  const v6 = new Set<string>();
  for (const gw of opts.gateways) {
    const family = isIP(gw.ip);
    if (family === 4) v4.add(gw.ip);
    else if (family === 6) v6.add(gw.ip.toLowerCase());
  }
  const record = (owner: 'qname' | 'apex', data: ResourceRecord['data']): ResourceRecord =>
    Object.freeze({ owner, type: RRType[data.kind], ttl, data });
  const rrset = (rr: ResourceRecord) => Object.freeze([rr]);
  return Object.freeze({
    domain,
    apex: Object.freeze(domain.split('.')),
    a: Object.freeze([...v4].map((address) => record('qname', { kind: 'A', address }))),
    aaaa: Object.freeze([...v6].map((address) => record('qname', { kind: 'AAAA', address }))),
    // RFC 2308 §5: negative answers are cached for min(SOA TTL, MINIMUM); both are the short ttl.
    soa: rrset(record('apex', {
      kind: 'SOA',
      mname: `ns.${domain}`,
      rname: `hostmaster.${domain}`,
      serial: opts.serial >>> 0,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: ttl,
    })),
    ns: rrset(record('apex', { kind: 'NS', host: `ns.${domain}` })),
    hinfo: rrset(record('qname', { kind: 'HINFO', cpu: 'RFC8482', os: '' })),
  });
}

const NONE: readonly ResourceRecord[] = Object.freeze([]);

/** The lowercase zone labels match the tail of the asked labels (RFC 4343: ASCII case-insensitive). */
export function inZone(labels: readonly string[], apex: readonly string[]): boolean {
  const skip = labels.length - apex.length;
  if (skip < 0) return false;
  for (let i = 0; i < apex.length; i++) {
    if (asciiLower(labels[skip + i]!) !== apex[i]) return false;
  }
  return true;
}

/** RFC 4343 §3: only A-Z fold; other bytes compare exactly (toLowerCase would fold latin1 too). */
function asciiLower(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 65 && c <= 90) return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  }
  return s;
}

export function answer(query: DnsQuery, view: DnsView): DnsResponse {
  if (query.opcode !== OPCODE_QUERY) return reply(query, view, Rcode.NOTIMP);
  const q = query.question;
  if (query.malformed || !q) return reply(query, view, Rcode.FORMERR);
  // RFC 6891 §6.1.3: we speak EDNS version 0 only.
  if (query.edns && query.edns.version > 0) return reply(query, view, Rcode.BADVERS);
  if (q.type === RRType.OPT) return reply(query, view, Rcode.FORMERR); // RFC 6891 §6.1.1: OPT is not a qtype
  // Not ours: refuse, never recurse (and never answer other classes such as CHAOS).
  if (q.class !== CLASS_IN || !inZone(q.labels, view.apex)) return reply(query, view, Rcode.REFUSED);
  // No zone transfers: there is nothing to transfer, the zone is synthesized.
  if (q.type === RRType.AXFR || q.type === RRType.IXFR) return reply(query, view, Rcode.REFUSED);

  const atApex = q.labels.length === view.apex.length;
  let data: readonly ResourceRecord[] = NONE;
  switch (q.type) {
    case RRType.A:
      data = view.a;
      break;
    case RRType.AAAA:
      data = view.aaaa;
      break;
    case RRType.ANY:
      // RFC 8482 §4.1/§4.2: one RRset, never a dump; HINFO "RFC8482" when there is none.
      data = view.a.length > 0 ? view.a : view.aaaa.length > 0 ? view.aaaa : view.hinfo;
      break;
    case RRType.SOA:
      if (atApex) data = view.soa;
      break;
    case RRType.NS:
      if (atApex) data = view.ns;
      break;
  }
  // NODATA (RFC 2308 §2.2): NOERROR, no answer, the SOA in authority for negative caching.
  return data.length > 0
    ? reply(query, view, Rcode.NOERROR, true, data)
    : reply(query, view, Rcode.NOERROR, true, NONE, view.soa);
}

/** One object shape for every response (this runs per query: no spreads). */
function reply(
  query: DnsQuery,
  view: DnsView,
  rcode: number,
  aa = false,
  answers: readonly ResourceRecord[] = NONE,
  authority: readonly ResourceRecord[] = NONE,
): DnsResponse {
  const ok = !query.malformed;
  return {
    id: query.id,
    opcode: query.opcode,
    rcode,
    aa,
    rd: query.rd, // RFC 1035 §4.1.1: copied; RA stays 0, we never recurse
    cd: query.cd, // RFC 6840 §5.9: copied
    question: ok ? query.question : undefined,
    apex: view.apex,
    answers,
    authority,
    // RFC 6891 §7: an OPT in the query gets one back, except when the query was malformed.
    edns: query.edns && ok ? { udpSize: EDNS_UDP_SIZE, do: query.edns.do } : undefined,
  };
}
