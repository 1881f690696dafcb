/**
 * Backends that count what reaches them: an HTTP app, and a raw TCP server for malformed or
 * faulty responses. Tests assert a rejected request left every count at zero.
 */
import http from 'node:http';
import net from 'node:net';

export interface CountingApp {
  port: number;
  /** Request heads received. */
  requests: number;
  /** Requests whose body arrived completely. */
  completed: number;
  /** Requests whose connection closed before the response finished. */
  aborted: number;
  connections: number;
  last: { method: string; url: string; headers: http.IncomingHttpHeaders; rawHeaders: string[]; body: Buffer } | undefined;
  server: http.Server;
  close(): Promise<void>;
}

/** An app that answers 200 with the request as JSON, or runs `handler` once the body arrived. */
export async function startCountingApp(handler?: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void): Promise<CountingApp> {
  const app: CountingApp = {
    port: 0,
    requests: 0,
    completed: 0,
    aborted: 0,
    connections: 0,
    last: undefined,
    server: undefined as unknown as http.Server,
    close: async () => {},
  };
  const server = http.createServer((req, res) => {
    app.requests++;
    res.on('close', () => {
      if (!res.writableFinished) app.aborted++;
    });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', () => {});
    req.on('end', () => {
      app.completed++;
      const body = Buffer.concat(chunks);
      app.last = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body };
      if (handler) return handler(req, res, body);
      const text = JSON.stringify({ url: req.url, headers: req.headers, bodyBytes: body.length });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(text);
    });
  });
  server.on('connection', () => app.connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  app.port = (server.address() as net.AddressInfo).port;
  app.server = server;
  app.close = () =>
    new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
  return app;
}

export interface RawBackend {
  port: number;
  connections: number;
  /** Bytes received, all connections. */
  received: () => string;
  close(): Promise<void>;
}

/** A TCP server that hands every connection to `onRequest` once a request head arrived. */
export async function startRawBackend(onRequest: (socket: net.Socket, head: string) => void): Promise<RawBackend> {
  let received = '';
  const sockets = new Set<net.Socket>();
  const b: RawBackend = { port: 0, connections: 0, received: () => received, close: async () => {} };
  const server = net.createServer((socket) => {
    b.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = '';
    let answered = false;
    socket.on('data', (d: Buffer) => {
      received += d.toString('latin1');
      buf += d.toString('latin1');
      if (!answered && buf.includes('\r\n\r\n')) {
        answered = true;
        onRequest(socket, buf);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  b.port = (server.address() as net.AddressInfo).port;
  b.close = () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
  return b;
}
