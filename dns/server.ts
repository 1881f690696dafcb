/**
 * The authoritative wildcard DNS server: a thin socket adapter around `answer` (dns/answer.ts)
 * and the strict codec (dns/wire.ts). UDP and TCP on one port.
 *
 * Guarantees: no input stops the server (every packet is handled inside a try/catch and a
 * malformed one is dropped or answered FORMERR); TCP connections are bounded in number and
 * idle time; the answer reflects `gateways()` as of the query.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import net from 'node:net';
import type { GatewayRecord } from '../discovery/records.js';
import { answer, buildDnsView, EDNS_UDP_SIZE, normalizeZone, type DnsView } from './answer.js';
import { encodeResponse, parseQuery, rcodeName, TCP_LIMIT, UDP_CLASSIC_LIMIT } from './wire.js';

export interface DnsServerOptions {
  /** Zone, lowercase, no trailing dot, e.g. "test.priv". */
  domain: string;
  /** Bind address, e.g. "127.0.0.1". */
  host: string;
  /** UDP and TCP on the same port; 0 = pick a free one (the same number for both). */
  port: number;
  /** Current live gateways; called per query, so it must be cheap and synchronous. */
  gateways: () => readonly GatewayRecord[];
  /** Seconds; default 5 (the gateway set changes). */
  ttl?: number;
  warn?: (msg: string) => void;
  /** Close a TCP connection idle this long (ms); default 10 s (RFC 7766 §6.2.3). */
  tcpIdleTimeoutMs?: number;
  /** Refuse TCP connections beyond this many open at once; default 256. */
  tcpMaxConnections?: number;
  /**
   * UDP queries per second per source address (a token bucket holding one second's worth);
   * queries beyond it are dropped unanswered, so spoofed sources cannot use this server to
   * amplify. TCP is not limited (a handshake proves the source). 0 or absent = no limit.
   */
  rateLimit?: number;
  /** Sources the rate limit never applies to (e.g. loopback, where benchmarks run). */
  rateLimitExempt?: (address: string) => boolean;
}

export interface DnsServer {
  port: number;
  close(): Promise<void>;
  /** queries: messages received; byRcode: responses sent, by rcode name; rateLimited: UDP queries dropped by the rate limit. */
  stats: { queries: number; byRcode: Record<string, number>; rateLimited: number };
}

const DEFAULT_TTL = 5;
const DEFAULT_TCP_IDLE_MS = 10_000;
const DEFAULT_TCP_MAX_CONNECTIONS = 256;
/** Stop reading a TCP connection whose peer does not read its answers past this much. */
const TCP_MAX_PENDING_WRITE = 256 * 1024;
const BIND_ATTEMPTS = 8;
const UDP_RECV_BUFFER = 4 * 1024 * 1024;
/** Sources the rate limiter remembers at once; the longest-known is forgotten first. */
const RATE_LIMIT_SOURCES = 65_536;

