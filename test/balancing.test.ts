/**
 * Tenants with several replicas, on real sockets: distribution per algorithm, health checks,
 * stickiness, retries, moves between local proxies and the all-down answer.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startNode, type TestNode } from './support/node.js';
import { freePort, request, startApp, waitFor, type App } from './support/util.js';

const appOf = (body: string) => (JSON.parse(body) as { app: string }).app;

/**
 * Runs `workers` request loops against `host` until `stop()` (or, by themselves, after 30 s
 * or 50,000 requests); counts outcomes.
 */
function steadyLoad(port: number, host: string, workers: number) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: workers });
  const stats = { ok: 0, failed: [] as string[], byApp: new Map<string, number>() };
  let running = true;
  const until = Date.now() + 30_000;
  const loop = async () => {
    while (running && Date.now() < until && stats.ok + stats.failed.length < 50_000) {
      try {
        const r = await request(port, { headers: { host }, agent });
        if (r.status === 200) {
          stats.ok++;
          const a = appOf(r.body);
          stats.byApp.set(a, (stats.byApp.get(a) ?? 0) + 1);
        } else stats.failed.push(`${r.status} ${r.body.slice(0, 200)}`);
      } catch (err) {
        stats.failed.push((err as Error).message);
      }
    }
  };
  const loops = Array.from({ length: workers }, loop);
  return {
    stats,
    stop: async () => {
      running = false;
      await Promise.all(loops);
      agent.destroy();
      return stats;
    },
  };
}

