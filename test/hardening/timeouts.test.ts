/**
 * Listener limits: slow headers and slow bodies cut off by their timeouts (seconds, set here to
 * 1 s), idle keep-alive connections closed, and the per-listener connection cap.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCountingApp, type CountingApp } from './support/backends.js';
import { RawConn, responseComplete, statusOf } from './support/raw.js';
import { startStack, type Stack } from './support/stack.js';
import { waitFor } from '../support/util.js';

const CAP = 20;

describe('hardening: timeouts and connection cap', () => {
  let stack: Stack;
  let app: CountingApp;
  let host: string;
  const open: RawConn[] = [];

  before(async () => {
    stack = await startStack({ gateway: { headersTimeoutMs: 1_000, bodyTimeoutMs: 1_000, keepAliveTimeoutMs: 1_000, maxConnections: CAP } });
    app = await startCountingApp();
    host = await stack.route('slow', app.port);
  });
  after(async () => {
    for (const c of open) c.destroy();
    await stack?.close();
    await app?.close();
  });

  const connect = async () => {
    const c = await RawConn.connect(stack.gatewayPort);
    open.push(c);
    return c;
  };

  it('slow headers (a byte every 100 ms) are cut off with 408 at the header timeout', async () => {
    const c = await connect();
    const t0 = Date.now();
    c.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n`);
    const drip = setInterval(() => c.socket.writable && c.write('X'), 100);
    try {
      await c.waitClosed(5_000);
    } finally {
      clearInterval(drip);
    }
    const elapsed = Date.now() - t0;
    assert.equal(statusOf(c.text), 408, c.text);
    assert.ok(elapsed >= 900 && elapsed < 3_000, `closed after ${elapsed} ms`);
    assert.equal(stack.counts.local, 0);
  });

  it('a connection that never sends a request is closed at the header timeout', async () => {
    const c = await connect();
    const t0 = Date.now();
    await c.waitClosed(5_000);
    assert.ok(Date.now() - t0 < 3_000);
  });

  it('a stalled request body is cut off with 408 at the body timeout; the app never gets a complete body', async () => {
    const completed = app.completed;
    const c = await connect();
    const t0 = Date.now();
    c.write(`POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 100\r\n\r\n0123456789`);
    await c.waitClosed(5_000);
    const elapsed = Date.now() - t0;
    assert.equal(statusOf(c.text), 408, c.text);
    assert.ok(elapsed >= 900 && elapsed < 3_000, `closed after ${elapsed} ms`);
    assert.equal(app.completed, completed);
  });

  it('a body that keeps flowing is not cut off by the body timeout', async () => {
    const c = await connect();
    c.write(`POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 15\r\n\r\n`);
    let sent = 0;
    // 15 bytes over 1.5 s: longer than the body timeout, but never a pause of it.
    const drip = setInterval(() => sent < 15 && (c.write('x'), sent++), 100);
    try {
      await c.until(() => responseComplete(c.text) || c.closed, 'the response', 5_000);
    } finally {
      clearInterval(drip);
    }
    assert.equal(statusOf(c.text), 200, c.text);
  });

  it('an idle keep-alive connection is closed after the keep-alive timeout', async () => {
    const c = await connect();
    c.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    await c.until(() => responseComplete(c.text), 'the response');
    const t0 = Date.now();
    await c.waitClosed(5_000);
    const elapsed = Date.now() - t0;
    assert.equal(statusOf(c.text), 200);
    assert.ok(elapsed >= 800 && elapsed < 3_000, `closed after ${elapsed} ms`);
  });

  it(`the listener holds at most ${CAP} connections; more are closed at once, and it serves again when some go`, async () => {
    // Wait for the earlier tests' connections to be gone, so the count is ours.
    await waitFor(() => new Promise<boolean>((r) => stack.gateway.getConnections((_e, n) => r(n === 0))), 'no open connections');
    const held: RawConn[] = [];
    for (let i = 0; i < CAP; i++) held.push(await connect());
    await waitFor(() => new Promise<boolean>((r) => stack.gateway.getConnections((_e, n) => r(n === CAP))), `${CAP} connections`);
    const extra = await connect();
    extra.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    await extra.waitClosed(2_000);
    assert.equal(extra.text, '', 'a connection over the cap gets no answer');
    held[0]?.destroy();
    await waitFor(() => new Promise<boolean>((r) => stack.gateway.getConnections((_e, n) => r(n < CAP))), 'a free slot');
    const c = await connect();
    c.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    await c.until(() => responseComplete(c.text), 'the response');
    assert.equal(statusOf(c.text), 200);
  });
});
