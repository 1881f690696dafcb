/**
 * A small HTTP/1.1 client for the hop to a local proxy or a container: pooled keep-alive
 * connections per origin, the request head written in one call, and a strict response
 * parser. It replaced undici on the hot path because it costs about a quarter less CPU per
 * request (README, "Hot path"); the client side stays on node:http's llhttp.
 *
 * Strictness (RFC 9112), so a broken or hostile upstream cannot desynchronize a connection:
 * a malformed status line or header, obs-fold, both Transfer-Encoding and Content-Length,
 * differing Content-Lengths, a transfer coding other than chunked, a malformed chunk, or a head
 * over 64 KB fail the request (502 when nothing was sent to the client yet) and close that
 * connection. A connection is reused only after a complete, well-framed exchange.
 */
import net from 'node:net';
import type { Readable } from 'node:stream';

const MAX_HEAD = 64 * 1024;
const MAX_CHUNK_LINE = 1024;
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const STATUS_RE = /^HTTP\/1\.([01]) (\d{3})(?: ([\x09\x20-\x7e\x80-\xff]*))?$/;
const CRLF2 = Buffer.from('\r\n\r\n');

export type UpstreamFailure = 'connect' | 'timeout' | 'broken';

export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
  constructor(
    readonly kind: UpstreamFailure,
    message: string,
  ) {
    super(message);
  }
}

/** Receives one response. Methods are called in order: head, data*, end | error. */
export interface ResponseSink {
  /** 1xx answers are skipped. `headers` is flat: name, value, name, value... */
  onHead(status: number, statusText: string, headers: string[]): void;
  /**
   * `last`: this chunk completes a Content-Length body (onEnd follows at once), so the sink
   * may send it and end in one write. false: stop reading until `resume()` is called.
   */
  onData(chunk: Buffer, last: boolean): boolean;
  onEnd(): void;
  /** `started`: onHead was already called. Never called after onEnd. */
  onError(err: UpstreamError, started: boolean): void;
}

export interface UpstreamRequestSpec {
  method: string;
  /** Request line and header lines, CRLF-terminated, without the final empty line. */
  head: string;
  /** The request body, streamed; null when there is none. */
  body: Readable | null;
  /** The body's length when known (Content-Length is in `head`); undefined: chunked. */
  bodyLength: number | undefined;
}

export interface RequestHandle {
  /** Stops the exchange and closes its connection (client gone). */
  abort(): void;
  /** Resumes reading after onData returned false. */
  resume(): void;
}

export interface PoolOptions {
  host: string;
  port: number;
  maxConnections: number;
  /** Requests waiting for a connection beyond maxConnections; more fail at once. */
  maxQueue: number;
  connectTimeoutMs: number;
  /** Response head must start within this, and the body may not stall longer. */
  responseTimeoutMs: number;
  /** Idle keep-alive connections are closed after this. */
  idleTimeoutMs: number;
}

/** One origin's connections. */
export class OriginPool {
  readonly #opts: PoolOptions;
  readonly #idle: Conn[] = [];
  #open = 0;
  readonly #queue: (() => void)[] = [];
  #closed = false;

  constructor(opts: PoolOptions) {
    this.#opts = opts;
  }

  get openConnections(): number {
    return this.#open;
  }

