/**
 * The product path on real sockets: admin API -> registry -> gateway -> local proxy -> app.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startNode, tempDir, type TestNode } from './support/node.js';
import { freePort, request, startApp, waitFor, type App } from './support/util.js';

describe('end to end on the file registry', () => {
  let node: TestNode;
  let app1: App;
  let app2: App;

  before(async () => {
    app1 = await startApp('app1');
    app2 = await startApp('app2');
    node = await startNode(['--upstream-timeout', '1']);
    const r = await node.admin('PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app1.port });
    assert.equal(r.status, 200, r.body);
  });
  after(async () => {
    await node?.close();
    await app1?.close();
    await app2?.close();
  });

  it('the local proxy registered its own host', async () => {
    const r = await node.admin('GET', '/v1/hosts/01');
    assert.equal(r.status, 200);
    const body = JSON.parse(r.body) as { address: string; containers: { id: string }[] };
    assert.equal(body.address, `127.0.0.1:${node.addresses.localProxy?.port}`);
    assert.deepEqual(body.containers.map((c) => c.id), ['c001']);
  });

  it('routes a structured name through both hops with forwarding headers set', async () => {
    const r = await node.get('wordpress_c001_01.test.priv', {
      path: '/hello?x=1',
      headers: { 'x-forwarded-for': '6.6.6.6', 'x-request-id': 'spoofed', connection: 'x-custom', 'x-custom': 'drop me', te: 'trailers' },
    });
    assert.equal(r.status, 200, r.body);
    const seen = JSON.parse(r.body) as { app: string; url: string; headers: Record<string, string> };
    assert.equal(seen.app, 'app1');
    assert.equal(seen.url, '/hello?x=1');
    assert.equal(seen.headers.host, 'wordpress_c001_01.test.priv');
    // The gateway replaced the client's value; the local proxy (trusted: loopback) appended the gateway.
    assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1, 127.0.0.1');
    assert.equal(seen.headers['x-forwarded-proto'], 'http');
    assert.equal(seen.headers['x-forwarded-host'], 'wordpress_c001_01.test.priv');
    assert.match(seen.headers['x-request-id'] ?? '', /^[0-9a-f-]{36}$/);
    assert.equal(seen.headers['x-custom'], undefined, 'a header named in Connection is hop-by-hop');
    assert.equal(seen.headers.te, undefined);
    // Response hop-by-hop headers (and the one the app's Connection named) are stripped too.
    assert.equal(r.headers['x-app-secret'], undefined);
  });

  it('a Connection header cannot strip Host, Content-Length or the forwarding headers', async () => {
    const r = await node.get('wordpress_c001_01.test.priv', {
      method: 'POST',
      headers: { connection: 'host, content-length, x-forwarded-for, x-request-id', 'content-length': '5' },
      body: 'hello',
    });
    assert.equal(r.status, 200, r.body);
    const seen = JSON.parse(r.body) as { headers: Record<string, string>; bodyBytes: number };
    assert.equal(seen.headers.host, 'wordpress_c001_01.test.priv');
    assert.equal(seen.headers['content-length'], '5');
    assert.equal(seen.bodyBytes, 5);
    assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1, 127.0.0.1');
    assert.ok(seen.headers['x-request-id']);
  });

  it('streams request and response bodies both ways', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024 + 7, 'x');
    for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
    const r = await new Promise<{ status: number; hash: string; length: number }>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: node.httpPort, method: 'POST', path: '/echo', headers: { host: 'wordpress_c001_01.test.priv' } },
        (res) => {
          const h = createHash('sha256');
          let length = 0;
          res.on('data', (c: Buffer) => {
            h.update(c);
            length += c.length;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, hash: h.digest('hex'), length }));
        },
      );
      req.on('error', reject);
      // Chunked upload in pieces: no Content-Length.
      for (let i = 0; i < big.length; i += 65536) req.write(big.subarray(i, i + 65536));
      req.end();
    });
    assert.equal(r.status, 200);
    assert.equal(r.length, big.length);
    assert.equal(r.hash, createHash('sha256').update(big).digest('hex'));
  });

  it('routes a registered tenant and a custom domain', async () => {
    assert.equal((await node.get('acme.test.priv')).status, 404);
    let r = await node.admin('PUT', '/v1/tenants/acme', { targets: [{ host: '01', container: 'c001' }] });
    assert.equal(r.status, 200, r.body);
    r = await node.get('acme.test.priv');
    assert.equal(r.status, 200, r.body);
    assert.equal((JSON.parse(r.body) as { app: string }).app, 'app1');

    await node.admin('PUT', '/v1/hosts/01/containers/c002', { app: 'shop', port: app2.port });
    r = await node.admin('PUT', '/v1/tenants/shop.example.com', { targets: [{ host: '01', container: 'c002' }] });
    assert.equal(r.status, 200, r.body);
    r = await node.get('Shop.Example.COM.:8080');
    assert.equal(r.status, 200, r.body);
    assert.equal((JSON.parse(r.body) as { app: string }).app, 'app2');
  });

  it('a registration change routes on the next request without touching open connections', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const reused: boolean[] = [];
      const get = (host: string) =>
        new Promise<number>((resolve, reject) => {
          const req = http.get({ host: '127.0.0.1', port: node.httpPort, headers: { host }, agent }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          });
          reused.push(req.reusedSocket);
          req.on('error', reject);
        });
      assert.equal(await get('wordpress_c001_01.test.priv'), 200);
      // Re-point the tenant to another container while the client's connection stays open.
      await node.admin('PUT', '/v1/hosts/01/containers/c003', { app: 'blog', port: app2.port });
      await node.admin('PUT', '/v1/tenants/moving', { targets: [{ host: '01', container: 'c001' }] });
      assert.equal(await get('moving.test.priv'), 200);
      await node.admin('PUT', '/v1/tenants/moving', { targets: [{ host: '01', container: 'c003' }] });
      const r = await node.get('moving.test.priv');
      assert.equal((JSON.parse(r.body) as { app: string }).app, 'app2', 'the next request follows the new registration');
      assert.equal(await get('wordpress_c001_01.test.priv'), 200);
      assert.deepEqual(reused, [false, true, true], 'the open keep-alive connection was never closed');
    } finally {
      agent.destroy();
    }
  });

  it('carries WebSocket upgrades through both hops', async () => {
    const { socket, head } = await new Promise<{ socket: import('node:net').Socket; head: Buffer }>((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: node.httpPort,
        headers: { host: 'wordpress_c001_01.test.priv', connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' },
      });
      req.on('upgrade', (res, socket, head) => {
        assert.equal(res.statusCode, 101);
        resolve({ socket, head });
      });
      req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
      req.on('error', reject);
      req.end();
    });
    try {
      let got = head.toString();
      socket.on('data', (d: Buffer) => (got += d.toString()));
      socket.write('ping-1');
      await waitFor(() => got.includes('app1:ping-1'), 'echo through the tunnel');
      socket.write('ping-2');
      await waitFor(() => got.includes('app1:ping-2'), 'second echo');
      const upgrade = app1.seen.filter((s) => s.headers.upgrade === 'websocket').at(-1);
      assert.equal(upgrade?.headers.host, 'wordpress_c001_01.test.priv');
      assert.equal(upgrade?.headers['x-forwarded-for'], '127.0.0.1, 127.0.0.1');
    } finally {
      socket.destroy();
    }
  });

  describe('error statuses', () => {
    const errorOf = (r: { body: string }) => JSON.parse(r.body) as { status: number; error: string; message: string; requestId: string; component: string };

    it('400 for a malformed Host, with JSON or HTML', async () => {
      let r = await node.get('bad/host.test.priv');
      assert.equal(r.status, 400);
      assert.equal(errorOf(r).error, 'bad_host');
      assert.equal(errorOf(r).requestId, r.headers['x-request-id']);
      r = await node.get('bad/host.test.priv', { headers: { accept: 'text/html,*/*' } });
      assert.equal(r.status, 400);
      assert.match(r.headers['content-type'] ?? '', /text\/html/);
      assert.match(r.body, /<h1>400<\/h1>/);
    });

    it('404 for an unknown tenant, host or container, and for the wrong app', async () => {
      for (const [host, code] of [
        ['nobody.test.priv', 'unknown_tenant'],
        ['wordpress_c001_99.test.priv', 'unknown_host'],
        ['wordpress_c999_01.test.priv', 'unknown_container'],
        ['drupal_c001_01.test.priv', 'unknown_container'],
        ['test.priv', 'unknown_tenant'],
        ['127.0.0.1', 'unknown_tenant'],
        ['169.254.169.254', 'unknown_tenant'],
      ] as const) {
        const r = await node.get(host);
        assert.equal(r.status, 404, `${host}: ${r.body}`);
        assert.equal(errorOf(r).error, code, host);
      }
    });

    it('502 when the container refuses', async () => {
      await node.admin('PUT', '/v1/hosts/01/containers/dead', { app: 'wordpress', port: await freePort() });
      const r = await node.get('wordpress_dead_01.test.priv');
      assert.equal(r.status, 502, r.body);
      assert.equal(errorOf(r).error, 'upstream_refused');
      assert.equal(errorOf(r).component, 'local-proxy');
    });

    it('503 with Retry-After when the host is registered but its local proxy is not reachable', async () => {
      await node.admin('PUT', '/v1/hosts/07', { address: `127.0.0.1:${await freePort()}` });
      const r = await node.get('wordpress_c001_07.test.priv');
      assert.equal(r.status, 503, r.body);
      assert.equal(errorOf(r).error, 'local_proxy_unreachable');
      assert.equal(errorOf(r).component, 'gateway');
      assert.equal(r.headers['retry-after'], '1');
    });

    it('504 when the container does not answer in time', async () => {
      const silent = await startApp('silent', () => {
        /* never answers */
      });
      try {
        await node.admin('PUT', '/v1/hosts/01/containers/slow', { app: 'wordpress', port: silent.port });
        const r = await node.get('wordpress_slow_01.test.priv');
        assert.equal(r.status, 504, r.body);
        assert.equal(errorOf(r).error, 'upstream_timeout');
      } finally {
        await silent.close();
      }
    });

    it('a response cut mid-body reaches the client as an aborted connection, never a clean end', async () => {
      const cutter = await startApp('cutter', (_req, res) => {
        res.writeHead(200, { 'content-length': '1000' });
        res.write('partial');
        setImmediate(() => res.socket?.destroy());
      });
      try {
        await node.admin('PUT', '/v1/hosts/01/containers/cut', { app: 'wordpress', port: cutter.port });
        await assert.rejects(node.get('wordpress_cut_01.test.priv'), /aborted|socket hang up|ECONNRESET/);
      } finally {
        await cutter.close();
      }
    });
  });

  describe('admin API', () => {
    it('401 without or with a wrong token; /healthz is open', async () => {
      const none = await request(node.adminPort, { path: '/v1/hosts' });
      assert.equal(none.status, 401);
      const wrong = await request(node.adminPort, { path: '/v1/hosts', headers: { authorization: 'Bearer nope' } });
      assert.equal(wrong.status, 401);
      assert.match(wrong.body, /Authorization: Bearer/);
      assert.equal((await request(node.adminPort, { path: '/healthz' })).status, 200);
    });

    const bad: [string, string, unknown, string, RegExp][] = [
      ['PUT', '/v1/hosts/01/containers/c9', '{not json', '', /not valid JSON/],
      ['PUT', '/v1/hosts/01/containers/c9', { app: 'wp', port: 3001, extra: 1 }, '', /unknown field.*extra/],
      ['PUT', '/v1/hosts/01/containers/c9', { app: 'wp', port: 70000 }, 'port', /1-65535/],
      ['PUT', '/v1/hosts/01/containers/c9', { app: 'wp', port: '3001' }, 'port', /number/],
      ['PUT', '/v1/hosts/01/containers/c9', { app: 'Bad_App', port: 3001 }, 'app', /a-z, 0-9/],
      ['PUT', '/v1/hosts/BAD_ID/containers/c9', { app: 'wp', port: 3001 }, 'hostId', /host id/],
      ['PUT', '/v1/hosts/01', { address: 'nowhere' }, 'address', /host:port/],
      ['PUT', '/v1/hosts/01', { address: '10.0.0.1:0' }, 'address', /1-65535/],
      ['PUT', '/v1/tenants/my_shop', { targets: [{ host: '01', container: 'c001' }] }, 'name', /"_" is not allowed/],
      ['PUT', '/v1/tenants/acme2', { targets: [] }, 'targets', /at least one/],
      ['PUT', '/v1/tenants/acme2', { targets: [{ host: '01' }] }, 'targets.0.container', /./],
      ['GET', '/v1/tenants?limit=0', undefined, 'limit', /1 to 10000/],
      ['GET', '/v1/explain', undefined, 'host', /hostname to explain/],
    ];
    for (const [method, url, body, field, re] of bad) {
      it(`400 for ${method} ${url} ${typeof body === 'string' ? body : JSON.stringify(body) ?? ''}`, async () => {
        const r = await node.admin(method, url, body);
        assert.equal(r.status, 400, r.body);
        const b = JSON.parse(r.body) as { error: string; field: string; message: string };
        assert.equal(b.error, 'invalid_request');
        assert.equal(b.field, field);
        assert.match(b.message, re);
      });
    }

    it('400 for an oversized body', async () => {
      const r = await node.admin('PUT', '/v1/hosts/01', { address: `127.0.0.1:1`, pad: 'x'.repeat(100_000) });
      assert.equal(r.status, 400);
      assert.match(r.body, /larger than/);
    });

    it('lists, gets and deletes', async () => {
      await node.admin('PUT', '/v1/tenants/alpha', { targets: [{ host: '01', container: 'c001' }] });
      await node.admin('PUT', '/v1/tenants/zeta', { targets: [{ host: '01', container: 'c001' }] });
      const list = JSON.parse((await node.admin('GET', '/v1/tenants?limit=2')).body) as { tenants: string[]; next: string | null };
      assert.equal(list.tenants.length, 2);
      assert.ok(list.next);
      const rest = JSON.parse((await node.admin('GET', `/v1/tenants?after=${list.next}`)).body) as { tenants: string[] };
      assert.ok(rest.tenants.includes('zeta'));
      assert.equal((await node.admin('GET', '/v1/tenants/zeta')).status, 200);
      assert.equal((await node.admin('DELETE', '/v1/tenants/zeta')).status, 204);
      assert.equal((await node.admin('GET', '/v1/tenants/zeta')).status, 404);
      assert.equal((await node.get('zeta.test.priv')).status, 404);
      const hosts = JSON.parse((await node.admin('GET', '/v1/hosts')).body) as { hosts: { id: string }[] };
      assert.ok(hosts.hosts.some((h) => h.id === '01'));
    });

    it('explain says how a name routes, and why not', async () => {
      await node.admin('PUT', '/v1/tenants/acme', { targets: [{ host: '01', container: 'c001' }] });
      let r = await node.admin('GET', '/v1/explain?host=acme.test.priv');
      let e = JSON.parse(r.body) as { kind: string; routes: boolean; forwardTo: string; records: { path: string }[]; registry: { connected: boolean } };
      assert.equal(e.kind, 'tenant');
      assert.equal(e.routes, true);
      assert.match(e.forwardTo, /host 01's local proxy at 127\.0\.0\.1:\d+/);
      assert.deepEqual(e.records.map((x) => x.path), ['tenants/acme', 'hosts/01', 'containers/01/c001']);
      assert.equal(e.registry.connected, true);
      r = await node.admin('GET', '/v1/explain?host=wordpress_c001_42.test.priv');
      const e2 = JSON.parse(r.body) as { kind: string; routes: boolean; status: number; reason: string; parts: Record<string, string> };
      assert.deepEqual(e2.parts, { app: 'wordpress', container: 'c001', host: '42' });
      assert.equal(e2.routes, false);
      assert.equal(e2.status, 404);
      assert.match(e2.reason, /no container host "42"/);
    });
  });
});

