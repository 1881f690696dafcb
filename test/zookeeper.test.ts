/**
 * ZooKeeper failures, against a real ZooKeeper started per test (scripts/zookeeper.sh, tickTime
 * 250 ms, so sessions last seconds): restart within the session timeout, a paused server past
 * the session timeout, an ensemble losing its leader, ZooKeeper down at start-up, ACLs,
 * concurrent writers, and 100,000 tenants.
 */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { RegistryUnavailableError, type ChangeEvent, type RegistryBackend } from '../discovery/backend.js';
import { Registry } from '../discovery/registry.js';
import { bucketOf, ZooKeeperBackend, type ZooKeeperBackendOptions } from '../discovery/zookeeper.js';
import { waitFor } from './support/util.js';
import { ZooKeeperServer } from './support/zookeeper.js';

const TENANT = { targets: [{ host: '01', container: 'c001' }] };
const HOST = { address: '127.0.0.1:8090' };
const GATEWAY = { ip: '203.0.113.7' };

async function zookeeper(t: TestContext, opts: { nodes?: 1 | 3; tickMs?: number } = {}): Promise<ZooKeeperServer> {
  const zk = await ZooKeeperServer.start(opts);
  t.after(() => zk.stop());
  return zk;
}

interface Opened {
  backend: ZooKeeperBackend;
  warnings: string[];
  events: ChangeEvent[];
}

/** A backend on `url`, closed after the test; records its warnings and change events. */
function open(t: TestContext, url: string, opts: Partial<ZooKeeperBackendOptions> = {}): Opened {
  const warnings: string[] = [];
  const events: ChangeEvent[] = [];
  const backend = new ZooKeeperBackend({ url, sessionTimeoutMs: 4000, opTimeoutMs: 2000, warn: (m) => warnings.push(m), ...opts });
  backend.onChange((ev) => events.push(ev));
  t.after(() => backend.close());
  return { backend, warnings, events };
}

async function started(t: TestContext, url: string, opts: Partial<ZooKeeperBackendOptions> = {}): Promise<Opened> {
  const o = open(t, url, opts);
  await o.backend.start();
  return o;
}

