/**
 * The HTTP server shared by the gateway and the local proxy: normalize Host, resolve it to an
 * origin through a Router, forward. Routers (gateway/router.ts) differ; this flow does not.
 */
import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { RegistryUnavailableError } from '../discovery/backend.js';
import type { Address } from '../discovery/records.js';
import { ProxyError, sendError, sendErrorOnSocket, type Component, type ProxyErrorCode } from './errors.js';
import { authorityOf, type FailureKind, type Forwarder } from './forward.js';
import { BadHostError, normalizeHost } from './host.js';

export interface Route {
  origin: Address;
  /** For error messages: "host 01's local proxy at 127.0.0.1:8090". */
  label: string;
  /** The replica chosen ("01/c001"), when the route balances over several. */
  replica?: string;
  /** Extra upstream request headers (name, value, ...). */
  headers?: readonly string[];
  /** Extra response headers (name, value, ...), e.g. a sticky cookie. */
  responseHeaders?: readonly string[];
  /** Retry policy: at most `attempts` more tries, within `deadlineMs` of the request's start. */
  retry?: { attempts: number; deadlineMs: number };
  /** Called exactly once when the attempt on this route ends. */
  release?(outcome: Outcome): void;
}

/** `stale` and `aborted` say nothing about the replica's health. */
export type Outcome = 'ok' | '5xx' | 'connect' | 'timeout' | 'broken' | 'stale' | 'aborted';

export interface ResolveContext {
  req: IncomingMessage;
  /** The client's address (the socket peer's). */
  clientIp: string;
  /** Replicas this request already failed on. */
  tried: Set<string> | undefined;
  /** Re-read registry records rather than trusting the cache (after a connect failure). */
  fresh: boolean;
  /** How often this request waited for a replica (backoff grows with it). */
  holds: number;
  /** Never wait for a replica: a retry after an app answered badly (not a move). */
  noHold?: boolean;
  /** The peer is a trusted proxy (a local proxy's gateways). */
  trusted: boolean;
}

export interface Router {
  /** Synchronous when everything it needs is cached. Throws/rejects ProxyError. */
  resolve(host: string, ctx: ResolveContext): Route | Promise<Route>;
  /** The error to answer when forwarding to `route` failed before a response head. */
  failure(kind: FailureKind, route: Route, err: Error): ProxyError;
  /** Balancing and health state of a tenant, for explain and the admin API. */
  describeTenant?(name: string): object | null;
}

/** A next hop's own errors that mean the request never reached an app: safe to send elsewhere. */
const NOT_REACHED = new Set(['upstream_refused', 'local_proxy_unreachable', 'no_healthy_replica']);
/** ... and those that mean it does not know the target yet: it lags the registry by a moment. */
const NOT_KNOWN = new Set(['unknown_container', 'unknown_tenant', 'unknown_host']);

/** RFC 9110 §9.2.2: safe to repeat. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

/** What happened to one request, reported once when its response is finished or aborted. */
export interface RequestRecord {
  component: Component;
  requestId: string;
  /** ms since epoch when the request head was parsed. */
  start: number;
  durationMs: number;
  method: string;
  path: string;
  /** The Host header as sent (normalized when it was valid). */
  host: string;
  /** 0 when the client went away before a response head was sent. */
  status: number;
  /** false: the response did not complete (client gone, upstream broke mid-body). */
  completed: boolean;
  /** Response bytes written to the client socket (head included). */
  bytes: number;
  /** Where the request went ("host 01's local proxy at 127.0.0.1:8090"), when it was routed. */
  upstream?: string;
  /** Set when this proxy produced the answer itself (404, 502, ...). */
  error?: ProxyErrorCode;
  /** Times the request was sent again (another replica, or the same after a change). */
  retries?: number;
  remoteAddress: string;
}

export interface RequestObserver {
  /** Called once per request, after the response finished or the connection closed. Must not throw. */
  requestDone(rec: RequestRecord): void;
}

export interface ProxyServerOptions {
  component: Component;
  /** Per-request reporting (metrics, access logs); nothing is measured without one. */
  observer?: RequestObserver;
  router: Router;
  forwarder: Forwarder;
  /** Peers whose X-Forwarded-* and X-Request-Id are kept (appended to). */
  isTrusted: (ip: string) => boolean;
  /** Complete request headers must arrive within this (slowloris). */
  headersTimeoutMs?: number;
  /** Idle keep-alive client connections are closed after this. */
  keepAliveTimeoutMs?: number;
  /** The whole request (head and body) must arrive within this; 0 = no limit. */
  requestTimeoutMs?: number;
  /** A request body that pauses longer than this is cut off (408 when no response was sent); 0 = no limit. */
  bodyTimeoutMs?: number;
  /** Connections beyond this many open at once are closed on accept; 0 = no limit. */
  maxConnections?: number;
}

