/**
 * Two gateways and two local proxies, each its own process (bin/tenant-gateway.js), on one real
 * ZooKeeper: register through gateway A's admin API, request through gateway B, land on a
 * container behind local proxy 02. A stopped local proxy drops out of routing by itself.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { request, startApp, waitFor } from './support/util.js';
import { freePort, ZOOKEEPER_SH, ZooKeeperServer } from './support/zookeeper.js';

const BIN = path.join(path.dirname(path.dirname(ZOOKEEPER_SH)), 'bin', 'tenant-gateway.js');
const TOKEN = 'multi-process-test-token';

interface Proc {
  child: ChildProcess;
  output: () => string;
}

/** Spawns a role; killed (by PID) and its data dir removed after the test. */
function role(t: TestContext, args: string[]): Proc {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgw-mp-'));
  let out = '';
  const child = spawn(process.execPath, [BIN, ...args, '--data-dir', dataDir], {
    env: { ...process.env, TGW_ADMIN_TOKEN: TOKEN },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  return { child, output: () => out };
}

const admin = (port: number, method: string, p: string, body?: unknown) =>
  request(port, {
    method,
    path: p,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

describe('ZooKeeper registry across processes', () => {
  it('register through gateway A, route through gateway B to a container behind local proxy 02', { timeout: 90_000 }, async (t) => {
    const zk = await ZooKeeperServer.start();
    t.after(() => zk.stop());
    const registry = zk.url('/multi');
    const app = await startApp('wordpress-c1');
    t.after(() => app.close());

    const [lp1, lp2, httpA, adminA, httpB, adminB] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const common = ['--registry', registry, '--zk-session-timeout', '4'];
    const procs = [
      role(t, ['local-proxy', ...common, '--host-id', '01', '--local-port', String(lp1)]),
      role(t, ['local-proxy', ...common, '--host-id', '02', '--local-port', String(lp2)]),
      role(t, ['gateway', ...common, '--http-port', String(httpA), '--admin-port', String(adminA), '--gateway-id', 'gw-a']),
      role(t, ['gateway', ...common, '--http-port', String(httpB), '--admin-port', String(adminB), '--gateway-id', 'gw-b', '--gateway-ip', '127.0.0.2']),
    ];
    const proxy02 = procs[1] as Proc;
    const dump = () => procs.map((p, i) => `--- process ${i}\n${p.output()}`).join('\n');

    try {
      // Both local proxies registered themselves; both gateways too.
      await waitFor(async () => {
        const r = await admin(adminA, 'GET', '/v1/hosts');
        return r.status === 200 && r.body.includes('"01"') && r.body.includes('"02"');
      }, 'local proxies registered', 30_000);

      let r = await admin(adminA, 'PUT', `/v1/hosts/02/containers/c1`, { app: 'wordpress', port: app.port });
      assert.equal(r.status, 200, r.body);
      r = await admin(adminA, 'PUT', '/v1/tenants/acme', { targets: [{ host: '02', container: 'c1' }] });
      assert.equal(r.status, 200, r.body);

      // Through gateway B: the registration made at A is routable there.
      const viaB = await waitFor(async () => {
        const res = await request(httpB, { headers: { host: 'acme.test.priv' } });
        return res.status === 200 ? res : undefined;
      }, 'acme routed through gateway B', 5000);
      assert.match(viaB.body, /wordpress-c1/);
      const structured = await request(httpB, { headers: { host: 'wordpress_c1_02.test.priv' } });
      assert.equal(structured.status, 200, structured.body);
      assert.equal(app.seen.at(-1)?.headers.host, 'wordpress_c1_02.test.priv');

      // Local proxy 02 stops: its host record goes, and gateways stop routing to it.
      proxy02.child.kill('SIGTERM');
      await waitFor(() => proxy02.child.exitCode !== null || proxy02.child.signalCode !== null, 'local proxy 02 exited', 10_000);
      await waitFor(async () => {
        const res = await admin(adminB, 'GET', '/v1/hosts/02'); // still listed: it has containers
        return res.status === 200 && (JSON.parse(res.body) as { address: unknown }).address === null;
      }, 'host 02 unregistered', 10_000);
      const gone = await waitFor(async () => {
        const res = await request(httpB, { headers: { host: 'acme.test.priv' } });
        return res.status >= 500 || res.status === 404 ? res : undefined;
      }, 'acme no longer routed to the stopped host', 5000);
      assert.ok([404, 502, 503].includes(gone.status), `${gone.status} ${gone.body}`);
    } catch (err) {
      (err as Error).message += `\n${dump()}`;
      throw err;
    }
  });
});
