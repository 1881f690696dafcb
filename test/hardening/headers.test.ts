/**
 * Forwarding headers: a client's X-Forwarded-* and X-Request-Id are replaced unless the peer is
 * in --trusted-proxies (IPs or CIDRs); Connection cannot strip what the gateway adds; hop-by-hop
 * fields are removed both ways; a gzip response arrives byte for byte.
 */
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { startCountingApp, type CountingApp } from './support/backends.js';
import { headerOf, RawConn, responseComplete, statusOf } from './support/raw.js';
import { startStack, type Stack } from './support/stack.js';

async function get(port: number, bytes: string): Promise<{ text: string; body: Buffer }> {
  const c = await RawConn.connect(port);
  try {
    c.write(bytes);
    await c.until(() => responseComplete(c.text), 'the response');
    const at = c.data.indexOf('\r\n\r\n');
    return { text: c.text, body: c.data.subarray(at + 4) };
  } finally {
    c.destroy();
  }
}

describe('hardening: forwarding and hop-by-hop headers', () => {
  let untrusting: Stack;
  let trusting: Stack;
  let app: CountingApp;
  const gz = gzipSync(Buffer.from('hello '.repeat(1000)));

  before(async () => {
    untrusting = await startStack({ trustedProxies: ['10.0.0.0/8', '192.0.2.7'] });
    trusting = await startStack({ trustedProxies: ['127.0.0.0/8'] });
    app = await startCountingApp((req, res) => {
      if (req.url === '/gzip') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-encoding': 'gzip', 'content-length': gz.length, vary: 'accept-encoding' });
        return res.end(gz);
      }
      res.writeHead(200, {
        'content-type': 'text/plain',
        connection: 'keep-alive, x-app-private',
        'keep-alive': 'timeout=77',
        'x-app-private': 'secret',
        'proxy-connection': 'keep-alive',
        trailer: 'x-t',
        upgrade: 'h2c',
        'x-app-public': 'ok',
      });
      res.end('ok');
    });
    await untrusting.route('hdr', app.port);
    await trusting.route('hdr', app.port);
  });
  after(async () => {
    await untrusting?.close();
    await trusting?.close();
    await app?.close();
  });

  const spoof =
    'X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Request-Id: spoofed-id\r\nForwarded: for=6.6.6.6\r\n';

  it('an untrusted peer: X-Forwarded-*, Forwarded and X-Request-Id are replaced, not appended to', async () => {
    await get(untrusting.gatewayPort, `GET / HTTP/1.1\r\nHost: hdr.test.priv\r\n${spoof}\r\n`);
    const h = app.last?.headers ?? {};
    assert.equal(h['x-forwarded-for'], '127.0.0.1, 127.0.0.1'); // gateway's view of the client, then the local proxy's of the gateway
    assert.equal(h['x-forwarded-proto'], 'http');
    assert.equal(h['x-forwarded-host'], 'hdr.test.priv');
    assert.notEqual(h['x-request-id'], 'spoofed-id');
    assert.equal(h.forwarded, undefined);
  });

  it('a peer inside a trusted CIDR: its values are kept and appended to', async () => {
    await get(trusting.gatewayPort, `GET / HTTP/1.1\r\nHost: hdr.test.priv\r\n${spoof}\r\n`);
    const h = app.last?.headers ?? {};
    assert.equal(h['x-forwarded-for'], '6.6.6.6, 127.0.0.1, 127.0.0.1');
    assert.equal(h['x-forwarded-proto'], 'https');
    assert.equal(h['x-forwarded-host'], 'evil.example');
    assert.equal(h['x-request-id'], 'spoofed-id');
  });

  it('Connection naming the forwarding headers cannot strip them', async () => {
    await get(untrusting.gatewayPort, `GET / HTTP/1.1\r\nHost: hdr.test.priv\r\nConnection: X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, X-Request-Id, keep-alive\r\n\r\n`);
    const h = app.last?.headers ?? {};
    assert.equal(h['x-forwarded-for'], '127.0.0.1, 127.0.0.1');
    assert.equal(h['x-forwarded-host'], 'hdr.test.priv');
    assert.equal(h['x-forwarded-proto'], 'http');
    assert.match(String(h['x-request-id']), /^[0-9a-f-]{36}$/);
  });

  it('hop-by-hop request fields, and those Connection names, do not reach the app', async () => {
    await get(
      untrusting.gatewayPort,
      'GET / HTTP/1.1\r\nHost: hdr.test.priv\r\nConnection: keep-alive, X-Client-Private\r\nKeep-Alive: timeout=100\r\nX-Client-Private: 1\r\n' +
        'Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: x-t\r\nX-Tgw-Container: c999\r\nX-Client-Public: 1\r\n\r\n',
    );
    const h = app.last?.headers ?? {};
    for (const name of ['keep-alive', 'x-client-private', 'proxy-connection', 'te', 'trailer', 'x-tgw-container']) {
      assert.equal(h[name], undefined, `${name} reached the app`);
    }
    assert.equal(h['x-client-public'], '1');
  });

  it('hop-by-hop response fields, and those the app\'s Connection names, do not reach the client', async () => {
    const { text } = await get(untrusting.gatewayPort, 'GET / HTTP/1.1\r\nHost: hdr.test.priv\r\n\r\n');
    assert.equal(statusOf(text), 200);
    for (const name of ['x-app-private', 'proxy-connection', 'trailer', 'upgrade']) assert.equal(headerOf(text, name), undefined, `${name} reached the client`);
    assert.notEqual(headerOf(text, 'keep-alive'), 'timeout=77', "the app's own Keep-Alive reached the client");
    assert.equal(headerOf(text, 'x-app-public'), 'ok');
  });

  it('a gzip response keeps Content-Encoding, Content-Length and its bytes', async () => {
    const { text, body } = await get(untrusting.gatewayPort, 'GET /gzip HTTP/1.1\r\nHost: hdr.test.priv\r\nAccept-Encoding: gzip\r\n\r\n');
    assert.equal(headerOf(text, 'content-encoding'), 'gzip');
    assert.equal(headerOf(text, 'content-length'), String(gz.length));
    assert.ok(body.equals(gz), 'body bytes differ');
  });
});
