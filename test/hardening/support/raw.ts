/**
 * Raw-byte HTTP for hardening tests: exact bytes on a node:net socket, everything the peer
 * sends collected until it closes. Every wait has a deadline; nothing sleeps.
 */
import net from 'node:net';

export class RawConn {
  readonly socket: net.Socket;
  #data = Buffer.alloc(0);
  #closed = false;
  /** 'end' (FIN) or 'reset' (RST / error), once closed. */
  how: 'end' | 'reset' | undefined;
  #waiters = new Set<() => void>();

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#data = Buffer.concat([this.#data, d]);
      this.#wake();
    });
    socket.on('end', () => (this.how ??= 'end'));
    socket.on('error', () => (this.how = 'reset'));
    socket.on('close', () => {
      this.#closed = true;
      this.how ??= 'end';
      this.#wake();
    });
  }

  static connect(port: number, opts: { localAddress?: string } = {}): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host: '127.0.0.1', ...opts });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawConn(s));
      });
    });
  }

  #wake(): void {
    for (const w of this.#waiters) w();
  }

  get data(): Buffer {
    return this.#data;
  }

  get text(): string {
    return this.#data.toString('latin1');
  }

  get closed(): boolean {
    return this.#closed;
  }

  write(bytes: string | Buffer): void {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  }

  /** Resolves when `cond` holds; rejects after `timeoutMs`. */
  until(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      const check = () => {
        if (cond()) {
          done();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`raw connection: ${what} not within ${timeoutMs} ms; got ${JSON.stringify(this.text.slice(0, 300))}`));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }

  waitClosed(timeoutMs = 5_000): Promise<void> {
    return this.until(() => this.#closed, 'close', timeoutMs);
  }

  /** A complete response head has arrived. */
  waitHead(timeoutMs = 5_000): Promise<void> {
    return this.until(() => this.text.includes('\r\n\r\n') || this.#closed, 'a response head', timeoutMs);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Status of the first response in `text`, or undefined when there is none. */
export function statusOf(text: string): number | undefined {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Header value (first, case-insensitive) of the first response head in `text`. */
export function headerOf(text: string, name: string): string | undefined {
  const head = text.split('\r\n\r\n')[0] ?? '';
  for (const line of head.split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    if (i > 0 && line.slice(0, i).toLowerCase() === name.toLowerCase()) return line.slice(i + 1).trim();
  }
  return undefined;
}

/** Sends `bytes`, half-closes nothing, waits until the server closes (or `timeoutMs`), returns all it sent. */
export async function exchange(port: number, bytes: string | Buffer, timeoutMs = 5_000): Promise<{ text: string; status: number | undefined; closed: boolean }> {
  const c = await RawConn.connect(port);
  try {
    c.write(bytes);
    // A rejected request closes the connection; an accepted one answers and stays open.
    await c.until(() => c.closed || responseComplete(c.text), 'a complete response or close', timeoutMs);
    return { text: c.text, status: statusOf(c.text), closed: c.closed };
  } finally {
    c.destroy();
  }
}

/** One complete response with a Content-Length body is in `text`. */
export function responseComplete(text: string): boolean {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const len = headerOf(text, 'content-length');
  if (len !== undefined) return text.length - end - 4 >= Number(len);
  return /chunked/i.test(headerOf(text, 'transfer-encoding') ?? '') && text.endsWith('\r\n0\r\n\r\n');
}
