/**
 * Backend faults, each with the status of the reliability bar: refused 502, no answer 504 at
 * --upstream-timeout, reset before headers 502, truncated body -> the client connection is
 * aborted (never a clean end), client gone -> the backend request is aborted.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startCountingApp, startRawBackend, type RawBackend } from './support/backends.js';
import { exchange, headerOf, RawConn, statusOf } from './support/raw.js';
import { startStack, type Stack } from './support/stack.js';
import { freePort, waitFor } from '../support/util.js';

const UPSTREAM_TIMEOUT_MS = 1_000;

describe('hardening: backend faults', () => {
  let stack: Stack;
  const backends: RawBackend[] = [];
  const raw = async (onRequest: Parameters<typeof startRawBackend>[0]) => {
    const b = await startRawBackend(onRequest);
    backends.push(b);
    return { b, host: await stack.direct(b.port) };
  };

  before(async () => {
    stack = await startStack({ upstreamTimeoutMs: UPSTREAM_TIMEOUT_MS, connectTimeoutMs: 1_000 });
  });
  after(async () => {
    for (const b of backends) await b.close();
    await stack?.close();
  });

  it('refused -> 502 upstream_refused, fast', async () => {
    const host = await stack.direct(await freePort());
    const t0 = Date.now();
    const r = await exchange(stack.gatewayPort, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    assert.equal(r.status, 502, r.text);
    assert.equal(headerOf(r.text, 'x-tgw-error'), 'upstream_refused');
    assert.ok(Date.now() - t0 < 1_000);
  });

  it('accepts and never answers -> 504 at the upstream timeout', async () => {
    const { host } = await raw(() => {});
    const t0 = Date.now();
    const r = await exchange(stack.gatewayPort, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 10_000);
    const elapsed = Date.now() - t0;
    assert.equal(r.status, 504, r.text);
    assert.ok(elapsed >= UPSTREAM_TIMEOUT_MS - 50 && elapsed < UPSTREAM_TIMEOUT_MS + 2_000, `after ${elapsed} ms`);
  });

  it('reset before the response head -> 502', async () => {
    const { host } = await raw((socket) => socket.resetAndDestroy());
    const r = await exchange(stack.gatewayPort, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    assert.equal(r.status, 502, r.text);
  });

  it('half a response head, then close -> 502', async () => {
    const { host } = await raw((socket) => socket.end('HTTP/1.1 200 OK\r\nContent-Le'));
    const r = await exchange(stack.gatewayPort, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    assert.equal(r.status, 502, r.text);
  });

  for (const [name, response] of [
    ['Content-Length body cut short', 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n' + 'a'.repeat(500)],
    ['chunked body without its last chunk', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n' + 'a'.repeat(500) + '\r\n'],
  ] as const) {
    it(`${name}: the bytes so far, then the client connection is aborted (never a clean end)`, async () => {
      const { host } = await raw((socket) => {
        socket.write(response);
        // Let the bytes travel before the cut, so the client sees the head and part of the body.
        setImmediate(() => socket.resetAndDestroy());
      });
      const c = await RawConn.connect(stack.gatewayPort);
      try {
        c.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
        await c.waitClosed();
        assert.equal(statusOf(c.text), 200, c.text.slice(0, 200));
        const body = c.text.slice(c.text.indexOf('\r\n\r\n') + 4);
        if (headerOf(c.text, 'content-length') !== undefined) assert.ok(body.length < 1000, 'the body looks complete');
        else assert.ok(!body.endsWith('0\r\n\r\n'), 'the gateway ended the chunked body cleanly');
      } finally {
        c.destroy();
      }
    });
  }

  it('client gone mid-request -> the app sees its request aborted', async () => {
    let started = 0;
    const app = await startCountingApp((_req, res) => {
      started++;
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part'); // then never ends
    });
    try {
      const host = await stack.direct(app.port);
      const c = await RawConn.connect(stack.gatewayPort);
      c.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      await c.until(() => c.text.includes('first part'), 'the first part');
      c.destroy();
      await waitFor(() => app.aborted === 1, 'the app request aborted', 5_000);
      assert.equal(started, 1);
    } finally {
      await app.close();
    }
  });

  it('client gone while uploading -> the app sees its request aborted', async () => {
    let closed = 0;
    const app = await startCountingApp();
    app.server.prependListener('request', (req: http.IncomingMessage) => req.on('close', () => closed++));
    try {
      const host = await stack.direct(app.port);
      const c = await RawConn.connect(stack.gatewayPort);
      c.write(`POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 1000000\r\n\r\n${'x'.repeat(10_000)}`);
      await waitFor(() => app.requests === 1, 'the request at the app');
      c.destroy();
      await waitFor(() => closed === 1, 'the app request closed', 5_000);
      assert.equal(app.completed, 0);
    } finally {
      await app.close();
    }
  });
});
