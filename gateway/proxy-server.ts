/**
 * The HTTP server shared by the gateway and the local proxy: normalize Host, resolve it to an
 * origin through a Router, forward. Routers (gateway/router.ts) differ; this flow does not.
 */
import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { RegistryUnavailableError } from '../discovery/backend.js';
import type { Address } from '../discovery/records.js';
import { ProxyError, sendError, sendErrorOnSocket, type Component } from './errors.js';
import type { FailureKind, Forwarder } from './forward.js';
import { BadHostError, normalizeHost } from './host.js';

export interface Route {
  origin: Address;
  /** For error messages: "host 01's local proxy at 127.0.0.1:8090". */
  label: string;
}

export interface Router {
  /** Synchronous when everything it needs is cached. Throws/rejects ProxyError. */
  resolve(host: string): Route | Promise<Route>;
  /** The error to answer when forwarding to `route` failed before a response head. */
  failure(kind: FailureKind, route: Route, err: Error): ProxyError;
}

export interface ProxyServerOptions {
  component: Component;
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

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const trusted = isTrusted(req.socket.remoteAddress ?? '');
    const requestId = requestIdOf(req, trusted);
    const forward = (route: Route) => {
      forwarder.forward(req, res, route.origin, {
        requestId,
        trusted,
        fail: (kind, err) => sendError(req, res, router.failure(kind, route, err), requestId, component),
      });
    };
    let route: Route | Promise<Route>;
    try {
      route = router.resolve(normalizeHost(req.headers.host));
    } catch (err) {
      sendError(req, res, toProxyError(err), requestId, component);
      req.resume();
      return;
    }
    if (route instanceof Promise) {
      route.then(forward, (err: unknown) => {
        sendError(req, res, toProxyError(err), requestId, component);
        req.resume();
      });
    } else {
      forward(route);
    }
  };

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const trusted = isTrusted(req.socket.remoteAddress ?? '');
    const requestId = requestIdOf(req, trusted);
    socket.on('error', () => socket.destroy());
    const forward = (route: Route) =>
      forwarder.forwardUpgrade(req, socket, head, route.origin, {
        requestId,
        trusted,
        fail: (kind, err) => sendErrorOnSocket(req, socket, router.failure(kind, route, err), requestId, component),
      });
    const fail = (err: unknown) => sendErrorOnSocket(req, socket, toProxyError(err), requestId, component);
    try {
      const route = router.resolve(normalizeHost(req.headers.host));
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
