/**
 * `npm run demo`: the README's walk-through, run for real and printed step by step.
 * Starts two tiny tenant apps and `tenant-gateway up` (a child process, free ports, a temp
 * data dir), registers through the admin API, asks the DNS server, requests through the
 * gateway, then stops everything and exits 0 (1 on the first step that fails).
 */
import { execFileSync, spawn } from 'node:child_process';
import { Resolver } from 'node:dns/promises';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin/tenant-gateway.js');
const TOKEN = 'demo-token';

function startApp(name: string): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(`hello from ${name} (Host: ${req.headers.host}, X-Forwarded-For: ${req.headers['x-forwarded-for']})\n`);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function call(port: number, method: string, urlPath: string, headers: Record<string, string>, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text.trim() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function step(title: string, command: string): void {
  process.stdout.write(`\n== ${title}\n$ ${command}\n`);
}

function expect(ok: boolean, what: string): void {
  if (!ok) throw new Error(`demo step failed: ${what}`);
}

async function main(): Promise<void> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgw-demo-'));
  const wordpress = await startApp('wordpress (container c001)');
  const shop = await startApp('shop (container c002)');
  const wpPort = (wordpress.address() as AddressInfo).port;
  const shopPort = (shop.address() as AddressInfo).port;
  process.stdout.write(`tenant apps listening on 127.0.0.1:${wpPort} and 127.0.0.1:${shopPort}\n`);

  // A local CA and a wildcard certificate for *.test.priv, for the HTTPS step.
  const caDir = path.join(dataDir, 'ca');
  execFileSync('bash', [path.join(ROOT, 'scripts/dev-ca.sh'), caDir, 'test.priv'], { stdio: 'ignore' });
  const tlsArgs = ['--https-port', '0', '--tls-cert', path.join(caDir, 'wildcard.pem'), '--tls-key', path.join(caDir, 'wildcard-key.pem')];
  const args = ['up', '--http-port', '0', '--admin-port', '0', '--dns-port', '0', '--local-port', '0', '--data-dir', dataDir, ...tlsArgs];
  step('start the gateway (DNS, gateway, admin API, local proxy for host 01)', `tenant-gateway ${args.join(' ')}`);
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, TGW_ADMIN_TOKEN: TOKEN }, stdio: ['ignore', 'pipe', 'inherit'] });
  const ports: Record<string, number> = {};
  let buffered = '';
  const ready = new Promise<void>((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`tenant-gateway exited with ${code} during start-up`)));
    child.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      let i;
      while ((i = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, i);
        buffered = buffered.slice(i + 1);
        process.stdout.write(`  | ${line}\n`);
        const rec = JSON.parse(line) as { msg?: string; role?: string; address?: string };
        if (rec.msg === 'listening' && rec.role && rec.address) ports[rec.role] = Number(rec.address.split(':').pop());
        if (rec.role === 'dns') resolve();
      }
    });
  });
  const timeout = setTimeout(() => child.kill('SIGTERM'), 60_000);
  try {
    await ready;
    const http = ports.gateway ?? 0;
    const admin = ports.admin ?? 0;
    const dnsPort = ports.dns ?? 0;
    const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

    step('register container c001 (app wordpress) on host 01', `curl -X PUT -H "Authorization: Bearer $TOKEN" -d '{"app":"wordpress","port":${wpPort}}' localhost:${admin}/v1/hosts/01/containers/c001`);
    let r = await call(admin, 'PUT', '/v1/hosts/01/containers/c001', auth, JSON.stringify({ app: 'wordpress', port: wpPort }));
    process.stdout.write(`${r.status} ${r.body}\n`);
    expect(r.status === 200, 'container registration');

    step('wildcard DNS answers the gateway for any name in the zone', `dig @127.0.0.1 -p ${dnsPort} wordpress_c001_01.test.priv +short`);
    const resolver = new Resolver({ timeout: 2000, tries: 2 });
    resolver.setServers([`127.0.0.1:${dnsPort}`]);
    const addrs = await resolver.resolve4('wordpress_c001_01.test.priv');
    process.stdout.write(`${addrs.join('\n')}\n`);
    expect(addrs.includes('127.0.0.1'), 'DNS answer');

    step('the structured name routes app_container_host -> host 01 -> container c001', `curl -H 'Host: wordpress_c001_01.test.priv' localhost:${http}/`);
    r = await call(http, 'GET', '/', { host: 'wordpress_c001_01.test.priv' });
    process.stdout.write(`${r.status} ${r.body}\n`);
    expect(r.status === 200 && r.body.includes('wordpress'), 'structured name routing');

    step('register tenant acme -> host 01, container c001', `curl -X PUT -H "Authorization: Bearer $TOKEN" -d '{"targets":[{"host":"01","container":"c001"}]}' localhost:${admin}/v1/tenants/acme`);
    r = await call(admin, 'PUT', '/v1/tenants/acme', auth, JSON.stringify({ targets: [{ host: '01', container: 'c001' }] }));
    process.stdout.write(`${r.status} ${r.body}\n`);
    expect(r.status === 200, 'tenant registration');

    step('the tenant name routes to the same app, no reload', `curl -H 'Host: acme.test.priv' localhost:${http}/`);
    r = await call(http, 'GET', '/', { host: 'acme.test.priv' });
    process.stdout.write(`${r.status} ${r.body}\n`);
    expect(r.status === 200 && r.body.includes('wordpress'), 'tenant routing');

    step("a customer's own domain: container c002 (app shop), tenant shop.example.com", `curl -X PUT ... /v1/hosts/01/containers/c002 && curl -X PUT ... /v1/tenants/shop.example.com`);
    await call(admin, 'PUT', '/v1/hosts/01/containers/c002', auth, JSON.stringify({ app: 'shop', port: shopPort }));
    r = await call(admin, 'PUT', '/v1/tenants/shop.example.com', auth, JSON.stringify({ targets: [{ host: '01', container: 'c002' }] }));
    expect(r.status === 200, 'custom domain registration');
    r = await call(http, 'GET', '/', { host: 'shop.example.com' });
    process.stdout.write(`$ curl -H 'Host: shop.example.com' localhost:${http}/\n${r.status} ${r.body}\n`);
    expect(r.status === 200 && r.body.includes('shop'), 'custom domain routing');

    step('HTTPS: TLS offload with SNI and ALPN (certificate from scripts/dev-ca.sh)', `curl --cacert ${caDir}/ca.pem --resolve acme.test.priv:${ports['gateway-https']}:127.0.0.1 https://acme.test.priv:${ports['gateway-https']}/`);
    const secure = await new Promise<{ status: number; body: string; alpn: string }>((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: ports['gateway-https'] ?? 0, servername: 'acme.test.priv', ALPNProtocols: ['http/1.1'], headers: { host: 'acme.test.priv' }, ca: fs.readFileSync(path.join(caDir, 'ca.pem')), agent: false } as https.RequestOptions,
        (res) => {
          let text = '';
          res.on('data', (d: Buffer) => (text += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text.trim(), alpn: String((res.socket as import('node:tls').TLSSocket).alpnProtocol) }));
        },
      );
      req.on('error', reject);
    });
    process.stdout.write(`${secure.status} ${secure.body} (TLS, ALPN ${secure.alpn})\n`);
    expect(secure.status === 200 && secure.body.includes('wordpress'), 'HTTPS routing');

    step('explain how a name routes', `curl -H "Authorization: Bearer $TOKEN" 'localhost:${admin}/v1/explain?host=acme.test.priv'`);
    r = await call(admin, 'GET', '/v1/explain?host=acme.test.priv', auth);
    process.stdout.write(`${JSON.stringify(JSON.parse(r.body), null, 2)}\n`);
    expect(r.status === 200, 'explain');

    step('an unknown tenant gets a clear 404', `curl -H 'Host: nobody.test.priv' localhost:${http}/`);
    r = await call(http, 'GET', '/', { host: 'nobody.test.priv' });
    process.stdout.write(`${r.status} ${r.body}\n`);
    expect(r.status === 404, 'unknown tenant');

    process.stdout.write('\ndemo finished: every step passed\n');
  } finally {
    clearTimeout(timeout);
    child.removeAllListeners('exit');
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    wordpress.close();
    shop.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
});