describe('file registry persistence', () => {
  it('an acknowledged registration survives a restart; the self-registered host is renewed', async () => {
    const app = await startApp('persist');
    const dir = tempDir();
    try {
      let node = await startNode([], dir);
      assert.equal((await node.admin('PUT', '/v1/hosts/01/containers/c1', { app: 'wp', port: app.port })).status, 200);
      assert.equal((await node.admin('PUT', '/v1/tenants/keep', { targets: [{ host: '01', container: 'c1' }] })).status, 200);
      await node.close();
      node = await startNode([], dir);
      try {
        assert.equal((await node.get('keep.test.priv')).status, 200);
        assert.equal((await node.get('wp_c1_01.test.priv')).status, 200);
      } finally {
        await node.close();
      }
    } finally {
      await app.close();
    }
  });

  it('a corrupt file stops start-up with a message naming it, and is left untouched', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'registry.json');
    fs.writeFileSync(file, '{"version":1, "hosts": {');
    await assert.rejects(startNode([], dir), (err: Error) => err.message.includes(file) && /not valid JSON/.test(err.message));
    assert.equal(fs.readFileSync(file, 'utf8'), '{"version":1, "hosts": {');
  });

  it('a second owner of the same file is refused', async () => {
    const dir = tempDir();
    const node = await startNode([], dir);
    try {
      await assert.rejects(startNode([], dir), /already open for writing in this process/);
    } finally {
      await node.close();
    }
  });
});