/** Resolves with how long `p` took to reject with RegistryUnavailableError. */
async function rejectsUnavailable(p: Promise<unknown>): Promise<number> {
  const t0 = Date.now();
  await assert.rejects(p, (err: Error) => {
    assert.ok(err instanceof RegistryUnavailableError, `${err.name}: ${err.message}`);
    assert.match(err.message, /registry unreachable \(zk 127\.0\.0\.1:\d+/);
    return true;
  });
  return Date.now() - t0;
}

describe('ZooKeeper registry under failures', { timeout: 300_000 }, () => {
  it('restart within the session timeout: no route lost, cached reads served, writes fail fast', { timeout: 60_000 }, async (t) => {
    const zk = await zookeeper(t, { tickMs: 500 }); // sessions up to 10 s: room for a JVM restart
    const url = zk.url('/restart');
    const proxy = await started(t, url, { sessionTimeoutMs: 10_000 });
    await proxy.backend.put('hosts', '01', HOST, { ephemeral: true });
    await proxy.backend.put('tenants', 'acme.test.priv', TENANT);

    const gw = open(t, url, { sessionTimeoutMs: 10_000 });
    const registry = new Registry(gw.backend, { warn: (m) => gw.warnings.push(m) });
    await registry.start();
    assert.deepEqual(await registry.tenant('acme.test.priv'), TENANT);
    assert.deepEqual(await registry.host('01'), HOST);
    // Many watches: a reconnect drops them and empties caches instead of one oversized packet.
    const many = await started(t, url, { sessionTimeoutMs: 10_000, maxRestoredWatches: 3 });
    for (let i = 0; i < 5; i++) await many.backend.get('tenants', `w${i}.test.priv`);

    await zk.stopMember();
    await waitFor(() => !gw.backend.status().connected, 'gateway sees the outage');
    const syncedAt = gw.backend.status().syncedAt;
    assert.ok(syncedAt !== null && Date.now() - syncedAt < 10_000);
    // Cached routes keep serving, synchronously, while ZooKeeper is down.
    const cached = registry.lookup('tenants', 'acme.test.priv');
    assert.ok(!(cached instanceof Promise), 'served from cache');
    assert.deepEqual(cached.value, TENANT);
    assert.deepEqual(registry.lookup('hosts', '01'), registry.peek('hosts', '01'));
    // Registration fails within a few seconds with a message that says why.
    const [took, fast] = await Promise.all([
      rejectsUnavailable(proxy.backend.put('tenants', 'new.test.priv', TENANT)),
      rejectsUnavailable(gw.backend.get('tenants', 'uncached.test.priv')),
    ]);
    assert.ok(took < 3500, `put rejected after ${took} ms`);
    assert.ok(fast < 3500, `get rejected after ${fast} ms`);
    assert.equal(gw.backend.status().syncedAt, syncedAt, 'syncedAt stays at the last sync while down');
    assert.match(gw.backend.status().detail, /no ZooKeeper session/);

    await zk.startMember();
    await waitFor(() => proxy.backend.status().connected && gw.backend.status().connected, 'reconnected', 15_000);
    // Same sessions: no re-registration, nothing dropped.
    for (const o of [proxy, gw]) assert.ok(!o.warnings.some((w) => w.includes('new ZooKeeper session')), o.warnings.join('\n'));
    assert.ok(proxy.warnings.some((w) => w.includes('session') && w.includes('kept')), proxy.warnings.join('\n'));
    assert.deepEqual(await gw.backend.get('hosts', '01'), HOST);
    // Watches survived the reconnect: a change reaches the gateway's cache.
    await proxy.backend.put('tenants', 'acme.test.priv', { targets: [{ host: '02', container: 'c002' }] });
    await waitFor(async () => (await registry.tenant('acme.test.priv'))?.targets[0]?.host === '02', 'change after restart routed');
    // The backend with too many watches dropped them and told its caches so.
    await waitFor(() => many.events.filter((e) => e.key === undefined).length >= 4, 'caches dropped on reconnect');
    assert.ok(many.warnings.some((w) => w.includes('too many to restore')));
    await proxy.backend.put('tenants', 'w1.test.priv', TENANT);
    assert.deepEqual(await many.backend.get('tenants', 'w1.test.priv'), TENANT);
  });

  it('paused past the session timeout: new session, ephemerals back, caches dropped, by itself', { timeout: 60_000 }, async (t) => {
    const zk = await zookeeper(t);
    const url = zk.url('/pause');
    const proxy = await started(t, url, { sessionTimeoutMs: 2000 });
    await proxy.backend.put('hosts', '01', HOST, { ephemeral: true });
    await proxy.backend.put('gateways', 'gw-a', GATEWAY, { ephemeral: true });
    await proxy.backend.put('tenants', 'acme.test.priv', TENANT);
    const gw = open(t, url, { sessionTimeoutMs: 2000 });
    const registry = new Registry(gw.backend);
    await registry.start();
    assert.deepEqual(registry.gateways(), [GATEWAY]);
    assert.deepEqual(await registry.tenant('acme.test.priv'), TENANT);

    zk.pause();
    t.after(() => zk.resume());
    // The client alone would wait forever here (no `expired` while the server is silent).
    await waitFor(() => !proxy.backend.status().connected, 'outage noticed', 5000);
    await waitFor(() => proxy.warnings.some((w) => w.includes('session') && w.includes('is gone')), 'expiry presumed', 10_000);
    const cached = registry.lookup('tenants', 'acme.test.priv');
    assert.ok(!(cached instanceof Promise) && cached.value !== null, 'cached route still served');
    await rejectsUnavailable(proxy.backend.put('tenants', 'x.test.priv', TENANT));
    gw.events.length = 0;

    zk.resume();
    await waitFor(() => proxy.backend.status().connected && gw.backend.status().connected, 'recovered by itself', 20_000);
    assert.ok(proxy.warnings.some((w) => w.includes('new ZooKeeper session') && w.includes('2 ephemeral')), proxy.warnings.join('\n'));
    // Ephemerals back (ZooKeeper expires the old session's copies; ours replace them).
    await waitFor(async () => JSON.stringify(await gw.backend.get('hosts', '01')) === JSON.stringify(HOST), 'host 01 back', 10_000);
    await waitFor(() => registry.gateways().length === 1, 'gateway back in the DNS list', 10_000);
    // Every kind was invalidated, so caches refill with fresh routes.
    for (const kind of ['hosts', 'containers', 'tenants', 'gateways'] as const) {
      assert.ok(gw.events.some((e) => e.kind === kind && e.key === undefined), `{kind: ${kind}} emitted`);
    }
    assert.equal(registry.peek('tenants', 'acme.test.priv'), undefined);
    await proxy.backend.put('tenants', 'acme.test.priv', { targets: [{ host: '03', container: 'c3' }] });
    await waitFor(async () => (await registry.tenant('acme.test.priv'))?.targets[0]?.host === '03', 'fresh routes', 5000);
    // Still ours after the old session's expiry has run: stays for as long as the new session lives.
    await waitFor(async () => (await zk.mode()) === 'standalone', 'server serving');
    assert.deepEqual(await gw.backend.get('hosts', '01'), HOST);
  });

  it('a 3-node ensemble keeps working with its leader stopped', { timeout: 60_000 }, async (t) => {
    const zk = await zookeeper(t, { nodes: 3 });
    const url = zk.url('/ensemble');
    const proxy = await started(t, url, { opTimeoutMs: 4000 });
    const gw = open(t, url, { opTimeoutMs: 4000 });
    const registry = new Registry(gw.backend);
    await registry.start();
    await proxy.backend.put('hosts', '01', HOST, { ephemeral: true });
    await proxy.backend.put('tenants', 'acme.test.priv', TENANT);
    assert.deepEqual(await registry.tenant('acme.test.priv'), TENANT);

    let leader = 0;
    for (let m = 1; m <= 3; m++) if ((await zk.mode(m)) === 'leader') leader = m;
    assert.ok(leader > 0, 'a leader');
    await zk.stopMember(leader);

    // Writes go through once the remaining two elect a leader (a registration during the
    // election may get a 503 and is retried, as an orchestrator would).
    await waitFor(() => proxy.backend.put('tenants', 'beta.test.priv', TENANT).then(() => true), 'a write after leader loss', 15_000);
    await proxy.backend.put('tenants', 'acme.test.priv', { targets: [{ host: '02', container: 'c2' }] });
    await waitFor(async () => (await registry.tenant('acme.test.priv'))?.targets[0]?.host === '02', 'change routed after leader loss', 10_000);
    assert.deepEqual(await registry.tenant('beta.test.priv'), TENANT);
    assert.deepEqual(await gw.backend.get('hosts', '01'), HOST, 'ephemeral kept: same session');
    for (const o of [proxy, gw]) assert.ok(!o.warnings.some((w) => w.includes('new ZooKeeper session')), o.warnings.join('\n'));
  });

  it('down at start-up: start() says what it waits for, then resolves when ZooKeeper appears', { timeout: 60_000 }, async (t) => {
    const zk = await ZooKeeperServer.prepare();
    t.after(() => zk.stop());
    const o = open(t, zk.url('/late'));
    let resolved = false;
    const starting = o.backend.start().then(() => (resolved = true));
    await waitFor(() => o.warnings.some((w) => w.includes('waiting for ZooKeeper at 127.0.0.1')), 'a waiting message', 5000);
    assert.equal(resolved, false);
    assert.equal(o.backend.status().connected, false);
    assert.equal(o.backend.status().syncedAt, null);
    await zk.boot();
    await starting;
    await o.backend.put('tenants', 'late.test.priv', TENANT);
    assert.deepEqual(await o.backend.get('tenants', 'late.test.priv'), TENANT);
  });

  it('digest ACL: only holders of the credentials read or rewrite routes', { timeout: 60_000 }, async (t) => {
    const zk = await zookeeper(t);
    const url = zk.url('/acl');
    const owner = await started(t, url, { zkAuth: 'tgw:secret' });
    await owner.backend.put('tenants', 'acme.test.priv', TENANT);
    const peer = await started(t, url, { zkAuth: 'tgw:secret' });
    assert.deepEqual(await peer.backend.get('tenants', 'acme.test.priv'), TENANT);
    await peer.backend.put('tenants', 'acme.test.priv', { targets: [{ host: '02', container: 'c2' }] });

    const stranger = await started(t, url);
    await assert.rejects(stranger.backend.get('tenants', 'acme.test.priv'), /not authorized.*--zk-auth/);
    await assert.rejects(stranger.backend.put('tenants', 'acme.test.priv', TENANT), /not authorized/);
    const wrong = await started(t, url, { zkAuth: 'tgw:guess' });
    await assert.rejects(wrong.backend.delete('tenants', 'acme.test.priv'), /not authorized/);
    assert.equal(((await owner.backend.get('tenants', 'acme.test.priv')) as typeof TENANT).targets[0]?.host, '02');
  });

  it('concurrent writers of one key race safely; an ephemeral is taken over by its latest registrant', { timeout: 60_000 }, async (t) => {
    const zk = await zookeeper(t);
    const url = zk.url('/race');
    const a = await started(t, url, { opTimeoutMs: 5000 });
    const b = await started(t, url, { opTimeoutMs: 5000 });
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 10; i++) {
      writes.push(a.backend.put('tenants', 'contested.test.priv', { targets: [{ host: 'a', container: `c${i}` }] }));
      writes.push(b.backend.put('tenants', 'contested.test.priv', { targets: [{ host: 'b', container: `c${i}` }] }));
    }
    await Promise.all(writes);
    const final = (await a.backend.get('tenants', 'contested.test.priv')) as typeof TENANT;
    assert.match(final.targets[0]?.host ?? '', /^[ab]$/);
    assert.deepEqual(await b.backend.get('tenants', 'contested.test.priv'), final);

    await a.backend.put('hosts', '05', HOST, { ephemeral: true });
    await b.backend.put('hosts', '05', { address: '127.0.0.1:9005' }, { ephemeral: true });
    assert.ok(b.warnings.some((w) => w.includes('taking it over')));
    await a.backend.close(); // a's session ends: the node is b's now and stays
    assert.deepEqual(await b.backend.get('hosts', '05'), { address: '127.0.0.1:9005' });
  });

  it('100,000 tenants: registered, routed to a sample, listed page by page', { timeout: 180_000 }, async (t) => {
    const zk = await zookeeper(t);
    const url = zk.url('/scale');
    const writer = await started(t, url, { opTimeoutMs: 30_000 });
    const N = 100_000;
    const name = (i: number) => `tenant${i}.test.priv`;
    const t0 = Date.now();
    await parallel(N, 500, (i) => writer.backend.put('tenants', name(i), { targets: [{ host: `h${i % 50}`, container: `c${i}` }] }));
    const registerMs = Date.now() - t0;
    t.diagnostic(`registered ${N} tenants in ${registerMs} ms (${Math.round(N / (registerMs / 1000))}/s)`);

    const gw = open(t, url);
    const registry = new Registry(gw.backend);
    await registry.start();
    for (const i of [0, 1, 4242, 77_777, N - 1]) {
      assert.deepEqual(await registry.tenant(name(i)), { targets: [{ host: `h${i % 50}`, container: `c${i}` }] });
    }
    assert.equal(await registry.tenant('tenant100000.test.priv'), null);

    // No shard nears ZooKeeper's 1 MB reply limit: about N/256 names each.
    const t1 = Date.now();
    const seen = new Set<string>();
    let after: string | undefined;
    let pages = 0;
    do {
      const page = await gw.backend.list('tenants', { after, limit: 1000 });
      for (const k of page.keys) seen.add(k);
      after = page.next;
      pages++;
    } while (after !== undefined);
    t.diagnostic(`listed ${seen.size} tenants in ${pages} pages in ${Date.now() - t1} ms`);
    assert.equal(seen.size, N);
    assert.equal(pages, N / 1000);
    assert.ok(seen.has(name(31_337)));
    assert.equal(bucketOf(name(0)).length, 2);
  });
});

/** Runs fn(0..n-1) with at most `width` in flight. */
async function parallel(n: number, width: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(width, n) }, async () => {
    while (next < n) await fn(next++);
  });
  await Promise.all(lanes);
}

export type { RegistryBackend };
