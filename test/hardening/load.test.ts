/**
 * The CLI under load, as a separate process: 10,000 idle connections, a slow reader of a 1 GB
 * response (gateway RSS stays bounded), and SIGTERM with 200 requests in flight (none lost).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { describe, it } from 'node:test';
import { startCountingApp } from './support/backends.js';
import { withFdLimit } from '../support/cli.js';
import { hardFdLimit, route, startGatewayProcess, type GatewayProcess } from './support/cli.js';
import { RawConn } from './support/raw.js';
import { request, waitFor } from '../support/util.js';

const IDLE = 10_000;
const MB = 1024 * 1024;

describe('hardening: load on the CLI process', () => {
  it(`stays up and serves with ${IDLE.toLocaleString('en')} idle connections open`, { timeout: 60_000 }, async (t) => {
    const need = IDLE + 1_000;
    // root may raise the hard limit through prlimit; anyone else is bound by it.
    if (hardFdLimit() < need && process.getuid?.() !== 0) return t.skip(`the fd hard limit (${hardFdLimit()}) is below ${need}; run as root or raise ulimit -Hn`);
    const gw = await startGatewayProcess([], { nofile: need });
    const app = await startCountingApp();
    const host = await route(gw, 'idle', app.port);
    // The connections come from a child with its own fd limit: this process may have fewer.
    const [cmd, args] = withFdLimit(need, process.execPath, ['-e', IDLE_CLIENT, String(gw.httpPort), String(IDLE)]);
    const client = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    client.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor(() => /open \d+/.test(out), 'the idle connections', 20_000);
      const opened = Number(/open (\d+)/.exec(out)?.[1]);
      assert.equal(opened, IDLE, out);
      const r = await request(gw.httpPort, { headers: { host } });
      assert.equal(r.status, 200);
      assert.equal(gw.child.exitCode, null, 'the gateway is still running');
      assert.ok(gw.rss() < 512 * MB, `gateway RSS ${Math.round(gw.rss() / MB)} MB`);
    } finally {
      client.kill('SIGKILL');
      await app.close();
      await gw.close();
    }
  });

  it('a slow reader of a 1 GB response: the app is held back and gateway RSS stays bounded; closing aborts the app', { timeout: 60_000 }, async () => {
    let written = 0;
    let appClosed = false;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const app = await startCountingApp((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 1024 * MB });
      res.on('close', () => (appClosed = true));
      const pump = () => {
        while (written < 1024 * MB && !res.destroyed) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        if (!res.destroyed) res.end();
      };
      pump();
    });
    const gw = await startGatewayProcess();
    const c = await RawConn.connect(gw.httpPort);
    try {
      const host = await route(gw, 'big', app.port);
      const baseline = gw.rss();
      c.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      await c.until(() => c.data.length > 0, 'the first bytes');
      c.socket.pause(); // the slowest reader: reads nothing more
      // Wait until the app is held back: its writes stop growing (polled, with a deadline).
      let last = -1;
      let still = 0;
      await waitFor(
        () => {
          still = written === last ? still + 1 : 0;
          last = written;
          return still >= 10;
        },
        'the app to be held back',
        30_000,
      );
      if (process.env.TGW_HARDENING_VERBOSE) console.log(`slow reader: app wrote ${Math.round(written / MB)} MB, gateway RSS ${Math.round(baseline / MB)} -> ${Math.round(gw.rss() / MB)} MB`);
      assert.ok(written < 256 * MB, `the app wrote ${Math.round(written / MB)} MB to a reader that read nothing`);
      const grown = gw.rss() - baseline;
      assert.ok(grown < 128 * MB, `gateway RSS grew ${Math.round(grown / MB)} MB (from ${Math.round(baseline / MB)} MB)`);
      c.destroy();
      await waitFor(() => appClosed, 'the app response aborted after the client left', 10_000);
      assert.ok(written < 1024 * MB);
    } finally {
      c.destroy();
      await app.close();
      await gw.close();
    }
  });

  it('SIGTERM with 200 requests in flight: every one completes, then the process exits 0', { timeout: 60_000 }, async () => {
    const held: http.ServerResponse[] = [];
    const app = await startCountingApp((_req, res) => held.push(res));
    const gw = await startGatewayProcess();
    try {
      const host = await route(gw, 'drain', app.port);
      const replies = Array.from({ length: 200 }, (_, i) => request(gw.httpPort, { headers: { host }, path: `/r${i}` }).catch((err: Error) => ({ status: 0, headers: {}, body: err.message })));
      await waitFor(() => held.length === 200, 'all 200 requests at the app', 15_000);
      gw.child.kill('SIGTERM');
      await waitFor(() => gw.lines.some((l) => l.msg === 'draining'), 'the drain to start');
      for (const res of held) res.end('done');
      const all = await Promise.all(replies);
      const lost = all.filter((r) => r.status !== 200 || r.body !== 'done');
      assert.equal(lost.length, 0, `lost ${lost.length}: ${JSON.stringify(lost.slice(0, 3))}`);
      assert.equal(await gw.exited, 0);
    } finally {
      for (const res of held) res.destroy();
      await app.close();
      await gw.close();
    }
  });
});

/** Opens `count` connections to `port`, 200 connecting at a time; prints "open <n> failed <n>". */
const IDLE_CLIENT = `
const net = require('node:net');
const [port, count] = process.argv.slice(-2).map(Number);
const sockets = [];
let opened = 0, failed = 0, inflight = 0, started = 0;
const pump = () => {
  while (inflight < 200 && started < count) {
    started++; inflight++;
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    s.once('connect', () => { opened++; inflight--; sockets.push(s); done(); pump(); });
    s.once('close', () => { if (!s.connecting) return; failed++; inflight--; done(); pump(); });
  }
};
const done = () => { if (opened + failed === count) process.stdout.write('open ' + opened + ' failed ' + failed + '\\n'); };
pump();
setInterval(() => {}, 1 << 30);
`;