/** Defaults of the listener limits; the flags in config.ts name the same numbers. */
export const LISTENER_DEFAULTS = {
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  requestTimeoutMs: 300_000,
  maxConnections: 20_000,
} as const;

/** Request line and headers together (llhttp's limit): beyond it, 431 (or 414 for a long request line). */
export const MAX_HEADER_BYTES = 16 * 1024;
/** The request target; beyond it, 414 (RFC 9112 §3: servers must be able to take at least 8000 octets). */
export const MAX_URL_BYTES = 8 * 1024;
/**
 * Header fields per request (HAProxy's default is 101). node counts only name and value bytes
 * against MAX_HEADER_BYTES and silently drops fields past its maxHeadersCount, so a request
 * of many tiny fields is refused here instead: 431.
 */
export const MAX_HEADER_FIELDS = 256;

/**
 * Why a request must not be forwarded, checked before routing: the framing and target rules
 * llhttp leaves to the application. O(header bytes), no allocation on the common path.
 * undefined = fine; otherwise [status, message]. May rewrite an absolute-form target to origin-form.
 */
export function requestProblem(req: IncomingMessage): [number, string] | undefined {
  const url = req.url ?? '';
  if (url.length > MAX_URL_BYTES) return [414, `the request target is longer than ${MAX_URL_BYTES} bytes`];
  const raw = req.rawHeaders;
  if (raw.length > 2 * MAX_HEADER_FIELDS) return [431, `the request has more than ${MAX_HEADER_FIELDS} header fields`];
  let hosts = 0;
  let te = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    // Only names of these two lengths need a closer look: the loop stays one comparison per header.
    if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
    else if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') te++;
  }
  // RFC 9112 §3.2: exactly one Host; two (even equal) let two parsers route differently.
  if (hosts > 1) return [400, 'the request has more than one Host header'];
  if (te > 0) {
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing. We accept only "chunked":
    // any other coding leaves the body length to guesswork (HAProxy and nginx refuse them too).
    if (req.httpVersionMajor !== 1 || req.httpVersionMinor !== 1) return [400, 'Transfer-Encoding is not allowed in an HTTP/1.0 request'];
    const value = req.headers['transfer-encoding'] ?? '';
    if (te > 1 || value.length !== 7 || value.toLowerCase() !== 'chunked') return [400, 'Transfer-Encoding must be exactly "chunked"'];
  }
  const c = url.charCodeAt(0);
  if (c !== 0x2f /* / */) {
    // RFC 9112 §3.2.2: absolute-form. Its authority must name the same host as Host (one
    // routing decision, not two), without userinfo; forwarded in origin-form.
    const lower = url.slice(0, 8).toLowerCase();
    const start = lower.startsWith('http://') ? 7 : lower.startsWith('https://') ? 8 : -1;
    if (start < 0) return [400, 'the request target must be a path ("/...") or an absolute http(s) URL'];
    // No regex: the authority ends at the first "/", "?" or "#" (RFC 3986 §3.2), one scan.
    let end = start;
    while (end < url.length && url.charCodeAt(end) !== 0x2f && url.charCodeAt(end) !== 0x3f && url.charCodeAt(end) !== 0x23) end++;
    const authority = url.slice(start, end);
    if (authority.includes('@')) return [400, 'the request target must not carry userinfo (user@host)'];
    let a: string;
    let h: string;
    try {
      a = normalizeHost(authority);
      h = normalizeHost(req.headers.host);
    } catch (err) {
      return [400, `bad host in the request target or Host: ${(err as Error).message}`];
    }
    if (a !== h) return [400, `the request target names ${a} but Host names ${h}`];
    const rest = url.slice(end);
    req.url = rest === '' ? '/' : rest.charCodeAt(0) === 0x3f /* ? */ ? `/${rest}` : rest;
  }
  // A fragment is never sent (RFC 9110 §4.2.4); one in a request is a sign of a confused client.
  if (req.url?.includes('#')) return [400, 'the request target must not contain "#"'];
  return undefined;
}

