/**
 * Forwarding one request to one origin, streaming both ways over bounded keep-alive pools.
 *
 * The client side is node:http (llhttp parses requests strictly); the upstream side is an
 * undici Pool per origin driven through `dispatch`, which the benchmark measured ahead of
 * http.Agent (see README, "Hot path"). Pools live in a bounded LRU: the least recently used
 * origin's pool is closed when more than `maxOrigins` are in use.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { LRUCache } from 'lru-cache';
import { Pool, type Dispatcher } from 'undici';
import type { Address } from '../discovery/records.js';

/** RFC 9110 §7.6.1: hop-by-hop fields, plus those a Connection header names. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings']);
/** Set by this proxy; a client's own values are dropped unless the peer is trusted. */
/** A tunnel half-closed by one side is torn down if the other has not finished by then. */
const FIN_TIMEOUT_MS = 5_000;
const FORWARDING = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id', 'forwarded']);
/** Between the gateway and a local proxy only: never accepted from a client, never sent to an app. */
export const TARGET_HEADER = 'x-tgw-container';

export interface ForwarderOptions {
  /** Most origins (local proxies or containers) with an open pool at once. */
  maxOrigins?: number;
  /** Most connections to one origin. */
  connectionsPerOrigin?: number;
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
  readonly #pools: LRUCache<string, Pool>;
  readonly #opts: Required<ForwarderOptions>;
  /** Open upgrade tunnels: each entry tears its tunnel down. */
  readonly #tunnels = new Set<() => void>();

  constructor(opts: ForwarderOptions = {}) {
    this.#opts = {
      maxOrigins: opts.maxOrigins ?? 1024,
      connectionsPerOrigin: opts.connectionsPerOrigin ?? 256,
      connectTimeoutMs: opts.connectTimeoutMs ?? 5_000,
      upstreamTimeoutMs: opts.upstreamTimeoutMs ?? 60_000,
      idleTimeoutMs: opts.idleTimeoutMs ?? 4_000,
    };
    this.#pools = new LRUCache<string, Pool>({
      max: this.#opts.maxOrigins,
      dispose: (pool) => void pool.close().catch(() => {}),
    });
  }

  get connectTimeoutMs(): number {
    return this.#opts.connectTimeoutMs;
  }

  async close(): Promise<void> {
    for (const teardown of [...this.#tunnels]) teardown();
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.destroy().catch(() => {})));
  }

  /** Streams `req` to `origin` and its response back into `res`. */
  forward(req: IncomingMessage, res: ServerResponse, origin: Address, ctx: ForwardContext): void {
    const headers = requestHeaders(req, ctx, false);
    const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    const handler = new ResponseHandler(res, ctx);
    this.#pool(origin).dispatch(
      { origin: undefined, path: req.url ?? '/', method: req.method ?? 'GET', headers, body: hasBody ? req : null },
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
      const h = requestHeaders(req, ctx, true);
      let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < h.length; i += 2) text += `${h[i]}: ${h[i + 1]}\r\n`;
      upstream.write(`${text}\r\n`);
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
  async probe(origin: Address, path: string, headers: Record<string, string>, timeoutMs: number): Promise<{ ok: boolean; result: string }> {
    try {
      const r = await this.#pool(origin).request({ path, method: 'GET', headers, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs) });
      await r.body.dump({ limit: 64 * 1024 });
      return { ok: r.statusCode >= 200 && r.statusCode < 400, result: String(r.statusCode) };
    } catch (err) {
      const code = (err as { code?: string }).code;
      return { ok: false, result: code === 'ECONNREFUSED' ? 'refused' : (err as Error).name === 'TimeoutError' || code?.includes('TIMEOUT') ? 'timeout' : (err as Error).message };
    }
  }

  #pool(origin: Address): Pool {
    const key = origin.host.includes(':') ? `http://[${origin.host}]:${origin.port}` : `http://${origin.host}:${origin.port}`;
    let pool = this.#pools.get(key);
    if (pool === undefined) {
      pool = new Pool(key, {
        connections: this.#opts.connectionsPerOrigin,
        pipelining: 1,
        connectTimeout: this.#opts.connectTimeoutMs,
        headersTimeout: this.#opts.upstreamTimeoutMs,
        bodyTimeout: this.#opts.upstreamTimeoutMs,
        keepAliveTimeout: this.#opts.idleTimeoutMs,
        keepAliveMaxTimeout: this.#opts.idleTimeoutMs,
      });
      this.#pools.set(key, pool);
    }
    return pool;
  }
}