describe('replicas: balancing, health, stickiness, retries, moves', () => {
  let node: TestNode;
  const apps: App[] = [];
  const app = async (name: string, handler?: http.RequestListener) => {
    const a = await startApp(name, handler);
    apps.push(a);
    return a;
  };
  /** Registers containers c-<name> on host 01 for fresh apps; returns them. */
  const containers = async (host: string, ...names: string[]) => {
    const out: App[] = [];
    for (const n of names) {
      const a = await app(n);
      assert.equal((await node.admin('PUT', `/v1/hosts/${host}/containers/${n}`, { app: 'web', port: a.port })).status, 200);
      out.push(a);
    }
    return out;
  };
  const tenant = async (name: string, rec: object) => {
    const r = await node.admin('PUT', `/v1/tenants/${name}`, rec);
    assert.equal(r.status, 200, r.body);
  };
  const counts = async (host: string, n: number, headers: Record<string, string> = {}) => {
    const m = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const r = await node.get(host, { headers });
      assert.equal(r.status, 200, r.body);
      m.set(appOf(r.body), (m.get(appOf(r.body)) ?? 0) + 1);
    }
    return m;
  };

  before(async () => {
    node = await startNode();
  });
  after(async () => {
    await node?.close();
    await Promise.all(apps.map((a) => a.close()));
  });

  it('round robin honours weights', async () => {
    await containers('01', 'rr1', 'rr2', 'rr3');
    await tenant('rr', { targets: [{ host: '01', container: 'rr1' }, { host: '01', container: 'rr2', weight: 2 }, { host: '01', container: 'rr3' }] });
    const m = await counts('rr.test.priv', 40);
    assert.deepEqual(Object.fromEntries(m), { rr1: 10, rr2: 20, rr3: 10 });
  });

  it('least connections avoids the replica with a request in flight', async () => {
    let releaseSlow: (() => void) | undefined;
    const slow = await app('lc-slow', (_req, res) => {
      releaseSlow = () => res.end(JSON.stringify({ app: 'lc-slow' }));
    });
    const fast = await app('lc-fast');
    await node.admin('PUT', '/v1/hosts/01/containers/lcslow', { app: 'web', port: slow.port });
    await node.admin('PUT', '/v1/hosts/01/containers/lcfast', { app: 'web', port: fast.port });
    await tenant('lc', { balance: 'least-conn', targets: [{ host: '01', container: 'lcslow' }, { host: '01', container: 'lcfast' }] });
    // The first request goes to lcslow (round robin tie-break) and stays in flight.
    const pending = node.get('lc.test.priv');
    await waitFor(() => releaseSlow, 'the slow replica to hold a request');
    const m = await counts('lc.test.priv', 6);
    assert.deepEqual(Object.fromEntries(m), { 'lc-fast': 6 });
    releaseSlow?.();
    assert.equal((await pending).status, 200);
  });

  it('ip-hash keeps one client on one replica', async () => {
    await containers('01', 'ip1', 'ip2', 'ip3');
    await tenant('iph', { balance: 'ip-hash', targets: ['ip1', 'ip2', 'ip3'].map((c) => ({ host: '01', container: c })) });
    const m = await counts('iph.test.priv', 15);
    assert.equal(m.size, 1, JSON.stringify([...m]));
  });

  it('consistent hash on a header: each key sticks, and adding a replica remaps few keys', async () => {
    await containers('01', 'h1', 'h2', 'h3', 'h4');
    const targets = ['h1', 'h2', 'h3'].map((c) => ({ host: '01', container: c }));
    await tenant('hsh', { balance: 'hash', hashKey: 'header:X-User', targets });
    const users = Array.from({ length: 60 }, (_, i) => `user-${i}`);
    const owner = async () => {
      const o = new Map<string, string>();
      for (const u of users) o.set(u, appOf((await node.get('hsh.test.priv', { headers: { 'x-user': u } })).body));
      return o;
    };
    const first = await owner();
    assert.deepEqual(await owner(), first, 'the same key reaches the same replica');
    assert.equal(new Set(first.values()).size, 3, 'keys spread over all replicas');
    await tenant('hsh', { balance: 'hash', hashKey: 'header:X-User', targets: [...targets, { host: '01', container: 'h4' }] });
    const second = await owner();
    const moved = users.filter((u) => first.get(u) !== second.get(u));
    assert.ok(moved.length < users.length * 0.45, `${moved.length} of ${users.length} moved`);
    for (const u of moved) assert.equal(second.get(u), 'h4', 'keys only move to the new replica');
  });

  it('sticky cookie keeps a client on its replica, and moves it when that replica dies', async () => {
    const [s1, s2] = await containers('01', 'st1', 'st2');
    await tenant('sticky', { sticky: { cookie: 'route' }, targets: [{ host: '01', container: 'st1' }, { host: '01', container: 'st2' }] });
    const r1 = await node.get('sticky.test.priv');
    const cookie = String(r1.headers['set-cookie']).split(';')[0] ?? '';
    assert.match(cookie, /^route=[\w-]{16}$/);
    const mine = appOf(r1.body);
    const m = await counts('sticky.test.priv', 10, { cookie });
    assert.deepEqual(Object.fromEntries(m), { [mine]: 10 });
    const again = await node.get('sticky.test.priv', { headers: { cookie } });
    assert.equal(again.headers['set-cookie'], undefined, 'no new cookie while the replica holds');
    // Kill the client's replica: the next request lands elsewhere with a new cookie.
    await (mine === 'st1' ? s1 : s2)?.close();
    const moved = await node.get('sticky.test.priv', { headers: { cookie } });
    assert.equal(moved.status, 200, moved.body);
    assert.notEqual(appOf(moved.body), mine);
    assert.match(String(moved.headers['set-cookie']), /^route=/);
  });

  it('active health checks take a failing replica out and bring it back', async () => {
    let healthy = true;
    const flaky = await app('hc-flaky', (req, res) => {
      if (req.url === '/health') {
        res.statusCode = healthy ? 200 : 500;
        return res.end();
      }
      res.end(JSON.stringify({ app: 'hc-flaky' }));
    });
    const [steady] = await containers('01', 'hcsteady');
    await node.admin('PUT', '/v1/hosts/01/containers/hcflaky', { app: 'web', port: flaky.port });
    await tenant('hc', {
      healthCheck: { path: '/health', interval: 0.1, timeout: 1, rise: 2, fall: 2 },
      targets: [{ host: '01', container: 'hcflaky' }, { host: '01', container: 'hcsteady' }],
    });
    assert.equal((await counts('hc.test.priv', 4)).get('hc-flaky'), 2);
    healthy = false;
    await waitFor(async () => {
      const t = JSON.parse((await node.admin('GET', '/v1/tenants/hc')).body) as { state: { replicas: { container: string; active: string }[] } };
      return t.state.replicas.find((r) => r.container === 'hcflaky')?.active === 'down';
    }, 'the failing replica marked down');
    assert.deepEqual(Object.fromEntries(await counts('hc.test.priv', 6)), { hcsteady: 6 });
    const metrics = await request(node.adminPort, { path: '/metrics', headers: { authorization: `Bearer ${node.token}` } });
    assert.match(metrics.body, /tgw_replica_up\{tenant="hc",replica="01\/hcflaky"\} 0/);
    // The local proxy answered the failing checks itself: it is up, its container is not.
    assert.match(metrics.body, /tgw_local_proxy_up\{host="01"\} 1/);
    healthy = true;
    await waitFor(async () => (await counts('hc.test.priv', 2)).has('hc-flaky'), 'the replica back in rotation');
    const after = await request(node.adminPort, { path: '/metrics', headers: { authorization: `Bearer ${node.token}` } });
    assert.match(after.body, /tgw_replica_up\{tenant="hc",replica="01\/hcflaky"\} 1/);
    assert.ok(steady);
  });

  it('a replica killed under load: no client error (in-flight requests are retried)', async () => {
    const [k1] = await containers('01', 'kill1', 'kill2');
    await tenant('killer', { targets: [{ host: '01', container: 'kill1' }, { host: '01', container: 'kill2' }] });
    const load = steadyLoad(node.httpPort, 'killer.test.priv', 8);
    let stats;
    try {
      await waitFor(() => load.stats.ok > 200, 'load to start');
      await k1?.close();
      const okAtKill = load.stats.ok;
      await waitFor(() => load.stats.ok > okAtKill + 400, 'load after the kill');
    } finally {
      stats = await load.stop();
    }
    assert.deepEqual(stats.failed, []);
    const state = JSON.parse((await node.admin('GET', '/v1/tenants/killer')).body) as { state: { replicas: { container: string; healthy: boolean }[] } };
    assert.equal(state.state.replicas.find((r) => r.container === 'kill1')?.healthy, false, 'ejected by passive checks');
    const metrics = await request(node.adminPort, { path: '/metrics', headers: { authorization: `Bearer ${node.token}` } });
    const retried = /tgw_upstream_retries_total\{component="gateway"\} (\d+)/.exec(metrics.body);
    assert.ok(Number(retried?.[1]) > 0, 'requests caught by the kill were retried (and counted)');
  });

  it('a container moved between two local proxies under steady load: zero failed requests', async () => {
    // Host 02: a second local proxy, as a separate node reading the same registry file.
    const lp2 = await startNode(['local-proxy', '--host-id', '02', '--registry', `file:${node.dataDir}/registry.json`]);
    try {
      const port2 = lp2.addresses.localProxy?.port;
      assert.equal((await node.admin('PUT', '/v1/hosts/02', { address: `127.0.0.1:${port2}` })).status, 200);
      const [oldApp] = await containers('01', 'mv');
      await tenant('mover', { targets: [{ host: '01', container: 'mv' }] });
      const load = steadyLoad(node.httpPort, 'mover.test.priv', 6);
      let stats;
      try {
        await waitFor(() => load.stats.ok > 200, 'load to start');
        // The hard order: the old container stops before its new place is registered.
        await oldApp?.close();
        const newApp = await app('mv-new');
        await node.admin('PUT', '/v1/hosts/02/containers/mv', { app: 'web', port: newApp.port });
        await tenant('mover', { targets: [{ host: '02', container: 'mv' }] });
        await node.admin('DELETE', '/v1/hosts/01/containers/mv');
        await waitFor(() => (load.stats.byApp.get('mv-new') ?? 0) > 300, 'traffic at the new place');
      } finally {
        stats = await load.stop();
      }
      assert.deepEqual(stats.failed, []);
    } finally {
      await lp2.close();
    }
  });

  it('all replicas down: 503 with Retry-After after the bounded hold, not a hang', async () => {
    await node.admin('PUT', '/v1/hosts/01/containers/dead1', { app: 'web', port: await freePort() });
    await node.admin('PUT', '/v1/hosts/01/containers/dead2', { app: 'web', port: await freePort() });
    await tenant('down', { hold: { timeout: 0.3 }, passive: { failures: 1 }, targets: [{ host: '01', container: 'dead1' }, { host: '01', container: 'dead2' }] });
    const t0 = Date.now();
    const r = await node.get('down.test.priv');
    assert.equal(r.status, 503, r.body);
    assert.equal(r.headers['retry-after'], '1');
    assert.equal((JSON.parse(r.body) as { error: string }).error, 'no_healthy_replica');
    assert.ok(Date.now() - t0 < 5000);
  });

  it('a lone replica that answers badly gets its 502 at once: holding is for moves, not for broken apps', async () => {
    const broken = await app('resetter', (req) => req.socket.destroy());
    await node.admin('PUT', '/v1/hosts/01/containers/rst', { app: 'web', port: broken.port });
    await tenant('resetting', { targets: [{ host: '01', container: 'rst' }] });
    const t0 = Date.now();
    const r = await node.get('resetting.test.priv');
    assert.equal(r.status, 502, r.body);
    assert.equal((JSON.parse(r.body) as { error: string }).error, 'upstream_broken');
    assert.ok(Date.now() - t0 < 2000, `answered after ${Date.now() - t0} ms`);
  });

  it('maxConn queues beyond the limit, and answers 503 when the queue is full', async () => {
    const waiting: (() => void)[] = [];
    const slow = await app('mc', (_req, res) => waiting.push(() => res.end(JSON.stringify({ app: 'mc' }))));
    await node.admin('PUT', '/v1/hosts/01/containers/mc', { app: 'web', port: slow.port });
    await tenant('maxc', { maxConn: 1, maxQueue: 1, targets: [{ host: '01', container: 'mc' }] });
    const first = node.get('maxc.test.priv');
    await waitFor(() => waiting.length === 1, 'first request at the app');
    const second = node.get('maxc.test.priv'); // queued
    const third = await node.get('maxc.test.priv'); // queue full
    assert.equal(third.status, 503, third.body);
    assert.equal(waiting.length, 1, 'the queued request did not reach the app');
    waiting.shift()?.();
    await waitFor(() => waiting.length === 1, 'the queued request to go on');
    waiting.shift()?.();
    assert.equal((await first).status, 200);
    assert.equal((await second).status, 200);
  });

  it('bad settings are refused with a 400 naming the field', async () => {
    const t = [{ host: '01', container: 'c1' }];
    for (const [body, field] of [
      [{ balance: 'random', targets: t }, 'balance'],
      [{ balance: 'hash', targets: t }, 'hashKey'],
      [{ balance: 'hash', hashKey: 'query:x', targets: t }, 'hashKey'],
      [{ targets: [{ host: '01', container: 'c1', weight: 0 }] }, 'targets.0.weight'],
      [{ healthCheck: { interval: 0 }, targets: t }, 'healthCheck.interval'],
      [{ healthCheck: { path: 'health' }, targets: t }, 'healthCheck.path'],
      [{ retries: { attempts: 99 }, targets: t }, 'retries.attempts'],
      [{ sticky: { cookie: 'bad cookie' }, targets: t }, 'sticky.cookie'],
      [{ targets: [...t, ...t] }, 'targets'],
    ] as const) {
      const r = await node.admin('PUT', '/v1/tenants/badcfg', body);
      assert.equal(r.status, 400, `${JSON.stringify(body)} -> ${r.body}`);
      assert.equal((JSON.parse(r.body) as { field: string }).field, field, r.body);
    }
  });
});
