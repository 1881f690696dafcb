/**
 * Forwarding one request to one origin, streaming both ways over bounded keep-alive pools.
 *
 * The client side is node:http (llhttp parses requests strictly); the upstream side is
 * gateway/upstream.ts, a pooled HTTP/1.1 client with a strict response parser, chosen by
 * measurement over undici and http.Agent (README, "Hot path"). Pools live in a bounded LRU:
 * the least recently used origin's pool is closed when more than `maxOrigins` are in use.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { LRUCache } from 'lru-cache';
import type { Address } from '../discovery/records.js';
import { OriginPool, type RequestHandle, type ResponseSink, type UpstreamError } from './upstream.js';

/** RFC 9110 §7.6.1: hop-by-hop fields, plus those a Connection header names. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings']);
/** A tunnel half-closed by one side is torn down if the other has not finished by then. */
const FIN_TIMEOUT_MS = 5_000;
/** Set by this proxy; a client's own values are dropped unless the peer is trusted. */
const FORWARDING = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id', 'forwarded']);
/** Between the gateway and a local proxy only: never accepted from a client, never sent to an app. */
export const TARGET_HEADER = 'x-tgw-container';

export interface ForwarderOptions {
  /** Most origins (local proxies or containers) with an open pool at once. */
  maxOrigins?: number;
  /** Most connections to one origin. */
  connectionsPerOrigin?: number;
  /** Requests waiting for a connection to one origin beyond that; more fail (503/502). */
  queuePerOrigin?: number;
  connectTimeoutMs?: number;
  /** Time to the response head, and the longest pause between body chunks. */
  upstreamTimeoutMs?: number;
  /** Idle keep-alive connections to an origin are closed after this. */
  idleTimeoutMs?: number;
}

/** `stale`: the next hop does not know the target yet (it lags the registry); nothing reached an app. */
export type FailureKind = 'connect' | 'timeout' | 'broken' | 'stale';

/** How a forward ended once a response head was on its way: for passive health and least-conn. */
export type Finish = 'ok' | '5xx' | 'broken' | 'aborted';

export interface ForwardContext {
  requestId: string;
  /** The peer is a trusted proxy: keep its X-Forwarded-* and append to them. */
  trusted: boolean;
  /** Appended to the upstream request's headers (name, value, ...). */
  extraHeaders?: readonly string[] | undefined;
  /** Appended to the response's headers (name, value, ...). */
  responseHeaders?: readonly string[] | undefined;
  /**
   * Asked when the next hop answers with an error it produced itself (`x-tgw-error`, e.g. the
   * local proxy could not reach the container): a FailureKind = drop that answer and
   * `fail(kind)` (to retry elsewhere); undefined = pass it to the client.
   */
  retryHopError?: ((status: number, code: string) => FailureKind | undefined) | undefined;
  /** Called at most once, only while no response head was sent to the client. */
  fail(kind: FailureKind, err: Error): void;
  /** Called at most once, when `fail` was not: the response completed or was cut. */
  finished?: ((how: Finish, status: number) => void) | undefined;
}

export class Forwarder {
  readonly #pools: LRUCache<string, OriginPool>;
  readonly #opts: Required<ForwarderOptions>;
  /** Open upgrade tunnels: each entry tears its tunnel down. */
  readonly #tunnels = new Set<() => void>();

