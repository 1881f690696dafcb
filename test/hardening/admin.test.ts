/**
 * The admin API under hostile callers: 401 without the token, 429 after repeated failures per
 * client address, bodies bounded, and host addresses that would point the gateway at itself, its
 * ZooKeeper or link-local (cloud metadata) refused with a 400 naming the reason.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startStack, type Stack } from './support/stack.js';
import type { Reply } from '../support/util.js';

/** A request from a chosen loopback source address (127.0.0.0/8 is all ours on Linux). */
function from(localAddress: string, port: number, path: string, headers: Record<string, string> = {}, method = 'GET', body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, headers, localAddress, agent: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('hardening: admin API', () => {
  let stack: Stack;
  const DNS_PORT = 53_530;
  const ZK = { host: '10.1.2.3', port: 2181 };

  before(async () => {
    stack = await startStack({
      authFailures: { max: 3, windowMs: 60_000 },
      forbidden: [
        { host: '127.0.0.1', port: DNS_PORT, what: 'DNS server' },
        { ...ZK, what: 'ZooKeeper' },
      ],
      allowTargets: ['169.254.10.0/24'],
    });
  });
  after(async () => {
    await stack?.close();
  });

  it('401 without a valid token, whatever its length', async () => {
    const tries = ['', 'Bearer ', 'Bearer x', `Bearer ${stack.token}x`, `Bearer ${stack.token.slice(0, -1)}`, `bearer ${stack.token}`, stack.token];
    // One source address per try, so the failure limit does not interfere.
    for (const [i, auth] of tries.entries()) {
      const r = await from(`127.0.1.${i + 1}`, stack.adminPort, '/v1/hosts', auth === '' ? {} : { authorization: auth });
      assert.equal(r.status, 401, `${JSON.stringify(auth)}: ${r.status}`);
      assert.match(String(r.headers['www-authenticate']), /^Bearer/);
    }
  });

  it('after 3 failures a client gets 429 with Retry-After, even with the right token; other clients do not', async () => {
    for (let i = 0; i < 3; i++) assert.equal((await from('127.0.0.3', stack.adminPort, '/v1/hosts', { authorization: 'Bearer wrong' })).status, 401);
    const locked = await from('127.0.0.3', stack.adminPort, '/v1/hosts', { authorization: `Bearer ${stack.token}` });
    assert.equal(locked.status, 429);
    assert.ok(Number(locked.headers['retry-after']) > 0);
    assert.equal((await from('127.0.0.4', stack.adminPort, '/v1/hosts', { authorization: `Bearer ${stack.token}` })).status, 200);
  });

  it('bodies over 64 KB are refused, with Content-Length or chunked', async () => {
    const big = JSON.stringify({ address: `127.0.0.1:1`, pad: 'x'.repeat(70_000) });
    const r = await stack.adminCall('PUT', '/v1/hosts/h1', big);
    assert.equal(r.status, 400);
    assert.match(r.body, /larger than 65536 bytes/);
    const chunked = await stack.adminCall('PUT', '/v1/hosts/h1', big, { 'transfer-encoding': 'chunked' });
    assert.ok(chunked.status === 400 || chunked.status === 413, String(chunked.status));
  });

  it('host addresses pointing at this gateway, its ZooKeeper or link-local are refused with the reason', async () => {
    const refused: [string, RegExp][] = [
      ['169.254.169.254:80', /link-local/],
      ['[fe80::1]:80', /link-local/],
      ['[::ffff:169.254.169.254]:80', /link-local/],
      [`127.0.0.1:${stack.adminPort}`, /admin API/],
      [`localhost:${stack.adminPort}`, /admin API/],
      [`[::1]:${stack.adminPort}`, /admin API/],
      [`127.0.0.2:${stack.adminPort}`, /admin API/],
      [`127.0.0.1:${stack.gatewayPort}`, /gateway HTTP listener/],
      [`127.0.0.1:${DNS_PORT}`, /DNS server/],
      [`${ZK.host}:${ZK.port}`, /ZooKeeper/],
      ['0.0.0.0:8090', /unspecified/],
      [`[::]:8090`, /unspecified/],
    ];
    for (const [address, reason] of refused) {
      const r = await stack.adminCall('PUT', '/v1/hosts/h2', { address });
      assert.equal(r.status, 400, `${address}: ${r.body}`);
      const body = JSON.parse(r.body) as { field: string; message: string };
      assert.equal(body.field, 'address');
      assert.match(body.message, reason, address);
    }
    assert.equal((await stack.adminCall('GET', '/v1/hosts/h2')).status, 404, 'nothing was registered');
  });

  it('loopback, ordinary addresses and --allow-targets are accepted', async () => {
    for (const address of [`127.0.0.1:${stack.localPort}`, '10.0.0.5:8090', 'proxy-02.internal:8090', '169.254.10.7:8090', `${ZK.host}:8090`]) {
      const r = await stack.adminCall('PUT', '/v1/hosts/h3', { address });
      assert.equal(r.status, 200, `${address}: ${r.body}`);
    }
  });
});
