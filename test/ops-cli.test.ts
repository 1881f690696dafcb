/**
 * Issue 6 on the CLI as users run it: SIGTERM drains under load with zero failed requests,
 * SIGHUP and POST /v1/reload change settings without dropping connections, --config errors.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import type { Socket } from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import { boundPort, runCli, stopCli, type CliProcess } from './support/cli.js';
import { tempDir } from './support/node.js';
import { request, startApp, waitFor, type Reply } from './support/util.js';

const TOKEN = 'ops-cli-token';
const PORTS = ['--http-port', '0', '--admin-port', '0', '--dns-port', '0', '--local-port', '0'];

type Proc = CliProcess;
const run = (args: string[]): Proc => runCli(args, { TGW_ADMIN_TOKEN: TOKEN });
const bound = boundPort;
const stop = stopCli;

/** A GET through `agent`, resolving with the reply and whether it reused a kept-alive connection. */
function get(port: number, host: string, agent: http.Agent, onSocket?: (s: Socket) => void): Promise<Reply & { reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/', headers: { host }, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString(), reused: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('socket', (s: Socket) => onSocket?.(s));
    req.on('error', reject);
    req.end();
  });
}

const admin = (port: number, method: string, urlPath: string, body?: unknown) =>
  request(port, { method, path: urlPath, headers: { authorization: `Bearer ${TOKEN}` }, body: body === undefined ? undefined : JSON.stringify(body) });

const readLines = (file: string) =>
  fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>) : [];

