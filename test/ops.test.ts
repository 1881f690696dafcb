/**
 * Issue 6 in process: /metrics scraped and parsed, bounded tenant series, access log lines,
 * the config file, the dashboard's login and data endpoints.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig, UsageError, type Config } from '../config.js';
import { TenantTraffic } from '../ops/metrics.js';
import { buildQuery, udpExchange } from './support/dns-client.js';
import { startNode, tempDir, type TestNode } from './support/node.js';
import { request, startApp, waitFor, type App } from './support/util.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The Prometheus text format, enough of it to check values: `name{a="b",...} value`. */
function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

const value = (samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined =>
  samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

describe('GET /metrics', () => {
  let node: TestNode;
  let app: App;
  before(async () => {
    app = await startApp('m');
    node = await startNode(['--metrics-tenants', '2']);
    assert.equal((await node.admin('PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app.port })).status, 200);
    for (const t of ['a', 'b', 'c']) {
      const r = await node.admin('PUT', `/v1/tenants/${t}`, { targets: [{ host: '01', container: 'c001' }] });
      assert.equal(r.status, 200, r.body);
    }
  });
  after(async () => {
    await node?.close();
    await app?.close();
  });

  const scrape = async (headers: Record<string, string> = { authorization: `Bearer ${node.token}` }) => {
    const r = await request(node.adminPort, { path: '/metrics', headers });
    assert.equal(r.status, 200, r.body);
    assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    return parseExposition(r.body);
  };

  it('needs the admin token by default', async () => {
    const r = await request(node.adminPort, { path: '/metrics' });
    assert.equal(r.status, 401);
    assert.match(String(r.headers['www-authenticate']), /^Bearer/);
    assert.equal((await request(node.adminPort, { path: '/metrics', headers: { authorization: 'Bearer wrong' } })).status, 401);
  });

  it('counts requests by component, status class and tenant, with latency histograms and error codes', async () => {
    for (let i = 0; i < 5; i++) assert.equal((await node.get('a.test.priv')).status, 200);
    for (let i = 0; i < 3; i++) assert.equal((await node.get('b.test.priv')).status, 200);
    assert.equal((await node.get('c.test.priv')).status, 200);
    assert.equal((await node.get('nobody.test.priv')).status, 404);
    assert.equal((await node.get('bad host!')).status, 400);
    const m = await waitFor(async () => {
      const s = await scrape();
      return value(s, 'tgw_http_requests_total', { component: 'gateway', status_class: '2xx' }) === 9 ? s : undefined;
    }, 'the requests to be counted');

    assert.equal(value(m, 'tgw_http_requests_total', { component: 'local-proxy', status_class: '2xx' }), 9);
    assert.equal(value(m, 'tgw_http_requests_total', { component: 'gateway', status_class: '4xx' }), 2);
    assert.equal(value(m, 'tgw_proxy_errors_total', { component: 'gateway', error: 'unknown_tenant' }), 1);
    assert.equal(value(m, 'tgw_proxy_errors_total', { component: 'gateway', error: 'bad_host' }), 1);
    // Histogram: cumulative buckets ending at +Inf = count.
    const count = value(m, 'tgw_http_request_duration_seconds_count', { component: 'gateway', status_class: '2xx' });
    assert.equal(count, 9);
    assert.equal(value(m, 'tgw_http_request_duration_seconds_bucket', { component: 'gateway', status_class: '2xx', le: '+Inf' }), 9);
    const buckets = m.filter((s) => s.name === 'tgw_http_request_duration_seconds_bucket' && s.labels.component === 'gateway' && s.labels.status_class === '2xx');
    for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, 'buckets are cumulative');
    assert.ok((value(m, 'tgw_http_request_duration_seconds_sum', { component: 'gateway', status_class: '2xx' }) ?? 0) > 0);

    // --metrics-tenants 2: the first two tenants seen have series, the third counts as "other".
    const tenants = new Set(m.filter((s) => s.name === 'tgw_tenant_http_requests_total').map((s) => s.labels.tenant));
    assert.deepEqual([...tenants].sort(), ['a.test.priv', 'b.test.priv', 'other']);
    assert.equal(value(m, 'tgw_tenant_http_requests_total', { component: 'gateway', tenant: 'a.test.priv', status_class: '2xx' }), 5);
    assert.equal(value(m, 'tgw_tenant_http_requests_total', { component: 'gateway', tenant: 'other', status_class: '2xx' }), 1);
    assert.equal(value(m, 'tgw_tenant_series'), 2);
  });

  it('reports registry state and DNS queries by rcode', async () => {
    const dnsPort = node.addresses.dns ?? 0;
    await udpExchange(dnsPort, buildQuery('a.test.priv'));
    await udpExchange(dnsPort, buildQuery('example.com'));
    const m = await scrape();
    assert.equal(value(m, 'tgw_registry_connected'), 1);
    assert.equal(value(m, 'tgw_registry_stale_seconds'), 0);
    assert.ok((value(m, 'tgw_registry_last_sync_age_seconds') ?? -1) >= 0);
    assert.ok((value(m, 'tgw_registry_change_events_total') ?? 0) >= 4, 'the registrations above were change events');
    assert.ok((value(m, 'tgw_registry_cache_hits_total') ?? 0) > 0);
    assert.ok((value(m, 'tgw_registry_cache_misses_total') ?? 0) > 0);
    assert.ok((value(m, 'tgw_registry_cache_entries') ?? 0) > 0);
    assert.ok(value(m, 'tgw_registry_info', { backend: `file:${path.join(node.dataDir, 'registry.json')}` }));
    assert.ok((value(m, 'tgw_dns_queries_total') ?? 0) >= 2);
    assert.equal(value(m, 'tgw_dns_responses_total', { rcode: 'NOERROR' }), 1);
    assert.equal(value(m, 'tgw_dns_responses_total', { rcode: 'REFUSED' }), 1);
    assert.ok(value(m, 'process_resident_memory_bytes'), 'process metrics');
  });

  it('exposes replica and local proxy health that another component reports, bounded', async () => {
    node.metrics.setReplicaHealth('a', '01/c001', false);
    node.metrics.setLocalProxyHealth('01', true);
    const m = await scrape();
    assert.equal(value(m, 'tgw_replica_up', { tenant: 'a', replica: '01/c001' }), 0);
    assert.equal(value(m, 'tgw_local_proxy_up', { host: '01' }), 1);
    node.metrics.forgetReplica('a', '01/c001');
    assert.equal(value(await scrape(), 'tgw_replica_up', { tenant: 'a' }), undefined);
  });
});

describe('TenantTraffic: bounded per-tenant series', () => {
  it('100k tenants make at most N series, and a heavy hitter gets one within a window', () => {
    const t = new TenantTraffic(10, 1_000);
    let now = 0;
    for (let i = 0; i < 100_000; i++) t.count(`t${i}.test.priv`, 2, now);
    assert.equal(t.rows().size, 10);
    assert.equal(t.other()[2], 100_000 - 10);
    for (let i = 0; i < 500; i++) t.count('heavy.test.priv', 2, now + 1);
    assert.ok(!t.rows().has('heavy.test.priv'), 'no slot is free: it waits for the next window');
    now += 1_000;
    t.count('heavy.test.priv', 2, now); // the window rolls over: the heavy tenant replaces a quiet one
    assert.ok(t.rows().has('heavy.test.priv'));
    assert.equal(t.rows().size, 10);
    assert.equal(t.evictions, 1);
  });

  it('a busy labeled tenant keeps its series; fewer slots evict the quietest', () => {
    const t = new TenantTraffic(2, 1_000);
    for (let i = 0; i < 50; i++) t.count('busy', 2, 0);
    t.count('quiet', 2, 0);
    for (let i = 0; i < 30; i++) t.count('newcomer', 2, 1);
    t.count('busy', 2, 2_000);
    assert.deepEqual([...t.rows().keys()].sort(), ['busy', 'newcomer']);
    t.setMax(1);
    assert.equal(t.rows().size, 1);
  });
});

describe('access log', () => {
  it('writes one JSON line per request with the fields of issue 6', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'logs', 'access.log');
    const app = await startApp('al');
    const node = await startNode(['--access-log', file]);
    try {
      await node.admin('PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app.port });
      await node.admin('PUT', '/v1/tenants/acme', { targets: [{ host: '01', container: 'c001' }] });
      assert.equal((await node.get('acme.test.priv', { path: '/hello?x=1', method: 'POST', body: 'abc' })).status, 200);
      assert.equal((await node.get('ghost.test.priv', { path: '/nope' })).status, 404);
      const lines = await waitFor(() => {
        const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
        const ls = text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
        return ls.length >= 3 ? ls : undefined;
      }, 'three access log lines');
      assert.equal(lines.length, 3, 'gateway and local proxy for the routed request, gateway for the 404');
      const gw = lines.find((l) => l.component === 'gateway' && l.status === 200);
      assert.ok(gw, JSON.stringify(lines));
      assert.match(String(gw.time), /^\d{4}-\d\d-\d\dT/);
      assert.match(String(gw.requestId), /^[0-9a-f-]{36}$/);
      assert.equal(gw.host, 'acme.test.priv');
      assert.equal(gw.method, 'POST');
      assert.equal(gw.path, '/hello?x=1');
      assert.ok(typeof gw.bytes === 'number' && gw.bytes > 0);
      assert.ok(typeof gw.durationMs === 'number' && gw.durationMs >= 0);
      assert.match(String(gw.upstream), /local proxy at 127\.0\.0\.1:/);
      assert.equal(gw.retries, 0);
      assert.equal(gw.error, undefined);
      const lp = lines.find((l) => l.component === 'local-proxy');
      assert.equal(lp?.requestId, gw.requestId, 'one request id across both hops');
      const miss = lines.find((l) => l.status === 404);
      assert.equal(miss?.error, 'unknown_tenant');
      assert.equal(miss?.host, 'ghost.test.priv');
      assert.equal(miss?.upstream, undefined);
    } finally {
      await node.close();
      await app.close();
    }
  });

  it('a file that cannot be opened stops start-up with a message naming it', async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'not-a-dir'), '');
    await assert.rejects(startNode(['--access-log', path.join(dir, 'not-a-dir', 'access.log')]), /access log .*not-a-dir.* cannot be opened/);
  });
});

