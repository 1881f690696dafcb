/**
 * gateway/upstream.ts against raw TCP servers that send exact bytes: framing, strictness,
 * connection reuse, bounds.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { OriginPool, type UpstreamError } from '../gateway/upstream.js';

interface Result {
  status: number;
  headers: string[];
  body: string;
  error?: UpstreamError;
  started?: boolean;
}

/** A server that answers every request (once its head arrived) with `reply(n)`; n counts requests per connection. */
/** `{ end }`: write it and close the connection; null: reset the connection. */
async function rawServer(reply: (n: number, request: string) => string | Buffer | { end: string } | null) {
  let connections = 0;
  const requests: string[] = [];
  const server = net.createServer((socket) => {
    connections++;
    let buf = '';
    let n = 0;
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        let total = end + 4;
        const cl = /content-length: (\d+)/i.exec(buf.slice(0, end));
        if (cl) total += Number(cl[1]);
        else if (/transfer-encoding: chunked/i.test(buf.slice(0, end))) {
          const last = buf.indexOf('0\r\n\r\n', end);
          if (last === -1) return;
          total = last + 5;
        }
        if (buf.length < total) return;
        const req = buf.slice(0, total);
        buf = buf.slice(total);
        requests.push(req);
        const r = reply(++n, req);
        if (r === null) socket.destroy();
        else if (typeof r === 'object' && 'end' in r) socket.end(r.end);
        else socket.write(r);
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    connections: () => connections,
    close: () => new Promise<void>((r) => { server.close(() => r()); }),
    server,
  };
}

function pool(port: number, opts: Partial<{ maxConnections: number; maxQueue: number; responseTimeoutMs: number }> = {}) {
  return new OriginPool({
    host: '127.0.0.1',
    port,
    maxConnections: opts.maxConnections ?? 4,
    maxQueue: opts.maxQueue ?? 16,
    connectTimeoutMs: 2000,
    responseTimeoutMs: opts.responseTimeoutMs ?? 2000,
    idleTimeoutMs: 2000,
  });
}

function get(p: OriginPool, method = 'GET', body?: string): Promise<Result> {
  return new Promise((resolve) => {
    const r: Result = { status: 0, headers: [], body: '' };
    let stream: PassThrough | null = null;
    if (body !== undefined) {
      stream = new PassThrough();
      stream.end(body);
    }
    p.request(
      { method, head: `${method} / HTTP/1.1\r\nhost: x\r\n${body !== undefined ? `content-length: ${body.length}\r\n` : ''}`, body: stream, bodyLength: body?.length ?? 0 },
      {
        onHead: (status, _t, headers) => Object.assign(r, { status, headers }),
        onData: (c) => {
          r.body += c.toString();
          return true;
        },
        onEnd: () => resolve(r),
        onError: (error, started) => resolve({ ...r, error, started }),
      },
    );
  });
}

describe('upstream client', () => {
  it('reads Content-Length, chunked and close-delimited bodies, reusing one connection', async () => {
    const s = await rawServer((n) =>
      n === 1
        ? 'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello'
        : n === 2
          ? 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\ntrailer: x\r\n\r\n'
          : { end: 'HTTP/1.1 200 OK\r\n\r\nuntil-close' },
    );
    const p = pool(s.port, { maxConnections: 1 });
    try {
      assert.equal((await get(p)).body, 'hello');
      const chunked = await get(p);
      assert.equal(chunked.body, 'abcde');
      assert.deepEqual(chunked.headers, ['transfer-encoding', 'chunked']);
      const closed = await get(p);
      assert.equal(closed.error, undefined);
      assert.equal(closed.body, 'until-close');
      assert.equal(s.connections(), 1, 'one connection for all three');
      // A close-delimited response leaves no reusable connection: the next request opens one.
      assert.equal((await get(p)).body, 'hello');
      assert.equal(s.connections(), 2);
    } finally {
      p.close();
      await s.close();
    }
  });

  it('skips 1xx, and knows HEAD, 204 and 304 have no body', async () => {
    const s = await rawServer((n) =>
      n === 1
        ? 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'
        : n === 2
          ? 'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n'
          : n === 3
            ? 'HTTP/1.1 204 No Content\r\n\r\n'
            : 'HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n',
    );
    const p = pool(s.port, { maxConnections: 1 });
    try {
      const r1 = await get(p);
      assert.equal(r1.status, 200);
      assert.equal(r1.body, 'ok');
      assert.equal((await get(p, 'HEAD')).body, '');
      assert.equal((await get(p)).status, 204);
      assert.equal((await get(p)).status, 304);
      assert.equal(s.connections(), 1);
    } finally {
      p.close();
      await s.close();
    }
  });

  const malformed: [string, string, RegExp][] = [
    ['bad status line', 'HTTP/1.1 20 OK\r\n\r\n', /malformed status line/],
    ['HTTP/2 status line', 'HTTP/2 200 OK\r\n\r\n', /malformed status line/],
    ['space before colon', 'HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n', /malformed response header/],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 0\r\n\r\n', /malformed response header/],
    ['TE and CL', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n', /both Transfer-Encoding and Content-Length/],
    ['differing CL', 'HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd', /differing Content-Length/],
    ['CL not digits', 'HTTP/1.1 200 OK\r\ncontent-length: 3x\r\n\r\nabc', /malformed Content-Length/],
    ['TE gzip', 'HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n', /unsupported Transfer-Encoding/],
    ['bad chunk size', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n', /malformed chunk size/],
    ['missing CRLF after chunk', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n', /missing CRLF/],
    ['bare LF chunk line', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\r\n', /bare LF/],
    ['body longer than CL', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nabcdef', /longer than its Content-Length/],
  ];
  for (const [name, reply, re] of malformed) {
    it(`refuses a response with ${name}`, async () => {
      const s = await rawServer(() => reply);
      const p = pool(s.port);
      try {
        const r = await get(p);
        assert.ok(r.error, `no error: ${JSON.stringify(r)}`);
        assert.equal(r.error.kind, 'broken');
        assert.match(r.error.message, re);
      } finally {
        p.close();
        await s.close();
      }
    });
  }

  it('refuses a head larger than 64 KB', async () => {
    const s = await rawServer(() => `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(70_000)}\r\n\r\n`);
    const p = pool(s.port);
    try {
      assert.match((await get(p)).error?.message ?? '', /larger than 65536/);
    } finally {
      p.close();
      await s.close();
    }
  });

  it('a truncated body fails after the head; a reset before the head fails before it', async () => {
    let served = 0;
    const s = await rawServer(() => (++served === 1 ? { end: 'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc' } : null));
    const p = pool(s.port, { maxConnections: 1 });
    try {
      const truncated = await get(p);
      assert.equal(truncated.status, 200);
      assert.equal(truncated.body, 'abc');
      assert.equal(truncated.error?.kind, 'broken');
      assert.equal(truncated.started, true);
      const reset = await get(p); // a fresh connection (the last one closed), reset by the server
      assert.equal(reset.error?.kind, 'broken');
      assert.equal(reset.started, false);
    } finally {
      p.close();
      await s.close();
    }
  });

  it('times out with no response, and bounds the wait queue', async () => {
    const s = await rawServer(() => Buffer.alloc(0));
    const p = pool(s.port, { maxConnections: 1, maxQueue: 1, responseTimeoutMs: 200 });
    try {
      const a = get(p);
      const b = get(p); // queued
      const c = await get(p); // over the queue bound
      assert.equal(c.error?.kind, 'connect');
      assert.match(c.error?.message ?? '', /busy/);
      assert.equal((await a).error?.kind, 'timeout');
      assert.equal((await b).error?.kind, 'timeout');
    } finally {
      p.close();
      await s.close();
    }
  });

  it('sends request bodies with their length, or chunked', async () => {
    const s = await rawServer(() => 'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
    const p = pool(s.port, { maxConnections: 1 });
    try {
      await get(p, 'POST', 'hello');
      assert.match(s.requests[0] ?? '', /content-length: 5\r\n\r\nhello$/);
      const stream = new PassThrough();
      const done = new Promise<void>((resolve) =>
        p.request({ method: 'POST', head: 'POST / HTTP/1.1\r\nhost: x\r\n', body: stream, bodyLength: undefined }, { onHead: () => {}, onData: () => true, onEnd: resolve, onError: () => resolve() }),
      );
      stream.write('ab');
      stream.end('cde');
      await done;
      assert.match(s.requests[1] ?? '', /transfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n$/);
      assert.equal(s.connections(), 1);
    } finally {
      p.close();
      await s.close();
    }
  });

  it('retries a bodyless request once when a reused connection was closed under it', async () => {
    // Answers, then closes each connection right after its first request: the pooled
    // connection is dead by the time it is reused.
    const s = await rawServer((n) => (n === 1 ? 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok' : null));
    const p = pool(s.port, { maxConnections: 1 });
    try {
      assert.equal((await get(p)).body, 'ok');
      const second = await get(p);
      assert.equal(second.body, 'ok', JSON.stringify(second));
      assert.equal(s.connections(), 2);
    } finally {
      p.close();
      await s.close();
    }
  });
});