describe('graceful drain', () => {
  it('SIGTERM under load: stops accepting, every in-flight request completes with 200, idle keep-alives close, exit 0', async () => {
    const N = 24;
    let release: () => void = () => {};
    const released = new Promise<void>((r) => (release = r));
    // A slow upstream: every response waits until the test releases it (after SIGTERM).
    const app = await startApp('slow', (_req, res) => {
      void released.then(() => res.end('done'));
    });
    const p = run(['up', ...PORTS, '--data-dir', tempDir(), '--drain-timeout', '30']);
    const busy = new http.Agent({ keepAlive: true, maxSockets: N });
    const idle = new http.Agent({ keepAlive: true });
    try {
      await waitFor(() => bound(p, 'dns'), 'start-up', 15_000);
      const httpPort = bound(p, 'gateway') ?? 0;
      const adminPort = bound(p, 'admin') ?? 0;
      assert.equal((await admin(adminPort, 'PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app.port })).status, 200);
      const host = 'wordpress_c001_01.test.priv';

      // An idle keep-alive connection: one finished request (released below runs later, so use /healthz-like 404).
      let idleSocket: Socket | undefined;
      const first = await get(httpPort, 'nobody.test.priv', idle, (s) => (idleSocket = s));
      assert.equal(first.status, 404);
      const idleClosed = new Promise<void>((r) => idleSocket?.once('close', () => r()));

      const inFlight = Array.from({ length: N }, () => get(httpPort, host, busy));
      await waitFor(() => app.seen.length >= N, `${N} requests in flight at the upstream`);

      p.child.kill('SIGTERM');
      await waitFor(() => p.lines.some((l) => l.msg === 'draining'), 'the drain to start');
      await waitFor(
        () => request(httpPort, { headers: { host } }).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED'),
        'new connections to be refused',
      );
      await idleClosed; // closed by the server during the drain, not at the end

      release();
      const replies = await Promise.all(inFlight);
      assert.deepEqual(replies.map((r) => r.status), Array<number>(N).fill(200));
      assert.ok(replies.every((r) => r.body === 'done'));
      assert.equal(await p.exited, 0);
      assert.ok(p.lines.some((l) => l.msg === 'stopped'));
      assert.ok(!p.lines.some((l) => /drain timeout/.test(String(l.msg))), 'nothing was cut off');
    } finally {
      release();
      busy.destroy();
      idle.destroy();
      await stop(p);
      await app.close();
    }
  });

  it('--drain-timeout bounds the wait: a request that never finishes is cut off and the process still exits', async () => {
    const app = await startApp('stuck', () => {}); // never answers
    const p = run(['up', ...PORTS, '--data-dir', tempDir(), '--drain-timeout', '0.3']);
    try {
      await waitFor(() => bound(p, 'dns'), 'start-up', 15_000);
      const httpPort = bound(p, 'gateway') ?? 0;
      await admin(bound(p, 'admin') ?? 0, 'PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app.port });
      const stuck = request(httpPort, { headers: { host: 'wordpress_c001_01.test.priv' } }).then(
        () => 'answered',
        () => 'cut off',
      );
      await waitFor(() => app.seen.length >= 1, 'the request at the upstream');
      p.child.kill('SIGTERM');
      assert.equal(await p.exited, 0);
      assert.equal(await stuck, 'cut off');
      assert.ok(p.lines.some((l) => /drain timeout: closed 1 gateway connection/.test(String(l.msg))), JSON.stringify(p.lines));
    } finally {
      await stop(p);
      await app.close();
    }
  });
});

describe('reload', () => {
  it('SIGHUP and POST /v1/reload switch the access log without dropping kept-alive connections', async () => {
    const dir = tempDir();
    const logA = path.join(dir, 'a.log');
    const logB = path.join(dir, 'b.log');
    const configFile = path.join(dir, 'tenant-gateway.yaml');
    const writeConfig = (lines: string[]) => fs.writeFileSync(configFile, `${lines.join('\n')}\n`);
    writeConfig([`access-log: ${logA}`, 'http-port: 0', `data-dir: ${dir}`]);
    const app = await startApp('reload');
    const p = run(['up', '--config', configFile, '--admin-port', '0', '--dns-port', '0', '--local-port', '0']);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      await waitFor(() => bound(p, 'dns'), 'start-up', 15_000);
      const httpPort = bound(p, 'gateway') ?? 0;
      const adminPort = bound(p, 'admin') ?? 0;
      await admin(adminPort, 'PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app.port });
      const host = 'wordpress_c001_01.test.priv';
      assert.equal((await get(httpPort, host, agent)).status, 200);
      await waitFor(() => readLines(logA).length === 2, 'two lines (gateway, local proxy) in a.log');

      writeConfig([`access-log: ${logB}`, 'http-port: 8999', `data-dir: ${dir}`]);
      p.child.kill('SIGHUP');
      const reloaded = await waitFor(() => p.lines.find((l) => l.msg === 'reloaded'), 'the reload');
      assert.deepEqual(reloaded.applied, ['accessLog']);
      assert.deepEqual(reloaded.restartRequired, ['httpPort']);
      assert.ok(p.lines.some((l) => l.level === 'warn' && /only at restart: httpPort/.test(String(l.msg))));

      const again = await get(httpPort, host, agent);
      assert.equal(again.status, 200);
      assert.equal(again.reused, true, 'the kept-alive connection survived the reload');
      await waitFor(() => readLines(logB).length === 2, 'the next request logged to b.log');
      assert.equal(readLines(logA).length, 2, 'a.log got nothing more');

      // The admin call does the same: access log off.
      writeConfig(['access-log: "off"', `data-dir: ${dir}`]);
      const r = await admin(adminPort, 'POST', '/v1/reload');
      assert.equal(r.status, 200, r.body);
      assert.deepEqual((JSON.parse(r.body) as { applied: string[] }).applied, ['accessLog']);
      assert.equal((await get(httpPort, host, agent)).status, 200);

      // A config that does not parse changes nothing.
      writeConfig(['access-log: [1', `data-dir: ${dir}`]);
      const bad = await admin(adminPort, 'POST', '/v1/reload');
      assert.equal(bad.status, 400);
      assert.match(bad.body, /tenant-gateway\.yaml is not valid YAML.*nothing was changed/);
      p.child.kill('SIGHUP');
      await waitFor(() => p.lines.some((l) => l.level === 'error' && /reload failed, nothing was changed/.test(String(l.msg))), 'the failed SIGHUP reload logged');
      assert.equal((await get(httpPort, host, agent)).status, 200);
      assert.equal(readLines(logB).length, 2, 'still off: the bad config did not switch anything');
      assert.equal((await admin(adminPort, 'POST', '/v1/reload').then((x) => x.status)), 400);
      assert.equal((await request(adminPort, { method: 'POST', path: '/v1/reload' })).status, 401, 'the token guards reload');
    } finally {
      agent.destroy();
      p.child.kill('SIGTERM');
      await p.exited;
      await stop(p);
      await app.close();
    }
  });

  it('a config file with an unknown key exits 2 naming the key', async () => {
    const file = path.join(tempDir(), 'gw.json');
    fs.writeFileSync(file, JSON.stringify({ 'http-prot': 8080 }));
    const p = run(['up', '--config', file]);
    assert.equal(await p.exited, 2);
    assert.match(p.stderr(), /gw\.json: unknown key "http-prot"; did you mean "http-port"\?/);
  });
});