/** Headers to send upstream: hop-by-hop removed, forwarding headers set by us. */
function requestHeaders(req: IncomingMessage, ctx: ForwardContext, upgrade: boolean): string[] {
  const raw = req.rawHeaders;
  const named = connectionTokens(req.headers.connection);
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let proto: string | undefined;
  let fwdHost: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const lower = name.toLowerCase();
    if (FORWARDING.has(lower)) {
      if (!ctx.trusted) continue;
      if (lower === 'x-forwarded-for') forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
      else if (lower === 'x-forwarded-proto') proto = value;
      else if (lower === 'x-forwarded-host') fwdHost = value;
      else if (lower === 'forwarded') out.push(name, value);
      continue;
    }
    // Expect: node:http already answered 100-continue; undici refuses to send it on.
    if (HOP_BY_HOP.has(lower) || lower === 'expect' || lower === TARGET_HEADER || (named !== undefined && named.has(lower))) continue;
    out.push(name, value);
  }
  if (ctx.extraHeaders !== undefined) out.push(...ctx.extraHeaders);
  const peer = req.socket.remoteAddress ?? '';
  out.push('x-forwarded-for', forwardedFor === undefined ? peer : `${forwardedFor}, ${peer}`);
  out.push('x-forwarded-proto', proto ?? (isTls(req) ? 'https' : 'http'));
  out.push('x-forwarded-host', fwdHost ?? req.headers.host ?? '');
  out.push('x-request-id', ctx.requestId);
  if (upgrade) out.push('connection', 'upgrade', 'upgrade', req.headers.upgrade ?? 'websocket');
  return out;
}

function isTls(req: IncomingMessage): boolean {
  return (req.socket as { encrypted?: boolean }).encrypted === true;
}

/** Field names listed in a Connection header (lowercase), except our own forwarding ones. */
function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const set = new Set<string>();
  for (const t of value.split(',')) {
    const name = t.trim().toLowerCase();
    if (name !== '' && !FORWARDING.has(name)) set.add(name);
  }
  return set;
}

/** undici's dispatch handler: streams the response into `res` with backpressure. */
class ResponseHandler implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse;
  readonly #ctx: ForwardContext;
  #abort: ((err?: Error) => void) | undefined;
  #done = false;
  #status = 0;
  /** The head was a hop error turned into a retry: ignore the rest of this response. */
  #dropped = false;

  constructor(res: ServerResponse, ctx: ForwardContext) {
    this.#res = res;
    this.#ctx = ctx;
    // Client gone before the response finished: abort the upstream request.
    res.once('close', () => {
      if (this.#done) return;
      this.#done = true;
      this.#abort?.(new Error('client closed the connection'));
      this.#ctx.finished?.('aborted', this.#status);
    });
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#res.destroyed) abort(new Error('client closed the connection'));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true; // 1xx: informational, not forwarded
    let named: Set<string> | undefined;
    let hopError: string | undefined;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const n = rawHeaders[i] as Buffer;
      if (n.length === 10 && n.toString('latin1').toLowerCase() === 'connection') {
        named = connectionTokens((rawHeaders[i + 1] as Buffer).toString('latin1'));
      } else if (n.length === 11 && n.toString('latin1').toLowerCase() === 'x-tgw-error') {
        hopError = (rawHeaders[i + 1] as Buffer).toString('latin1');
      }
    }
    const retryAs = hopError === undefined ? undefined : this.#ctx.retryHopError?.(statusCode, hopError);
    if (retryAs !== undefined) {
      this.#done = true;
      this.#dropped = true;
      this.#abort?.(new Error(`next hop: ${hopError}`));
      this.#ctx.fail(retryAs, new Error(`the next hop answered ${statusCode} ${hopError}`));
      return false;
    }
    this.#status = statusCode;
    const out: string[] = [];
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = (rawHeaders[i] as Buffer).toString('latin1');
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || (named !== undefined && named.has(lower))) continue;
      out.push(name, (rawHeaders[i + 1] as Buffer).toString('latin1'));
    }
    if (this.#ctx.responseHeaders !== undefined) out.push(...this.#ctx.responseHeaders);
    this.#res.writeHead(statusCode, statusText, out);
    this.#res.on('drain', resume);
    return true;
  }

  onData(chunk: Buffer): boolean {
    return this.#dropped || this.#res.write(chunk);
  }

  onComplete(): void {
    if (this.#done) return;
    this.#done = true;
    this.#res.end();
    this.#ctx.finished?.(this.#status >= 500 ? '5xx' : 'ok', this.#status);
  }

  onError(err: Error): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#res.headersSent) {
      // Mid-body failure: never a clean end, the client must see the truncation.
      this.#res.destroy(err);
      this.#ctx.finished?.('broken', this.#status);
      return;
    }
    this.#ctx.fail(classify(err), err);
  }
}

function classify(err: Error): FailureKind {
  const code = (err as { code?: string }).code;
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EADDRNOTAVAIL') {
    return 'connect';
  }
  return 'broken';
}