/** Per-source token buckets, bounded; `allow` is O(1) and allocates only for a new source. */
export function sourceRateLimiter(perSecond: number, now: () => number = Date.now): (source: string) => boolean {
  const buckets = new Map<string, { tokens: number; at: number }>();
  return (source) => {
    const t = now();
    let b = buckets.get(source);
    if (b === undefined) {
      if (buckets.size >= RATE_LIMIT_SOURCES) buckets.delete(buckets.keys().next().value as string);
      b = { tokens: perSecond, at: t };
      buckets.set(source, b);
    } else {
      b.tokens = Math.min(perSecond, b.tokens + ((t - b.at) * perSecond) / 1000);
      b.at = t;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  };
}

export async function startDnsServer(opts: DnsServerOptions): Promise<DnsServer> {
  const domain = normalizeZone(opts.domain);
  const ttl = opts.ttl ?? DEFAULT_TTL;
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 0x7fffffff) throw new TypeError(`dns: ttl must be an integer of seconds, got ${ttl}`);
  const warn = opts.warn ?? (() => {});
  const idleMs = opts.tcpIdleTimeoutMs ?? DEFAULT_TCP_IDLE_MS;
  const maxConnections = opts.tcpMaxConnections ?? DEFAULT_TCP_MAX_CONNECTIONS;

  // Warn once per distinct message: a flood of bad packets must not become a flood of logs.
  const warned = new Set<string>();
  const warnOnce = (msg: string) => {
    if (warned.has(msg) || warned.size > 100) return;
    warned.add(msg);
    warn(msg);
  };

  // The view is rebuilt only when the gateway addresses change. Compared by content, not by
  // array identity, so a callback that mutates one array in place is still seen; the compare
  // is a few string comparisons per query and allocates nothing.
  let lastIps: string[] = [];
  let serial = Math.floor(Date.now() / 1000);
  let view: DnsView = buildDnsView({ domain, gateways: [], ttl, serial });
  const currentView = (): DnsView => {
    let list: readonly GatewayRecord[];
    try {
      list = opts.gateways();
    } catch (err) {
      warnOnce(`dns: gateways() threw (${(err as Error).message}); answering with the last known gateways`);
      return view;
    }
    if (sameIps(list, lastIps)) return view;
    lastIps = list.map((g) => g.ip);
    // RFC 1982 serials only need to grow: seconds since epoch, bumped when changes come faster.
    serial = Math.max(serial + 1, Math.floor(Date.now() / 1000));
    view = buildDnsView({ domain, gateways: list, ttl, serial });
    return view;
  };

  const stats = { queries: 0, byRcode: {} as Record<string, number>, rateLimited: 0 };
  const rate = opts.rateLimit ?? 0;
  const allow = rate > 0 ? sourceRateLimiter(rate) : undefined;
  const exempt = opts.rateLimitExempt ?? (() => false);

  /** The wire answer to one message, or undefined to drop it. Never throws. */
  const respond = (msg: Uint8Array, tcp: boolean): Buffer | undefined => {
    stats.queries++;
    try {
      const query = parseQuery(msg);
      if (!query) return undefined;
      const res = answer(query, currentView());
      const limit = tcp
        ? TCP_LIMIT
        : query.edns && !query.malformed
          ? Math.min(Math.max(query.edns.udpSize, UDP_CLASSIC_LIMIT), EDNS_UDP_SIZE)
          : UDP_CLASSIC_LIMIT;
      const out = encodeResponse(res, limit);
      const name = rcodeName(res.rcode);
      stats.byRcode[name] = (stats.byRcode[name] ?? 0) + 1;
      return out;
    } catch (err) {
      warnOnce(`dns: internal error answering a query, dropped it: ${(err as Error).stack ?? String(err)}`);
      return undefined;
    }
  };

  const udpType = net.isIP(opts.host) === 6 ? 'udp6' : 'udp4';
  let udp: dgram.Socket | undefined;
  let tcp: net.Server | undefined;
  let lastError: unknown;
  for (let attempt = 0; attempt < BIND_ATTEMPTS && !tcp; attempt++) {
    const u = dgram.createSocket({ type: udpType, lookup: replyLookup });
    try {
      await bindUdp(u, opts.port, opts.host);
    } catch (err) {
      u.close();
      throw new Error(`dns: cannot bind UDP ${opts.host}:${opts.port}: ${(err as Error).message}${bindHint(err)}`);
    }
    const port = u.address().port;
    const t = net.createServer();
    try {
      await listenTcp(t, port, opts.host);
      udp = u;
      tcp = t;
    } catch (err) {
      lastError = err;
      u.close();
      // A fixed port is the operator's choice: say so rather than move. Port 0: try another.
      if (opts.port !== 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') break;
    }
  }
  if (!udp || !tcp) {
    throw new Error(`dns: cannot bind TCP ${opts.host}:${opts.port}: ${(lastError as Error | undefined)?.message ?? 'unknown error'}${bindHint(lastError)}`);
  }
  const udpSocket = udp;
  const tcpServer = tcp;

  try {
    udpSocket.setRecvBufferSize(UDP_RECV_BUFFER);
  } catch {
    // Capped by net.core.rmem_max; the default still works, it just drops more under bursts.
  }
  udpSocket.on('error', (err) => warnOnce(`dns: UDP socket error: ${err.message}`));
  udpSocket.on('message', (msg, rinfo) => {
    if (allow !== undefined && !exempt(rinfo.address) && !allow(rinfo.address)) {
      stats.queries++;
      stats.rateLimited++;
      return;
    }
    const out = respond(msg, false);
    if (out) udpSocket.send(out, rinfo.port, rinfo.address);
  });

  tcpServer.maxConnections = maxConnections;
  tcpServer.on('drop', () => warnOnce(`dns: more than ${maxConnections} TCP connections open; refusing new ones until some close`));
  tcpServer.on('error', (err) => warnOnce(`dns: TCP server error: ${err.message}`));
  const sockets = new Set<net.Socket>();
  tcpServer.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {}); // resets are the peer's business; 'close' follows
    socket.setNoDelay(true);
    socket.setTimeout(idleMs, () => socket.destroy());
    serveTcp(socket, respond);
  });

  const port = udpSocket.address().port;
  let closing: Promise<void> | undefined;
  return {
    port,
    stats,
    /** Idempotent: later calls return the first call's promise. */
    close: () => {
      closing ??= (async () => {
        const tcpClosed = new Promise<void>((resolve) => tcpServer.close(() => resolve()));
        for (const s of sockets) s.destroy(); // 'close' waits for open connections
        await Promise.all([tcpClosed, new Promise<void>((resolve) => udpSocket.close(() => resolve()))]);
      })();
      return closing;
    },
  };
}

