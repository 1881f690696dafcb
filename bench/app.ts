/**
 * The tenant app every stack forwards to: a tiny node:http server, run as its own process
 * (`node dist/bench/app.js <port>`), listening on 127.0.0.1 only.
 *
 *   GET /      16-byte body
 *   GET /1m    1 MiB, streamed in 64 KiB chunks with backpressure
 *   Upgrade    WebSocket handshake (RFC 6455 §4.2.2), then one text frame "hi"; held open
 */
import { createHash } from 'node:crypto';
import http from 'node:http';

export const SMALL_BODY = 'ok from tenant!\n'; // 16 bytes
const CHUNK = Buffer.alloc(64 * 1024, 'x');
const ONE_MIB_CHUNKS = 16;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export function createTenantApp(): http.Server {
  const server = http.createServer((req, res) => {
    if (req.url === '/1m') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(CHUNK.length * ONE_MIB_CHUNKS) });
      let sent = 0;
      const pump = (): void => {
        while (sent < ONE_MIB_CHUNKS) {
          sent++;
          if (!res.write(CHUNK)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(SMALL_BODY.length) });
    res.end(SMALL_BODY);
  });
  server.on('upgrade', (req, socket) => {
    const key = req.headers['sec-websocket-key'];
    if (typeof key !== 'string') {
      socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
      return;
    }
    const accept = createHash('sha1').update(key + WS_GUID).digest('base64');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`,
    );
    socket.write(Buffer.from([0x81, 0x02, 0x68, 0x69])); // FIN + text, "hi"
    socket.on('error', () => socket.destroy());
  });
  // Proxies keep pooled connections for up to a minute: never close one under them.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 121_000;
  server.requestTimeout = 0;
  server.maxRequestsPerSocket = 0;
  return server;
}

if (process.argv[1]?.endsWith('/bench/app.js') === true) {
  const port = Number(process.argv[2]);
  if (!Number.isInteger(port) || port <= 0) {
    process.stderr.write('usage: node dist/bench/app.js <port>\n');
    process.exit(2);
  }
  createTenantApp().listen(port, '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
}