  request(spec: UpstreamRequestSpec, sink: ResponseSink): RequestHandle {
    const exchange = new Exchange(this, spec, sink, this.#opts);
    this.#acquire((conn, reused) => exchange.start(conn, reused), (err) => exchange.fail(err));
    return exchange;
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.socket.destroy();
    for (const q of this.#queue.splice(0)) q();
  }

  /** Hands out an idle connection, a new one, or queues (bounded). */
  #acquire(use: (c: Conn, reused: boolean) => void, fail: (err: UpstreamError) => void): void {
    if (this.#closed) return fail(new UpstreamError('connect', 'the connection pool is closed'));
    const idle = this.#idle.pop();
    if (idle !== undefined) return use(idle, true);
    if (this.#open < this.#opts.maxConnections) {
      this.#open++;
      const socket = net.connect({ host: this.#opts.host, port: this.#opts.port });
      socket.setNoDelay(true);
      const timer = setTimeout(() => socket.destroy(new UpstreamError('connect', `connect timed out after ${this.#opts.connectTimeoutMs} ms`)), this.#opts.connectTimeoutMs);
      const onError = (err: Error) => {
        clearTimeout(timer);
        fail(err instanceof UpstreamError ? err : new UpstreamError('connect', err.message));
      };
      socket.once('error', onError);
      const conn = new Conn(socket, () => this.#released(conn));
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        socket.setKeepAlive(true, 30_000);
        use(conn, false);
      });
      return;
    }
    if (this.#queue.length >= this.#opts.maxQueue) {
      return fail(new UpstreamError('connect', `all ${this.#opts.maxConnections} connections to ${this.#opts.host}:${this.#opts.port} are busy and ${this.#opts.maxQueue} requests wait`));
    }
    this.#queue.push(() => this.#acquire(use, fail));
  }

  /** A finished exchange gives its connection back for reuse. */
  park(conn: Conn): void {
    if (this.#closed) return void conn.socket.destroy();
    conn.socket.setTimeout(this.#opts.idleTimeoutMs);
    // The last exchange may have paused it for backpressure.
    conn.socket.resume();
    this.#idle.push(conn);
    this.#queue.shift()?.();
  }

  /** A connection closed (any state): room for a queued request. */
  #released(conn: Conn): void {
    this.#open--;
    const i = this.#idle.indexOf(conn);
    if (i !== -1) this.#idle.splice(i, 1);
    this.#queue.shift()?.();
  }
}

/**
 * One upstream connection. Its socket listeners are set once, for its whole life, and route
 * to the exchange it serves; while idle, any byte, timeout or end closes it (a response
 * nobody asked for would break HTTP's framing).
 */
class Conn {
  readonly socket: net.Socket;
  exchange: Exchange | undefined;

  constructor(socket: net.Socket, released: () => void) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => (this.exchange !== undefined ? this.exchange.onData(d) : socket.destroy()));
    socket.on('timeout', () => (this.exchange !== undefined ? this.exchange.onTimeout() : socket.destroy()));
    socket.on('end', () => {
      if (this.exchange === undefined) socket.destroy();
    });
    socket.on('error', (err: Error) => this.exchange?.onClose(err));
    socket.on('close', () => {
      this.exchange?.onClose(false);
      released();
    });
  }
}

type Framing = { kind: 'none' } | { kind: 'length'; left: number } | { kind: 'chunked' } | { kind: 'close' };

/** One request/response on one connection. */
class Exchange implements RequestHandle {
  readonly #pool: OriginPool;
  readonly #spec: UpstreamRequestSpec;
  readonly #sink: ResponseSink;
  readonly #opts: PoolOptions;
  #conn: Conn | undefined;
  #reused = false;
  #head: Buffer | undefined;
  #started = false;
  #framing: Framing = { kind: 'none' };
  #reusable = true;
  #bodySent = false;
  #gotBytes = false;
  #done = false;
  // chunked decoder state
  #chunkLeft = 0;
  #chunkState: 'size' | 'data' | 'data-crlf' | 'trailer' = 'size';
  #line = '';

  constructor(pool: OriginPool, spec: UpstreamRequestSpec, sink: ResponseSink, opts: PoolOptions) {
    this.#pool = pool;
    this.#spec = spec;
    this.#sink = sink;
    this.#opts = opts;
  }

  start(conn: Conn, reused: boolean): void {
    if (this.#done) return this.#pool.park(conn);
    this.#conn = conn;
    conn.exchange = this;
    this.#reused = reused;
    const socket = conn.socket;
    socket.setTimeout(this.#opts.responseTimeoutMs);
    const { body, head, bodyLength } = this.#spec;
    if (body === null) {
      this.#bodySent = true;
      // latin1: header bytes go out exactly as llhttp read them (and it is the cheaper encoding).
      socket.write(`${head}\r\n`, 'latin1');
      return;
    }
    socket.write(bodyLength === undefined ? `${head}transfer-encoding: chunked\r\n\r\n` : `${head}\r\n`, 'latin1');
    this.#sendBody(socket, body, bodyLength === undefined);
  }

  abort(): void {
    if (this.#done) return;
    this.#done = true;
    this.#conn?.socket.destroy();
    this.#spec.body?.unpipe();
  }

  resume(): void {
    if (!this.#done) this.#conn?.socket.resume();
  }

  fail(err: UpstreamError): void {
    if (this.#done) return;
    this.#done = true;
    this.#conn?.socket.destroy();
    this.#sink.onError(err, this.#started);
  }

  #sendBody(socket: net.Socket, body: Readable, chunked: boolean): void {
    body.on('data', (chunk: Buffer) => {
      if (this.#done) return;
      const ok = chunked ? socket.write(`${chunk.length.toString(16)}\r\n`) && socket.write(chunk) && socket.write('\r\n') : socket.write(chunk);
      if (!ok) {
        body.pause();
        socket.once('drain', () => body.resume());
      }
    });
    body.once('end', () => {
      if (chunked && !this.#done) socket.write('0\r\n\r\n');
      this.#bodySent = true;
      this.#maybeFinish();
    });
    body.once('error', () => this.abort());
    body.once('aborted', () => this.abort());
  }

  onData(data: Buffer): void {
    this.#gotBytes = true;
    if (this.#done) return;
    try {
      if (!this.#started) {
        data = this.#parseHead(data);
        if (!this.#started) return;
      }
      this.#body(data);
    } catch (err) {
      this.fail(err instanceof UpstreamError ? err : new UpstreamError('broken', (err as Error).message));
    }
  }

  /** Accumulates and parses the head; returns what follows it (or nothing). */
  #parseHead(data: Buffer): Buffer {
    let buf = this.#head === undefined ? data : Buffer.concat([this.#head, data]);
    for (;;) {
      const end = buf.indexOf(CRLF2);
      if (end === -1) {
        if (buf.length > MAX_HEAD) throw new UpstreamError('broken', `response head larger than ${MAX_HEAD} bytes`);
        this.#head = buf;
        return Buffer.alloc(0);
      }
      if (end > MAX_HEAD) throw new UpstreamError('broken', `response head larger than ${MAX_HEAD} bytes`);
      const text = buf.toString('latin1', 0, end);
      const rest = buf.subarray(end + 4);
      const status = this.#head1(text);
      if (status < 200) {
        // 1xx: informational; the final response follows on the same connection.
        buf = rest;
        this.#head = undefined;
        if (buf.length === 0) return buf;
        continue;
      }
      this.#head = undefined;
      return rest;
    }
  }

  /** Parses one head; calls onHead for a final (>= 200) response. Returns the status. */
  #head1(text: string): number {
    const lines = text.split('\r\n');
    const m = STATUS_RE.exec(lines[0] ?? '');
    if (m === null) throw new UpstreamError('broken', `malformed status line ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
    const status = Number(m[2]);
    const headers: string[] = [];
    let contentLength: number | undefined;
    let chunked = false;
    let te = false;
    let close = m[1] === '0';
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] as string;
      const colon = line.indexOf(':');
      const name = colon > 0 ? line.slice(0, colon) : '';
      // RFC 9112 §5.1/§5.2: no space before the colon, no obs-fold, no bare CR/LF/NUL.
      if (!TOKEN_RE.test(name)) throw new UpstreamError('broken', `malformed response header line ${JSON.stringify(line.slice(0, 80))}`);
      const value = trimOws(line, colon + 1);
      if (/[\0\r\n]/.test(value)) throw new UpstreamError('broken', `response header ${name} has a forbidden byte`);
      const lower = name.toLowerCase();
      if (lower === 'content-length') {
        if (!/^\d{1,15}$/.test(value)) throw new UpstreamError('broken', `malformed Content-Length ${JSON.stringify(value)}`);
        const n = Number(value);
        if (contentLength !== undefined && contentLength !== n) throw new UpstreamError('broken', 'differing Content-Length headers');
        contentLength = n;
      } else if (lower === 'transfer-encoding') {
        te = true;
        if (value.toLowerCase() !== 'chunked' || chunked) throw new UpstreamError('broken', `unsupported Transfer-Encoding ${JSON.stringify(value)}`);
        chunked = true;
      } else if (lower === 'connection') {
        for (const t of value.split(',')) if (t.trim().toLowerCase() === 'close') close = true;
      }
      headers.push(name, value);
    }
    if (status < 200) return status;
    // RFC 9112 §6.1: a response with both is an attack or a bug; refuse it.
    if (te && contentLength !== undefined) throw new UpstreamError('broken', 'response has both Transfer-Encoding and Content-Length');
    const noBody = this.#spec.method === 'HEAD' || status === 204 || status === 304;
    if (noBody) this.#framing = { kind: 'none' };
    else if (chunked) this.#framing = { kind: 'chunked' };
    else if (contentLength !== undefined) this.#framing = { kind: 'length', left: contentLength };
    else {
      this.#framing = { kind: 'close' };
      close = true;
    }
    if (close) this.#reusable = false;
    this.#started = true;
    this.#sink.onHead(status, m[3] ?? '', headers);
    if (this.#done) return status; // the sink aborted
    if (this.#framing.kind === 'none' || (this.#framing.kind === 'length' && this.#framing.left === 0)) this.#bodyDone();
    return status;
  }

  #body(data: Buffer): void {
    const f = this.#framing;
    if (this.#done || data.length === 0) return;
    if (f.kind === 'length') {
      if (data.length > f.left) throw new UpstreamError('broken', 'response body longer than its Content-Length');
      f.left -= data.length;
      this.#deliver(data, f.left === 0);
      if (f.left === 0) this.#bodyDone();
    } else if (f.kind === 'close') {
      this.#deliver(data, false);
    } else if (f.kind === 'chunked') {
      this.#chunks(data);
    } else {
      throw new UpstreamError('broken', 'bytes after a response without a body');
    }
  }

  /** RFC 9112 §7.1: size [;ext] CRLF data CRLF ... 0 CRLF [trailers] CRLF. */
  #chunks(data: Buffer): void {
    let i = 0;
    while (i < data.length && !this.#done) {
      if (this.#chunkState === 'data') {
        const n = Math.min(this.#chunkLeft, data.length - i);
        this.#deliver(data.subarray(i, i + n), false);
        this.#chunkLeft -= n;
        i += n;
        if (this.#chunkLeft === 0) this.#chunkState = 'data-crlf';
        continue;
      }
      // Line-oriented states: size line, the CRLF after data, trailer lines.
      const nl = data.indexOf(0x0a, i);
      const part = data.toString('latin1', i, nl === -1 ? data.length : nl + 1);
      this.#line += part;
      i = nl === -1 ? data.length : nl + 1;
      if (this.#line.length > MAX_CHUNK_LINE) throw new UpstreamError('broken', 'chunk line too long');
      if (nl === -1) return;
      const line = this.#line;
      this.#line = '';
      if (!line.endsWith('\r\n')) throw new UpstreamError('broken', 'bare LF in chunked framing');
      const content = line.slice(0, -2);
      if (this.#chunkState === 'data-crlf') {
        if (content !== '') throw new UpstreamError('broken', 'missing CRLF after chunk data');
        this.#chunkState = 'size';
      } else if (this.#chunkState === 'size') {
        const m = /^([0-9a-fA-F]{1,15})(?:[ \t]*;.*)?$/.exec(content);
        if (m === null) throw new UpstreamError('broken', `malformed chunk size ${JSON.stringify(content.slice(0, 40))}`);
        this.#chunkLeft = parseInt(m[1] as string, 16);
        this.#chunkState = this.#chunkLeft === 0 ? 'trailer' : 'data';
      } else if (content === '') {
        // End of trailers (their fields are not forwarded).
        if (i !== data.length) throw new UpstreamError('broken', 'bytes after the last chunk');
        this.#bodyDone();
      }
    }
  }

  #deliver(chunk: Buffer, last: boolean): void {
    if (!this.#sink.onData(chunk, last)) this.#conn?.socket.pause();
  }

  #bodyDone(): void {
    if (this.#done) return;
    this.#framing = { kind: 'none' };
    this.#responseDone = true;
    this.#maybeFinish();
  }

  #responseDone = false;

  /** Both directions complete: hand the connection back (or close it), then tell the sink. */
  #maybeFinish(): void {
    if (this.#done || !this.#responseDone) return;
    if (!this.#bodySent) {
      // The upstream answered before reading the whole body: the connection is unusable.
      this.#reusable = false;
      this.#spec.body?.unpipe();
    }
    this.#done = true;
    const conn = this.#conn as Conn;
    conn.exchange = undefined;
    if (this.#reusable && this.#bodySent) this.#pool.park(conn);
    else conn.socket.destroy();
    this.#sink.onEnd();
  }

  onTimeout(): void {
    this.fail(new UpstreamError(this.#started ? 'broken' : 'timeout', this.#started ? 'the response body stalled' : 'no response in time'));
  }

  onClose(err: Error | false): void {
    if (this.#done) return;
    if (this.#framing.kind === 'close' && this.#started && !(err instanceof Error)) {
      // Close-delimited body: the close is its end.
      this.#framing = { kind: 'none' };
      this.#responseDone = true;
      this.#bodySent = true;
      this.#reusable = false;
      this.#maybeFinish();
      return;
    }
    const message = err instanceof Error ? err.message : 'the connection closed';
    // A reused keep-alive connection the upstream closed just as we sent: retry on a fresh one.
    if (this.#reused && !this.#gotBytes && this.#spec.body === null) {
      this.#conn = undefined;
      this.#reused = false;
      const retry = this.#pool.request(this.#spec, this.#sink) as Exchange;
      this.#done = true;
      this.abort = () => retry.abort();
      this.resume = () => retry.resume();
      return;
    }
    this.fail(new UpstreamError('broken', message));
  }
}

/** RFC 9110 §5.5: the field value without leading and trailing spaces and tabs. */
function trimOws(line: string, from: number): string {
  let start = from;
  let end = line.length;
  while (start < end && (line.charCodeAt(start) === 0x20 || line.charCodeAt(start) === 0x09)) start++;
  while (end > start && (line.charCodeAt(end - 1) === 0x20 || line.charCodeAt(end - 1) === 0x09)) end--;
  return line.slice(start, end);
}