/** RFC 1035 §4.2.2 framing; several queries per connection, answered in order (RFC 7766 §6.2.1). */
function serveTcp(socket: net.Socket, respond: (msg: Uint8Array, tcp: boolean) => Buffer | undefined): void {
  let pending: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    let off = 0;
    while (pending.length - off >= 2) {
      const len = pending.readUInt16BE(off);
      if (pending.length - off - 2 < len) break;
      const out = respond(pending.subarray(off + 2, off + 2 + len), true);
      off += 2 + len;
      if (out && !socket.destroyed) {
        const framed = Buffer.allocUnsafe(2 + out.length);
        framed.writeUInt16BE(out.length, 0);
        out.copy(framed, 2);
        socket.write(framed);
      }
    }
    pending = off === pending.length ? Buffer.alloc(0) : pending.subarray(off);
    // A peer that writes queries but never reads answers: stop reading until it catches up.
    if (socket.writableLength > TCP_MAX_PENDING_WRITE) {
      socket.pause();
      socket.once('drain', () => socket.resume());
    }
  });
}

/**
 * Replies go to rinfo.address, always an IP literal: skip dns.lookup's deferred callback, which
 * costs a tick and a closure per packet (measurable at 50k+ packets/s).
 */
function replyLookup(
  address: string,
  family: dns.LookupOneOptions | number,
  callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  const f = net.isIP(address);
  if (f !== 0) callback(null, address, f);
  else dns.lookup(address, typeof family === 'number' ? { family } : family, callback);
}

function bindHint(err: unknown): string {
  switch ((err as NodeJS.ErrnoException | undefined)?.code) {
    case 'EADDRINUSE':
      return ' (another DNS server, such as dnsmasq or systemd-resolved, may hold the port: stop it or pick another port)';
    case 'EACCES':
      return ' (ports below 1024 need root or CAP_NET_BIND_SERVICE)';
    case 'EADDRNOTAVAIL':
      return ' (the bind address is not on this machine)';
    default:
      return '';
  }
}

function sameIps(list: readonly GatewayRecord[], ips: readonly string[]): boolean {
  if (list.length !== ips.length) return false;
  for (let i = 0; i < ips.length; i++) if (list[i]!.ip !== ips[i]) return false;
  return true;
}

function bindUdp(socket: dgram.Socket, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    socket.once('error', onError);
    socket.bind(port, host, () => {
      socket.off('error', onError);
      resolve();
    });
  });
}

function listenTcp(server: net.Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen({ port, host, exclusive: true }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