describe('--config file', () => {
  const write = (name: string, text: string) => {
    const file = path.join(tempDir(), name);
    fs.writeFileSync(file, text);
    return file;
  };
  const parse = (argv: string[], env: NodeJS.ProcessEnv = {}): Config => {
    const c = parseConfig(argv, env);
    assert.notEqual(c, 'help');
    return c as Config;
  };

  it('reads JSON and YAML; flags, then TGW_* variables, override the file', () => {
    const json = write('gw.json', JSON.stringify({ 'http-port': 9000, 'admin-port': 9001, domain: 'example.test', 'trusted-proxies': ['10.0.0.1', '10.0.0.2'], 'access-log': 'stdout' }));
    const c = parse(['up', '--config', json, '--admin-port', '9101'], { TGW_HTTP_PORT: '9100' });
    assert.equal(c.httpPort, 9100, 'env over file');
    assert.equal(c.adminPort, 9101, 'flag over file');
    assert.equal(c.names.domain, 'example.test');
    assert.deepEqual(c.trustedProxies, ['10.0.0.1', '10.0.0.2']);
    assert.equal(c.accessLog, 'stdout');
    assert.equal(c.configFile, json);

    const yaml = write('gw.yaml', 'http-port: 9200\nlog-level: warn\ndrain-timeout: 2.5\n# comment\nmetrics-tenants: 0\n');
    const y = parse(['gateway'], { TGW_CONFIG: yaml });
    assert.equal(y.httpPort, 9200);
    assert.equal(y.logLevel, 'warn');
    assert.equal(y.drainTimeoutMs, 2500);
    assert.equal(y.metricsTenants, 0);
  });

  const cases: [string, string, string, RegExp][] = [
    ['unknown key, with a suggestion', 'a.json', '{"http_port": 1}', /a\.json: unknown key "http_port"; did you mean "http-port"\?/],
    ['typo', 'a.yaml', 'domian: x.test\n', /a\.yaml: unknown key "domian"; did you mean "domain"\?/],
    ['wrong type', 'a.json', '{"http-port": {"n": 1}}', /a\.json: key "http-port" must be a string or a number; got object/],
    ['bad value names the key and file', 'a.json', '{"http-port": 70000}', /"http-port" in a\.json must be a port number 0-65535; got "70000"/],
    ['bad enum', 'a.yaml', 'log-level: debug\n', /"log-level" in a\.yaml must be one of info, warn, error/],
    ['bad domain', 'a.json', '{"domain": "-x-"}', /"domain" in a\.json: --domain must be a DNS name/],
    ['not JSON', 'a.json', '{"http-port": ', /a\.json is not valid JSON/],
    ['not YAML', 'a.yaml', 'a: [1\n', /a\.yaml is not valid YAML/],
    ['not a mapping', 'a.yaml', '- 1\n- 2\n', /must hold a mapping/],
    ['unknown extension', 'a.toml', 'x = 1', /name it \.json, \.yaml or \.yml/],
    ['nested config', 'a.json', '{"config": "b.json"}', /key "config": a config file cannot name another one/],
  ];
  for (const [what, name, text, message] of cases) {
    it(`refuses: ${what}`, () => {
      const file = write(name, text);
      assert.throws(() => parseConfig(['up', '--config', file], {}), (err: Error) => err instanceof UsageError && message.test(err.message));
    });
  }

  it('a missing file is named', () => {
    assert.throws(() => parseConfig(['up', '--config', '/nonexistent/tgw.json'], {}), /config file \/nonexistent\/tgw\.json cannot be read/);
  });
});