  constructor(opts: ForwarderOptions = {}) {
    this.#opts = {
      maxOrigins: opts.maxOrigins ?? 1024,
      connectionsPerOrigin: opts.connectionsPerOrigin ?? 256,
      queuePerOrigin: opts.queuePerOrigin ?? 1024,
      connectTimeoutMs: opts.connectTimeoutMs ?? 5_000,
      upstreamTimeoutMs: opts.upstreamTimeoutMs ?? 60_000,
      idleTimeoutMs: opts.idleTimeoutMs ?? 4_000,
    };
    this.#pools = new LRUCache<string, OriginPool>({
      max: this.#opts.maxOrigins,
      dispose: (pool) => pool.close(),
    });
  }

  get connectTimeoutMs(): number {
    return this.#opts.connectTimeoutMs;
  }

  async close(): Promise<void> {
    for (const teardown of [...this.#tunnels]) teardown();
    this.#pools.clear(); // dispose closes each pool's idle connections
    await Promise.resolve();
  }

  /** Streams `req` to `origin` and its response back into `res`. */
  forward(req: IncomingMessage, res: ServerResponse, origin: Address, ctx: ForwardContext): void {
    const te = req.headers['transfer-encoding'];
    const cl = req.headers['content-length'];
    const hasBody = te !== undefined || (cl !== undefined && cl !== '0');
    const handler = new ResponseHandler(res, ctx, req.httpVersionMajor === 2);
    handler.handle = this.#pool(origin).request(
      {
        method: req.method ?? 'GET',
        head: requestHead(req, ctx, false),
        body: hasBody ? req : null,
        // node:http already decoded a chunked request: it goes on chunked (our own framing).
        bodyLength: te !== undefined ? undefined : Number(cl ?? 0),
      },
      handler,
    );
  }

  /**
   * WebSocket and other upgrades: write the head to a fresh connection, then splice bytes.
   * When one side ends, the other is ended too and both are destroyed if it does not
   * finish within `finTimeoutMs` (HAProxy's "timeout client-fin"); tunnels are tracked so
   * close() can end them.
   */
  forwardUpgrade(req: IncomingMessage, client: Duplex, head: Buffer, origin: Address, ctx: ForwardContext): void {
    const upstream = net.connect({ host: origin.host, port: origin.port });
    let connected = false;
    const timer = setTimeout(() => upstream.destroy(new Error('connect timeout')), this.#opts.connectTimeoutMs);
    const teardown = () => {
      clearTimeout(timer);
      client.destroy();
      upstream.destroy();
      if (this.#tunnels.delete(teardown)) ctx.finished?.('ok', 101);
    };
    this.#tunnels.add(teardown);
    upstream.once('connect', () => {
      connected = true;
      clearTimeout(timer);
      upstream.write(`${requestHead(req, ctx, true)}\r\n`);
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    const finishSoon = () => setTimeout(teardown, FIN_TIMEOUT_MS).unref();
    client.once('end', finishSoon);
    upstream.once('end', finishSoon);
    upstream.on('error', (err) => {
      if (!connected) {
        clearTimeout(timer);
        this.#tunnels.delete(teardown);
        ctx.fail(err.message === 'connect timeout' ? 'timeout' : 'connect', err);
      } else teardown();
    });
    client.on('error', teardown);
    client.on('close', teardown);
    upstream.on('close', () => {
      if (connected) teardown();
    });
  }

  /** One active health check: GET `path` with `headers`; passes on 2xx and 3xx. */
  probe(origin: Address, path: string, headers: Record<string, string>, timeoutMs: number): Promise<{ ok: boolean; result: string }> {
    let head = `GET ${path} HTTP/1.1\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    return new Promise((resolve) => {
      let bytes = 0;
      const handle = this.#pool(origin).request(
        { method: 'GET', head, body: null, bodyLength: 0 },
        {
          onHead: (status) => {
            clearTimeout(timer);
            resolve({ ok: status >= 200 && status < 400, result: String(status) });
          },
          // Read (and drop) at most 64 KB of the body; more closes the connection.
          onData: (chunk) => {
            bytes += chunk.length;
            if (bytes > 64 * 1024) handle.abort();
            return true;
          },
          onEnd: () => {},
          onError: (err) => {
            clearTimeout(timer);
            resolve({ ok: false, result: err.kind === 'connect' && /ECONNREFUSED/.test(err.message) ? 'refused' : err.kind === 'timeout' ? 'timeout' : err.message });
          },
        },
      );
      const timer = setTimeout(() => {
        handle.abort();
        resolve({ ok: false, result: 'timeout' });
      }, timeoutMs);
    });
  }

  #pool(origin: Address): OriginPool {
    const key = `${origin.host}\0${origin.port}`;
    let pool = this.#pools.get(key);
    if (pool === undefined) {
      pool = new OriginPool({
        host: origin.host,
        port: origin.port,
        maxConnections: this.#opts.connectionsPerOrigin,
        maxQueue: this.#opts.queuePerOrigin,
        connectTimeoutMs: this.#opts.connectTimeoutMs,
        responseTimeoutMs: this.#opts.upstreamTimeoutMs,
        idleTimeoutMs: this.#opts.idleTimeoutMs,
      });
      this.#pools.set(key, pool);
    }
    return pool;
  }
}

/**
 * The request line and header lines to send upstream: hop-by-hop removed, forwarding headers
 * set by us. Values come from llhttp, which already refused CR, LF and NUL in them.
 */
function requestHead(req: IncomingMessage, ctx: ForwardContext, upgrade: boolean): string {
  const raw = req.rawHeaders;
  const named = connectionTokens(req.headers.connection);
  let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
  let forwardedFor: string | undefined;
  let proto: string | undefined;
  let fwdHost: string | undefined;
  let sawHost = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    // HTTP/2 pseudo-headers (":method", ":authority", ...) are not HTTP/1.1 fields.
    if (name.charCodeAt(0) === 0x3a /* : */) continue;
    const lower = name.toLowerCase();
    if (lower === 'host') sawHost = true;
    if (FORWARDING.has(lower)) {
      if (!ctx.trusted) continue;
      if (lower === 'x-forwarded-for') forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
      else if (lower === 'x-forwarded-proto') proto = value;
      else if (lower === 'x-forwarded-host') fwdHost = value;
      else if (lower === 'forwarded') head += `${name}: ${value}\r\n`;
      continue;
    }
    // Expect: node:http already answered 100-continue.
    if (HOP_BY_HOP.has(lower) || lower === 'expect' || lower === TARGET_HEADER || (named !== undefined && named.has(lower))) continue;
    head += `${name}: ${value}\r\n`;
  }
  // HTTP/2 clients name the host in :authority; HTTP/1.1 requires a Host field.
  if (!sawHost) head += `host: ${authorityOf(req)}\r\n`;
  const extra = ctx.extraHeaders;
  if (extra !== undefined) for (let i = 0; i < extra.length; i += 2) head += `${extra[i]}: ${extra[i + 1]}\r\n`;
  const peer = req.socket.remoteAddress ?? '';
  head += `x-forwarded-for: ${forwardedFor === undefined ? peer : `${forwardedFor}, ${peer}`}\r\n`;
  head += `x-forwarded-proto: ${proto ?? (isTls(req) ? 'https' : 'http')}\r\n`;
  head += `x-forwarded-host: ${fwdHost ?? authorityOf(req)}\r\n`;
  head += `x-request-id: ${ctx.requestId}\r\n`;
  if (upgrade) head += `connection: upgrade\r\nupgrade: ${req.headers.upgrade ?? 'websocket'}\r\n`;
  return head;
}

/** The Host header, or HTTP/2's :authority. */
export function authorityOf(req: IncomingMessage): string {
  const h = req.headers.host ?? req.headers[':authority'];
  return typeof h === 'string' ? h : '';
}

function isTls(req: IncomingMessage): boolean {
  return (req.socket as { encrypted?: boolean }).encrypted === true;
}

/** Fields a Connection header may never remove: ours, and those that frame or route the message. */
const NOT_HOP_BY_HOP = new Set([...FORWARDING, 'host', 'content-length', TARGET_HEADER]);

/** Field names listed in a Connection header (lowercase), except those in NOT_HOP_BY_HOP. */
function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const set = new Set<string>();
  for (const t of value.split(',')) {
    const name = t.trim().toLowerCase();
    if (name !== '' && !NOT_HOP_BY_HOP.has(name)) set.add(name);
  }
  return set;
}

/** Streams one upstream response into `res`, with backpressure both ways. */
class ResponseHandler implements ResponseSink {
  readonly #res: ServerResponse;
  readonly #ctx: ForwardContext;
  handle: RequestHandle | undefined;
  #done = false;
  #status = 0;
  /** HTTP/2 has no status text (RFC 9113 §8.3.2). */
  readonly #h2: boolean;

  constructor(res: ServerResponse, ctx: ForwardContext, h2: boolean) {
    this.#res = res;
    this.#ctx = ctx;
    this.#h2 = h2;
    // Client gone before the response finished: abort the upstream request.
    res.once('close', () => {
      if (this.#done) return;
      this.#done = true;
      this.handle?.abort();
      this.#ctx.finished?.('aborted', this.#status);
    });
  }

  onHead(statusCode: number, statusText: string, headers: string[]): void {
    if (this.#done) return;
    let named: Set<string> | undefined;
    let hopError: string | undefined;
    for (let i = 0; i < headers.length; i += 2) {
      const n = headers[i] as string;
      if (n.length === 10 && n.toLowerCase() === 'connection') named = connectionTokens(headers[i + 1]);
      else if (n.length === 11 && n.toLowerCase() === 'x-tgw-error') hopError = headers[i + 1];
    }
    const retryAs = hopError === undefined ? undefined : this.#ctx.retryHopError?.(statusCode, hopError);
    if (retryAs !== undefined) {
      this.#done = true;
      this.handle?.abort();
      this.#ctx.fail(retryAs, new Error(`the next hop answered ${statusCode} ${hopError}`));
      return;
    }
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i] as string;
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || (named !== undefined && named.has(lower))) continue;
      out.push(name, headers[i + 1] as string);
    }
    if (this.#ctx.responseHeaders !== undefined) out.push(...this.#ctx.responseHeaders);
    this.#status = statusCode;
    if (this.#h2) this.#res.writeHead(statusCode, out);
    else this.#res.writeHead(statusCode, statusText, out);
  }

  onData(chunk: Buffer, last: boolean): boolean {
    if (this.#done) return true;
    if (last) {
      // Head and the whole body in one write.
      this.#res.end(chunk);
      return true;
    }
    if (this.#res.write(chunk)) return true;
    this.#res.once('drain', () => this.handle?.resume());
    return false;
  }

  onEnd(): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.#res.writableEnded) this.#res.end();
    this.#ctx.finished?.(this.#status >= 500 ? '5xx' : 'ok', this.#status);
  }

  onError(err: UpstreamError, started: boolean): void {
    if (this.#done) return;
    this.#done = true;
    if (started || this.#res.headersSent) {
      // Mid-body failure: never a clean end, the client must see the truncation.
      this.#res.destroy(err);
      this.#ctx.finished?.('broken', this.#status);
      return;
    }
    this.#ctx.fail(err.kind, err);
  }
}