/**
 * A matcher for --trusted-proxies: IPs and CIDRs ("10.0.0.0/8", "fd00::/8", "192.0.2.7").
 * IPv4-mapped IPv6 peers ("::ffff:10.1.2.3") match IPv4 entries. Throws on a malformed entry.
 */
export function peerMatcher(list: readonly string[], flag = '--trusted-proxies'): (ip: string) => boolean {
  if (list.length === 0) return () => false;
  const blocks = new net.BlockList();
  for (const entry of list) {
    const [addr = '', bits, extra] = entry.split('/');
    const family = net.isIP(addr);
    const max = family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
      throw new Error(`${flag}: ${JSON.stringify(entry)} is not an IP address or CIDR (e.g. 10.0.0.0/8, fd00::/8)`);
    }
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (prefix === max) blocks.addAddress(addr, type);
    else blocks.addSubnet(addr, prefix, type);
  }
  return (ip: string) => {
    const plain = ip.startsWith('::ffff:') && net.isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip;
    const family = net.isIP(plain);
    return family !== 0 && blocks.check(plain, family === 4 ? 'ipv4' : 'ipv6');
  };
}

/** Our own answer to a request refused before routing: the connection is closed after it. */
function refuse(req: IncomingMessage, res: ServerResponse, status: number, message: string, requestId: string, component: Component): void {
  const text = `${JSON.stringify({ status, error: status === 414 ? 'uri_too_long' : 'bad_request', message, requestId, component })}\n`;
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'x-request-id': requestId, 'cache-control': 'no-store' };
  // HTTP/1 only: HTTP/2 (the HTTPS listener hands its requests here) forbids a Connection field.
  if (req.httpVersionMajor === 1) {
    res.shouldKeepAlive = false;
    headers.connection = 'close';
  }
  res.writeHead(status, headers);
  res.end(text);
}