describe('dashboard login and data endpoints', () => {
  let node: TestNode;
  before(async () => {
    node = await startNode();
  });
  after(async () => {
    await node?.close();
  });

  it('serves a login form until the token is given; the session is an HttpOnly SameSite=Strict cookie', async () => {
    const form = await request(node.adminPort, { path: '/dashboard' });
    assert.equal(form.status, 200);
    assert.match(form.body, /<form method="post" action="\/dashboard\/login"/);
    assert.match(String(form.headers['content-security-policy']), /frame-ancestors 'none'/);

    const bad = await request(node.adminPort, { method: 'POST', path: '/dashboard/login', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'token=nope' });
    assert.equal(bad.status, 401);
    assert.equal(bad.headers['set-cookie'], undefined);

    const good = await request(node.adminPort, {
      method: 'POST',
      path: '/dashboard/login',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `token=${encodeURIComponent(node.token ?? '')}`,
    });
    assert.equal(good.status, 303);
    const setCookie = String(good.headers['set-cookie']);
    assert.match(setCookie, /tgw_session=[^;]+; Path=\/; HttpOnly; SameSite=Strict/);
    assert.ok(!setCookie.includes(node.token ?? 'x'), 'the cookie is not the token');
    const cookie = setCookie.split(';')[0] ?? '';

    const pageWithCookie = await request(node.adminPort, { path: '/dashboard', headers: { cookie } });
    assert.match(pageWithCookie.body, /Explain a hostname/);
    const stats = await request(node.adminPort, { path: '/dashboard/api/stats', headers: { cookie } });
    assert.equal(stats.status, 200);
    assert.equal((JSON.parse(stats.body) as { registry: { connected: boolean } }).registry.connected, true);
    // The cookie opens /metrics too (a browser); Prometheus uses the bearer token.
    assert.equal((await request(node.adminPort, { path: '/metrics', headers: { cookie } })).status, 200);
  });

  it('?token= once sets the cookie and redirects to a clean URL', async () => {
    const r = await request(node.adminPort, { path: `/dashboard?token=${encodeURIComponent(node.token ?? '')}` });
    assert.equal(r.status, 303);
    assert.equal(r.headers.location, '/dashboard');
    assert.match(String(r.headers['set-cookie']), /HttpOnly; SameSite=Strict/);
  });

  it('data endpoints refuse without a session, and a cross-origin login is refused', async () => {
    for (const p of ['/dashboard/api/stats', '/dashboard/api/hosts', '/dashboard/api/tenants', '/dashboard/api/explain?host=a.test.priv']) {
      assert.equal((await request(node.adminPort, { path: p })).status, 401, p);
      assert.equal((await request(node.adminPort, { path: p, headers: { cookie: 'tgw_session=forged' } })).status, 401, p);
    }
    const r = await request(node.adminPort, {
      method: 'POST',
      path: '/dashboard/login',
      headers: { origin: 'http://evil.example', 'content-type': 'application/x-www-form-urlencoded' },
      body: `token=${node.token}`,
    });
    assert.equal(r.status, 403);
  });
});
