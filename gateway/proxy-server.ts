/**
 * The HTTP server shared by the gateway and the local proxy: normalize Host, resolve it to an
 * origin through a Router, forward. Routers (gateway/router.ts) differ; this flow does not.
 */
import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { RegistryUnavailableError } from '../discovery/backend.js';
import type { Address } from '../discovery/records.js';
import { ProxyError, sendError, sendErrorOnSocket, type Component, type ProxyErrorCode } from './errors.js';
import type { FailureKind, Forwarder } from './forward.js';
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
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

export function createProxyServer(opts: ProxyServerOptions): http.Server {
  const { component, router, forwarder, isTrusted } = opts;

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
    const ctx: ResolveContext = { req, clientIp: req.socket.remoteAddress ?? '', tried: undefined, fresh: false, holds: 0 };
    // A request whose body was (or may have been) read cannot be sent again.
    const hasBody = (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined;
    const startedAt = Date.now();
    let attempts = 0;
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
        answer(toProxyError(err));
        req.resume();
        return;
      }
      if (route instanceof Promise) {
        route.then(
          (r) => (res.destroyed ? r.release?.('aborted') : forward(r)),
          (err: unknown) => {
            answer(toProxyError(err));
            req.resume();
          },
        );
      } else {
        forward(route);
      }
    };

    try {
      host = normalizeHost(req.headers.host);
    } catch (err) {
      answer(toProxyError(err));
      req.resume();
      return;
    }
    if (rec !== undefined) rec.host = host;
    resolve();
  };

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const trusted = isTrusted(req.socket.remoteAddress ?? '');
    const requestId = requestIdOf(req, trusted);
    socket.on('error', () => socket.destroy());
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
      const route = router.resolve(normalizeHost(req.headers.host), { req, clientIp: req.socket.remoteAddress ?? '', tried: undefined, fresh: false, holds: 0 });
      if (route instanceof Promise) route.then(forward, fail);
      else forward(route);
    } catch (err) {
      fail(err);
    }
  };

  const server = http.createServer(
    {
      headersTimeout: opts.headersTimeoutMs ?? 10_000,
      requestTimeout: opts.requestTimeoutMs ?? 300_000,
      keepAliveTimeout: opts.keepAliveTimeoutMs ?? 5_000,
      maxHeaderSize: 16 * 1024,
    },
    onRequest,
  );
  server.on('upgrade', onUpgrade);
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable) return socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });
  return server;
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
    host: req.headers.host ?? '',
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
