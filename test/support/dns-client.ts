/**
 * A test-only DNS client: builds raw queries byte by byte (so tests can also build broken ones),
 * decodes answers with dns2's codec (an implementation independent of dns/wire.ts), and talks
 * UDP or TCP to a real server on 127.0.0.1. Every wait has a deadline; nothing sleeps.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { Packet } from 'dns2';

export const TYPE = { A: 1, NS: 2, SOA: 6, HINFO: 13, MX: 15, TXT: 16, AAAA: 28, OPT: 41, AXFR: 252, ANY: 255 } as const;

export interface QueryOptions {
  id?: number;
  type?: number;
  klass?: number;
  rd?: boolean;
  opcode?: number;
  edns?: { udpSize?: number; version?: number; do?: boolean };
}

let nextId = 1;

/** A well-formed query for `name` (dotted, as asked; trailing dot optional). */
export function buildQuery(name: string, opts: QueryOptions = {}): Buffer {
  const id = opts.id ?? (nextId = (nextId + 1) & 0xffff);
  const labels = name.replace(/\.$/, '').split('.').filter((l) => l !== '');
  const parts: Buffer[] = [];
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(((opts.opcode ?? 0) << 11) | (opts.rd === false ? 0 : 0x0100), 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(opts.edns ? 1 : 0, 10);
  parts.push(header);
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l, 'latin1'));
  const tail = Buffer.alloc(5);
  tail.writeUInt16BE(opts.type ?? TYPE.A, 1);
  tail.writeUInt16BE(opts.klass ?? 1, 3);
  parts.push(tail);
  if (opts.edns) {
    const opt = Buffer.alloc(11);
    opt.writeUInt16BE(TYPE.OPT, 1);
    opt.writeUInt16BE(opts.edns.udpSize ?? 1232, 3);
    opt.writeUInt32BE((((opts.edns.version ?? 0) << 16) | (opts.edns.do ? 0x8000 : 0)) >>> 0, 5);
    parts.push(opt);
  }
  return Buffer.concat(parts);
}

export function decode(buf: Buffer): Packet {
  return Packet.parse(buf);
}

/** Raw header fields, read without any codec. */
export function headerOf(buf: Buffer) {
  const flags = buf.readUInt16BE(2);
  return {
    id: buf.readUInt16BE(0),
    qr: (flags >> 15) & 1,
    opcode: (flags >> 11) & 0xf,
    aa: (flags >> 10) & 1,
    tc: (flags >> 9) & 1,
    rd: (flags >> 8) & 1,
    ra: (flags >> 7) & 1,
    rcode: flags & 0xf,
    qdcount: buf.readUInt16BE(4),
    ancount: buf.readUInt16BE(6),
    nscount: buf.readUInt16BE(8),
    arcount: buf.readUInt16BE(10),
  };
}

/** One UDP socket on 127.0.0.1 that collects every datagram it receives. */
export class UdpClient {
  readonly #socket: dgram.Socket;
  readonly #port: number;
  readonly #received: Buffer[] = [];
  #waiter: (() => void) | undefined;

  private constructor(socket: dgram.Socket, port: number) {
    this.#socket = socket;
    this.#port = port;
    socket.on('message', (msg) => {
      this.#received.push(msg);
      this.#waiter?.();
    });
  }

  static async open(serverPort: number): Promise<UdpClient> {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, '127.0.0.1', () => resolve());
    });
    return new UdpClient(socket, serverPort);
  }

  send(buf: Buffer): void {
    this.#socket.send(buf, this.#port, '127.0.0.1');
  }

  /** Waits for a datagram whose ID is `id`; returns it and everything received before it. */
  async until(id: number, timeoutMs = 3000): Promise<{ reply: Buffer; before: Buffer[] }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#received.findIndex((b) => b.length >= 2 && b.readUInt16BE(0) === id);
      if (i >= 0) {
        const before = this.#received.splice(0, i + 1);
        const reply = before.pop()!;
        return { reply, before };
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no UDP reply with id ${id} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#waiter = undefined;
    }
  }

  async exchange(query: Buffer): Promise<Buffer> {
    this.send(query);
    return (await this.until(query.readUInt16BE(0))).reply;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#socket.close(() => resolve()));
  }
}

export async function udpExchange(port: number, query: Buffer): Promise<Buffer> {
  const client = await UdpClient.open(port);
  try {
    return await client.exchange(query);
  } finally {
    await client.close();
  }
}

/** A TCP connection speaking RFC 1035 §4.2.2 framing. */
export class TcpClient {
  readonly socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #waiter: (() => void) | undefined;
  #closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#waiter?.();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#waiter?.();
    });
    socket.on('error', () => {});
  }

  static connect(port: number): Promise<TcpClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new TcpClient(socket));
      });
    });
  }

  static frame(msg: Buffer): Buffer {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(msg.length);
    return Buffer.concat([len, msg]);
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  get closed(): boolean {
    return this.#closed;
  }

  async #wait(cond: () => boolean, what: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`TCP: ${what} not within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#waiter = undefined;
    }
  }

  /** The next framed message; throws if the connection closes first. */
  async read(timeoutMs = 3000): Promise<Buffer> {
    const ready = () => this.#buffer.length >= 2 && this.#buffer.length >= 2 + this.#buffer.readUInt16BE(0);
    await this.#wait(() => ready() || this.#closed, 'a framed reply', timeoutMs);
    if (!ready()) throw new Error('TCP: connection closed before a reply');
    const len = this.#buffer.readUInt16BE(0);
    const msg = this.#buffer.subarray(2, 2 + len);
    this.#buffer = this.#buffer.subarray(2 + len);
    return msg;
  }

  waitClosed(timeoutMs = 5000): Promise<void> {
    return this.#wait(() => this.#closed, 'close', timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Sends all queries in one write (pipelined) and reads as many replies. */
export async function tcpExchange(port: number, queries: Buffer[]): Promise<Buffer[]> {
  const client = await TcpClient.connect(port);
  try {
    client.write(Buffer.concat(queries.map((q) => TcpClient.frame(q))));
    const out: Buffer[] = [];
    for (let i = 0; i < queries.length; i++) out.push(await client.read());
    return out;
  } finally {
    client.close();
  }
}