/** The raw answer when there is no request object (a parse error, a timeout), then close. */
function refuseOnSocket(socket: Duplex, status: number, message: string): void {
  const text = `${JSON.stringify({ status, error: status === 408 ? 'request_timeout' : status === 431 ? 'headers_too_large' : status === 414 ? 'uri_too_long' : 'bad_request', message })}\n`;
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

export function createProxyServer(opts: ProxyServerOptions): http.Server {
  const { component, router, forwarder, isTrusted } = opts;
  const bodyTimeoutMs = opts.bodyTimeoutMs ?? LISTENER_DEFAULTS.bodyTimeoutMs;

  const requestIdOf = (req: IncomingMessage, trusted: boolean): string => {
    const given = req.headers['x-request-id'];
    return trusted && typeof given === 'string' && REQUEST_ID_RE.test(given) ? given : randomUUID();
  };

  const toProxyError = (err: unknown): ProxyError => {
    if (err instanceof ProxyError) return err;
    if (err instanceof BadHostError) return new ProxyError('bad_host', err.message);
    if (err instanceof RegistryUnavailableError) return new ProxyError('registry_unavailable', err.message);
    return new ProxyError('upstream_broken', `internal error: ${(err as Error).message}`);
  };

  const { observer } = opts;

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const trusted = isTrusted(req.socket.remoteAddress ?? '');
    const requestId = requestIdOf(req, trusted);
    const rec = observer === undefined ? undefined : observe(observer, component, requestId, req, res);
    const answer = (err: ProxyError) => {
      if (rec !== undefined) rec.error = err.code;
      sendError(req, res, err, requestId, component);
    };
    const ctx: ResolveContext = { req, clientIp: req.socket.remoteAddress ?? '', tried: undefined, fresh: false, holds: 0, trusted };
    // A request whose body was (or may have been) read cannot be sent again.
    const hasBody = (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined;
    const startedAt = Date.now();
    let attempts = 0;
    /** The failure a retry started from, answered when no other replica can take the request. */
    let lastFailure: ProxyError | undefined;
    const orLastFailure = (err: unknown): ProxyError =>
      lastFailure !== undefined && err instanceof ProxyError && err.code === 'no_healthy_replica' ? lastFailure : toProxyError(err);
    let host = '';

    const canRetry = (route: Route, kind: FailureKind): boolean =>
      route.retry !== undefined &&
      route.replica !== undefined &&
      !hasBody &&
      (kind === 'stale' || attempts < route.retry.attempts) &&
      Date.now() - startedAt < route.retry.deadlineMs &&
      !res.headersSent &&
      !res.destroyed &&
      (kind === 'connect' || kind === 'stale' || (kind === 'broken' && IDEMPOTENT.has(req.method ?? '')));

    const forward = (route: Route): void => {
      if (rec !== undefined) rec.upstream = route.label;
      let released = false;
      const release = (o: Outcome) => {
        if (released) return;
        released = true;
        route.release?.(o);
      };
      forwarder.forward(req, res, route.origin, {
        requestId,
        trusted,
        extraHeaders: route.headers,
        responseHeaders: route.responseHeaders,
        retryHopError:
          route.release === undefined
            ? undefined
            : (_status, code) => {
                const kind: FailureKind | undefined = NOT_KNOWN.has(code)
                  ? 'stale'
                  : NOT_REACHED.has(code)
                    ? 'connect'
                    : code === 'upstream_broken'
                      ? 'broken'
                      : undefined;
                return kind !== undefined && canRetry(route, kind) ? kind : undefined;
              },
        fail: (kind, err) => {
          release(kind);
          if (!canRetry(route, kind)) return answer(router.failure(kind, route, err));
          // A lagging next hop costs no attempt: the deadline bounds those retries.
          if (kind !== 'stale') attempts++;
          if (rec !== undefined) rec.retries = (rec.retries ?? 0) + 1;
          if (kind === 'broken' || kind === 'timeout') {
            // The app was reached and answered badly: try another replica, but do not hold
            // (holding is for moves); with none, the client gets this failure, not a 503.
            ctx.noHold = true;
            lastFailure = router.failure(kind, route, err);
          }
          (ctx.tried ??= new Set()).add(route.replica as string);
          ctx.fresh = kind === 'connect' || kind === 'stale';
          resolve();
        },
        finished: (how) => release(how),
      });
    };

    const resolve = (): void => {
      let route: Route | Promise<Route>;
      try {
        route = router.resolve(host, ctx);
      } catch (err) {
        answer(orLastFailure(err));
        req.resume();
        return;
      }
      if (route instanceof Promise) {
        route.then(
          (r) => (res.destroyed ? r.release?.('aborted') : forward(r)),
          (err: unknown) => {
            answer(orLastFailure(err));
            req.resume();
          },
        );
      } else {
        forward(route);
      }
    };

    const problem = requestProblem(req);
    if (problem !== undefined) {
      refuse(req, res, problem[0], problem[1], requestId, component);
      return;
    }
    try {
      host = normalizeHost(authorityOf(req) || undefined);
    } catch (err) {
      res.shouldKeepAlive = false; // a client that sends a bad Host gets no second chance on this connection
      answer(toProxyError(err));
      req.resume();
      return;
    }
    if (rec !== undefined) rec.host = host;
    // HTTP/1 only: an HTTP/2 stream's socket is the session's, shared with other requests.
    if (hasBody && bodyTimeoutMs > 0 && !req.complete && req.httpVersionMajor === 1) watchBody(req, res, bodyTimeoutMs, requestId, component);
    resolve();
  };

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const trusted = isTrusted(req.socket.remoteAddress ?? '');
    const requestId = requestIdOf(req, trusted);
    socket.on('error', () => socket.destroy());
    const problem = requestProblem(req);
    if (problem !== undefined) return refuseOnSocket(socket, problem[0], problem[1]);
    const forward = (route: Route) =>
      forwarder.forwardUpgrade(req, socket, head, route.origin, {
        requestId,
        trusted,
        extraHeaders: route.headers,
        fail: (kind, err) => {
          route.release?.(kind);
          sendErrorOnSocket(req, socket, router.failure(kind, route, err), requestId, component);
        },
        finished: () => route.release?.('ok'),
      });
    const fail = (err: unknown) => sendErrorOnSocket(req, socket, toProxyError(err), requestId, component);
    try {
      const route = router.resolve(normalizeHost(authorityOf(req) || undefined), { req, clientIp: req.socket.remoteAddress ?? '', tried: undefined, fresh: false, holds: 0, trusted });
      if (route instanceof Promise) route.then(forward, fail);
      else forward(route);
    } catch (err) {
      fail(err);
    }
  };

  const headersTimeout = opts.headersTimeoutMs ?? LISTENER_DEFAULTS.headersTimeoutMs;
  const server = http.createServer(
    {
      headersTimeout,
      requestTimeout: opts.requestTimeoutMs ?? LISTENER_DEFAULTS.requestTimeoutMs,
      keepAliveTimeout: opts.keepAliveTimeoutMs ?? LISTENER_DEFAULTS.keepAliveTimeoutMs,
      // Node checks the two timeouts above only this often (default 30 s): a 10 s header
      // timeout would otherwise cut slow headers off anywhere between 10 and 40 s.
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(headersTimeout / 4))),
      maxHeaderSize: MAX_HEADER_BYTES,
    },
    onRequest,
  );
  // One more than the limit, so requestProblem sees that fields were dropped.
  server.maxHeadersCount = MAX_HEADER_FIELDS + 1;
  const maxConnections = opts.maxConnections ?? LISTENER_DEFAULTS.maxConnections;
  if (maxConnections > 0) server.maxConnections = maxConnections;
  server.on('upgrade', onUpgrade);
  // A CONNECT request is not ours to serve (node would otherwise drop the socket without a word).
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    socket.on('error', () => socket.destroy());
    refuseOnSocket(socket, 405, 'CONNECT is not supported: this is a gateway, not a forward proxy');
  });
  server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex) => {
    // A response already under way (a bad chunk mid-body): nothing more can be said on this connection.
    const inFlight = (socket as { _httpMessage?: ServerResponse | null })._httpMessage;
    if (!socket.writable || (inFlight != null && inFlight.headersSent)) return socket.destroy();
    let status = 400;
    if (err.code === 'HPE_HEADER_OVERFLOW') status = requestLineTooLong(err.rawPacket) ? 414 : 431;
    else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') status = 408;
    refuseOnSocket(socket, status, status === 408 ? 'the request did not arrive in time' : status === 400 ? `malformed request (${err.code ?? 'parse error'})` : status === 414 ? `the request line is longer than ${MAX_URL_BYTES} bytes` : `the request headers are larger than ${MAX_HEADER_BYTES} bytes`);
    // Never wait for a client that sent garbage: close even if it does not read the answer.
    setTimeout(() => socket.destroy(), 1_000).unref();
  });
  // Accept errors (EMFILE when the fd limit is reached) must not stop the process: libuv
  // sheds the pending connections and the listener keeps serving the ones it has.
  server.on('error', () => {});
  return server;
}

