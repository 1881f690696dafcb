/**
 * Request smuggling and malformed requests, as raw bytes (the HAProxy reg-test cases of the
 * reliability bar): each gets 400 (414/431 for size) and reaches neither the local proxy nor
 * the app. A counting app and the local proxy's request count prove "nothing reached".
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCountingApp, startRawBackend, type CountingApp } from './support/backends.js';
import { exchange, headerOf, RawConn, statusOf } from './support/raw.js';
import { startStack, type Stack } from './support/stack.js';

describe('hardening: HTTP parsing', () => {
  let stack: Stack;
  let app: CountingApp;
  let host: string;

  before(async () => {
    stack = await startStack();
    app = await startCountingApp();
    host = await stack.route('acme', app.port);
  });
  after(async () => {
    await stack?.close();
    await app?.close();
  });

  /** The raw request, with `{host}` standing for the routed tenant's name. */
  const CASES: [name: string, bytes: string, status: number][] = [
    ['CL and TE both', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
    ['TE and CL both (TE first)', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n', 400],
    ['duplicate CL, same value', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx', 400],
    ['duplicate CL, different values', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx', 400],
    ['CL list', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1, 1\r\n\r\nx', 400],
    ['CL with sign', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: +1\r\n\r\nx', 400],
    ['CL negative', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\nx', 400],
    ['CL hex', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0x1\r\n\r\nx', 400],
    ['CL empty', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: \r\n\r\nx', 400],
    ['CL with inner space', 'POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1 1\r\n\r\nx', 400],
    ['TE chunked, identity', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n', 400],
    ['TE identity', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: identity\r\n\r\n', 400],
    ['TE xchunked', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n', 400],
    ['TE gzip, chunked', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 400],
    ['TE chunked twice', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
    ['TE trailing comma', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n', 400],
    ['TE vertical tab', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n', 400],
    ['TE space before colon', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n', 400],
    ['TE in HTTP/1.0', 'POST / HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
    ['obs-fold', 'GET / HTTP/1.1\r\nHost: {host}\r\nX-Foo: a\r\n b\r\n\r\n', 400],
    ['obs-fold of TE', 'POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n', 400],
    ['header name with CTL', 'GET / HTTP/1.1\r\nHost: {host}\r\nX\x01Foo: b\r\n\r\n', 400],
    ['header name with space', 'GET / HTTP/1.1\r\nHost: {host}\r\nX Foo: b\r\n\r\n', 400],
    ['header name with quote', 'GET / HTTP/1.1\r\nHost: {host}\r\nX"Foo: b\r\n\r\n', 400],
    ['header name with UTF-8', 'GET / HTTP/1.1\r\nHost: {host}\r\nX\xc3\xa9: b\r\n\r\n', 400],
    ['NUL in a header value', 'GET / HTTP/1.1\r\nHost: {host}\r\nX-Foo: a\x00b\r\n\r\n', 400],
    ['bare CR', 'GET / HTTP/1.1\r\nHost: {host}\rX-Foo: b\r\n\r\n', 400],
    ['two different Hosts', 'GET / HTTP/1.1\r\nHost: {host}\r\nHost: other.test.priv\r\n\r\n', 400],
    ['two equal Hosts', 'GET / HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n\r\n', 400],
    ['no Host', 'GET / HTTP/1.1\r\nX: y\r\n\r\n', 400],
    ['absolute-form vs Host', 'GET http://other.test.priv/ HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['absolute-form with userinfo', 'GET http://u@{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['absolute-form, other scheme', 'GET ftp://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['asterisk-form', 'OPTIONS * HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['fragment in target', 'GET /a#b HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['Host with /', 'GET / HTTP/1.1\r\nHost: {host}/x\r\n\r\n', 400],
    ['Host with ?', 'GET / HTTP/1.1\r\nHost: {host}?x\r\n\r\n', 400],
    ['Host with @', 'GET / HTTP/1.1\r\nHost: evil@{host}\r\n\r\n', 400],
    ['Host with space', 'GET / HTTP/1.1\r\nHost: {host} x\r\n\r\n', 400],
    ['Host with bad port', 'GET / HTTP/1.1\r\nHost: {host}:80x\r\n\r\n', 400],
    ['lowercase method', 'get / HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['HTTP/1.2', 'GET / HTTP/1.2\r\nHost: {host}\r\n\r\n', 400],
    ['space in target', 'GET /a b HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['CTL in target', 'GET /a\x01b HTTP/1.1\r\nHost: {host}\r\n\r\n', 400],
    ['HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400],
    ['CONNECT', 'CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n', 405],
    ['request target > 8 KB', `GET /${'a'.repeat(9_000)} HTTP/1.1\r\nHost: {host}\r\n\r\n`, 414],
    ['request line > 16 KB', `GET /${'a'.repeat(20_000)} HTTP/1.1\r\nHost: {host}\r\n\r\n`, 414],
    ['headers > 16 KB', `GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: ${'a'.repeat(17_000)}\r\n\r\n`, 431],
    ['many headers > 16 KB', `GET / HTTP/1.1\r\nHost: {host}\r\n${'X-A: b\r\n'.repeat(3_000)}\r\n`, 431],
    ['Host of 10 KB', `GET / HTTP/1.1\r\nHost: ${'a'.repeat(10_240)}\r\n\r\n`, 400],
  ];

  for (const [name, bytes, status] of CASES) {
    it(`${name} -> ${status}, nothing forwarded`, async () => {
      const before = { app: app.requests, conns: app.connections, local: stack.counts.local };
      const r = await exchange(stack.gatewayPort, bytes.replaceAll('{host}', host));
      assert.equal(r.status, status, r.text.slice(0, 200));
      assert.ok(r.closed || headerOf(r.text, 'connection') === 'close', 'a rejected request closes the connection');
      assert.deepEqual({ app: app.requests, conns: app.connections, local: stack.counts.local }, before);
    });
  }

  it('a well-formed request of each framing is forwarded (the cases above are not rejected by accident)', async () => {
    const before = app.completed;
    for (const bytes of [
      `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      `POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 3\r\n\r\nabc`,
      `POST / HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
      `GET / HTTP/1.0\r\nHost: ${host}\r\n\r\n`,
      `GET /${'a'.repeat(8_000)} HTTP/1.1\r\nHost: ${host}\r\nX-Big: ${'b'.repeat(7_000)}\r\n\r\n`,
    ]) {
      const r = await exchange(stack.gatewayPort, bytes);
      assert.equal(r.status, 200, r.text.slice(0, 300));
    }
    assert.equal(app.completed, before + 5);
  });

  it('absolute-form naming the Host is routed and forwarded in origin-form', async () => {
    const r = await exchange(stack.gatewayPort, `GET http://${host.toUpperCase()}:80/p?q=1 HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    assert.equal(r.status, 200, r.text);
    assert.equal(app.last?.url, '/p?q=1');
  });

  it('a malformed chunk mid-body: the app never gets a complete request, the client no clean answer', async () => {
    for (const body of ['1x\r\nx\r\n0\r\n\r\n', '1\nx\n0\n\n', '1;a=\x01\r\nx\r\n0\r\n\r\n']) {
      const completed = app.completed;
      const c = await RawConn.connect(stack.gatewayPort);
      try {
        c.write(`POST / HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n${body}`);
        await c.waitClosed();
        const status = statusOf(c.text);
        assert.ok(status === undefined || status === 400 || status === 502, `got ${c.text.slice(0, 100)}`);
        assert.equal(app.completed, completed);
      } finally {
        c.destroy();
      }
    }
  });

  it('a malformed response from the app -> 502', async () => {
    const responses = [
      'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
      'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'HTTP/1.1 2000 OK\r\n\r\n',
      'NOT HTTP AT ALL\r\n\r\n',
      'HTTP/1.1 200 OK\r\nBad Header\r\n\r\n',
      'HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n',
    ];
    for (const response of responses) {
      const raw = await startRawBackend((socket) => socket.end(response));
      try {
        // Structured name: the tenant path would retry and eject the replica (see faults.test.ts).
        const h = await stack.direct(raw.port);
        const r = await exchange(stack.gatewayPort, `GET / HTTP/1.1\r\nHost: ${h}\r\n\r\n`);
        assert.equal(r.status, 502, `${JSON.stringify(response)} -> ${r.text.slice(0, 200)}`);
      } finally {
        await raw.close();
      }
    }
  });
});