/** The packet that overflowed starts a request whose first line does not end within the URL limit. */
function requestLineTooLong(packet: Buffer | undefined): boolean {
  if (packet === undefined || packet.length === 0) return false;
  const lf = packet.indexOf(0x0a);
  const firstSpace = packet.indexOf(0x20);
  // Only a packet that begins with "METHOD " is the start of a request line.
  return firstSpace > 0 && firstSpace < 32 && (lf === -1 ? packet.length > MAX_URL_BYTES : lf > MAX_URL_BYTES);
}

/**
 * A request body that stalls longer than `ms` (slow POST) is cut off: 408 when no response was
 * sent yet, else the connection is closed. The socket's idle timer does the timing (no timer per
 * chunk); it is handed back to node's keep-alive handling when the body is complete.
 */
function watchBody(req: IncomingMessage, res: ServerResponse, ms: number, requestId: string, component: Component): void {
  const socket = req.socket;
  socket.setTimeout(ms);
  req.once('timeout', () => {
    if (res.headersSent || res.destroyed) return void socket.destroy();
    refuse(req, res, 408, `the request body stalled for more than ${ms / 1000} s`, requestId, component);
    res.once('finish', () => socket.destroy());
  });
  req.once('end', () => {
    // After the response ended, node has set the keep-alive timeout on the socket: keep it.
    if (!res.writableEnded) socket.setTimeout(0);
  });
}

/** Starts a RequestRecord and reports it when the response is done or the connection closed. */
function observe(observer: RequestObserver, component: Component, requestId: string, req: IncomingMessage, res: ServerResponse): RequestRecord {
  const start = Date.now();
  const t0 = performance.now();
  const socket = req.socket;
  const written = socket.bytesWritten;
  const rec: RequestRecord = {
    component,
    requestId,
    start,
    durationMs: 0,
    method: req.method ?? '',
    path: req.url ?? '',
    host: authorityOf(req),
    status: 0,
    completed: false,
    bytes: 0,
    remoteAddress: socket.remoteAddress ?? '',
  };
  res.once('close', () => {
    rec.durationMs = performance.now() - t0;
    rec.status = res.headersSent ? res.statusCode : 0;
    rec.completed = res.writableFinished;
    rec.bytes = socket.bytesWritten - written;
    try {
      observer.requestDone(rec);
    } catch {
      // An observer's failure must never affect traffic.
    }
  });
  return rec;
}
