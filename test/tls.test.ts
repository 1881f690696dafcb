/**
 * TLS offload with real TLS clients (node:tls, https, http2, curl): SNI, ALPN, both hops,
 * certificates replaced at runtime, redirect and HSTS, bad certificates refused.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { startNode, tempDir, type TestNode } from './support/node.js';
import { startApp, type App } from './support/util.js';

const execFileAsync = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A certificate for `name` valid only in January 2020, signed by the dev CA in `dir`. */
function expiredCertificate(dir: string, name: string): { cert: string; key: string } {
  const work = fs.mkdtempSync(path.join(dir, 'expired-'));
  fs.writeFileSync(path.join(work, 'index.txt'), '');
  fs.writeFileSync(path.join(work, 'serial'), '01\n');
  fs.writeFileSync(
    path.join(work, 'ca.cnf'),
    '[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n[p]\ncommonName = supplied\n',
  );
  const run = (args: string[]) => execFileSync('openssl', args, { cwd: work, stdio: 'pipe' });
  run(['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-keyout', 'key.pem', '-out', 'req.csr', '-subj', `/CN=${name}`, '-addext', `subjectAltName=DNS:${name}`]);
  run(['ca', '-batch', '-config', 'ca.cnf', '-cert', path.join(dir, 'ca.pem'), '-keyfile', path.join(dir, 'ca-key.pem'), '-in', 'req.csr', '-out', 'cert.pem', '-startdate', '20200101000000Z', '-enddate', '20200201000000Z']);
  return { cert: fs.readFileSync(path.join(work, 'cert.pem'), 'utf8'), key: fs.readFileSync(path.join(work, 'key.pem'), 'utf8') };
}

/** The certificate a TLS handshake with `servername` presents. */
function peerCertificate(port: number, servername: string, ca: Buffer): Promise<tls.PeerCertificate & { alpn: string | false | null }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['h2', 'http/1.1'] }, () => {
      const cert = s.getPeerCertificate();
      const alpn = s.alpnProtocol;
      s.end();
      resolve({ ...cert, alpn });
    });
    s.on('error', reject);
  });
}

function httpsGet(port: number, host: string, ca: Buffer, agent?: https.Agent): Promise<{ status: number; headers: Record<string, unknown>; body: string; alpn: string | false | null }> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, servername: host, headers: { host }, ca, agent: agent ?? false, path: '/tls' }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, alpn: (res.socket as tls.TLSSocket).alpnProtocol ?? null }));
    });
    req.on('error', reject);
  });
}

function h2Get(session: http2.ClientHttp2Session, authority: string, path = '/h2'): Promise<{ status: number; body: string; headers: http2.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': path, ':authority': authority });
    let body = '';
    let status = 0;
    let headers: http2.IncomingHttpHeaders = {};
    req.on('response', (h) => {
      headers = h;
      status = Number(h[':status']);
    });
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => resolve({ status, body, headers }));
    req.on('error', reject);
    req.end();
  });
}

describe('TLS offload', { timeout: 60_000 }, () => {
  let node: TestNode;
  let app: App;
  let ca: Buffer;
  let dir: string;
  const pem = (name: string) => ({ cert: fs.readFileSync(path.join(dir, `${name}.pem`), 'utf8'), key: fs.readFileSync(path.join(dir, `${name}-key.pem`), 'utf8') });

  before(async () => {
    dir = tempDir('tgw-ca-');
    execFileSync('bash', [path.join(ROOT, 'scripts/dev-ca.sh'), dir, 'test.priv', 'shop.example.com', 'other.example.com'], { stdio: 'pipe' });
    ca = fs.readFileSync(path.join(dir, 'ca.pem'));
    app = await startApp('tls-app');
    node = await startNode(['--https-port', '0', '--tls-cert', path.join(dir, 'wildcard.pem'), '--tls-key', path.join(dir, 'wildcard-key.pem')]);
    await node.admin('PUT', '/v1/hosts/01/containers/c001', { app: 'wordpress', port: app.port });
    await node.admin('PUT', '/v1/tenants/acme', { targets: [{ host: '01', container: 'c001' }] });
    await node.admin('PUT', '/v1/tenants/shop.example.com', { targets: [{ host: '01', container: 'c001' }] });
  });
  after(async () => {
    await node?.close();
    await app?.close();
  });

  const port = () => node.addresses.https?.port ?? 0;

  it('serves HTTP/1.1 over TLS through both hops, with X-Forwarded-Proto https', async () => {
    const r = await httpsGet(port(), 'acme.test.priv', ca);
    assert.equal(r.status, 200, r.body);
    const seen = JSON.parse(r.body) as { app: string; headers: Record<string, string> };
    assert.equal(seen.app, 'tls-app');
    assert.equal(seen.headers['x-forwarded-proto'], 'https');
    assert.equal(seen.headers.host, 'acme.test.priv');
  });

  it('negotiates h2 by ALPN and serves HTTP/2 through both hops (Node accepts the wildcard for "_" names)', async () => {
    const session = http2.connect(`https://127.0.0.1:${port()}`, { ca, servername: 'acme.test.priv' });
    try {
      const r = await h2Get(session, `acme.test.priv:${port()}`);
      assert.equal(r.status, 200, r.body);
      assert.equal(session.alpnProtocol, 'h2');
      const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
      assert.equal(seen.url, '/h2');
      assert.equal(seen.headers.host, `acme.test.priv:${port()}`);
      assert.equal(seen.headers['x-forwarded-proto'], 'https');
      // A structured name over HTTP/2 too.
      const s = await h2Get(session, 'wordpress_c001_01.test.priv');
      assert.equal(s.status, 200, s.body);
    } finally {
      session.close();
    }
  });

  it('SNI picks the wildcard for the zone, a registered certificate for a custom domain, and the default otherwise', async () => {
    assert.match((await peerCertificate(port(), 'acme.test.priv', ca)).subjectaltname ?? '', /DNS:\*\.test\.priv/);
    // Node's hostname check accepts the wildcard for a structured name with underscores.
    assert.match((await peerCertificate(port(), 'wordpress_c001_01.test.priv', ca)).subjectaltname ?? '', /DNS:\*\.test\.priv/);
    // Not registered yet: the default certificate (the client would reject it for this name).
    await assert.rejects(peerCertificate(port(), 'shop.example.com', ca), /altnames|Hostname/);
    const put = await node.admin('PUT', '/v1/certificates/shop.example.com', pem('shop.example.com'));
    assert.equal(put.status, 200, put.body);
    const cert = await peerCertificate(port(), 'shop.example.com', ca);
    assert.match(cert.subjectaltname ?? '', /DNS:shop\.example\.com/);
    assert.equal(cert.alpn, 'h2');
    const r = await httpsGet(port(), 'shop.example.com', ca);
    assert.equal(r.status, 200, r.body);
    assert.match((await peerCertificate(port(), 'unknown.example.net', ca).catch((e: Error) => ({ subjectaltname: e.message }))).subjectaltname ?? '', /test\.priv/);
  });

  it('a certificate replaced at runtime: the open connection keeps working, new handshakes get the new one', async () => {
    await node.admin('PUT', '/v1/tenants/other.example.com', { targets: [{ host: '01', container: 'c001' }] });
    assert.equal((await node.admin('PUT', '/v1/certificates/other.example.com', pem('other.example.com'))).status, 200);
    const first = await peerCertificate(port(), 'other.example.com', ca);
    const session = http2.connect(`https://127.0.0.1:${port()}`, { ca, servername: 'other.example.com' });
    try {
      assert.equal((await h2Get(session, 'other.example.com')).status, 200);
      // Re-issue: same name, new key and serial.
      execFileSync('bash', [path.join(ROOT, 'scripts/dev-ca.sh'), dir, 'test.priv', 'other.example.com'], { stdio: 'pipe' });
      assert.equal((await node.admin('PUT', '/v1/certificates/other.example.com', pem('other.example.com'))).status, 200);
      assert.equal((await h2Get(session, 'other.example.com')).status, 200, 'the open connection still serves');
      const second = await peerCertificate(port(), 'other.example.com', ca);
      assert.notEqual(second.fingerprint256, first.fingerprint256);
    } finally {
      session.close();
    }
  });

  it('redirects plain HTTP with 308 and sends HSTS over HTTPS when the tenant asks', async () => {
    await node.admin('PUT', '/v1/tenants/secure', { targets: [{ host: '01', container: 'c001' }], https: { redirect: true, hsts: { maxAge: 31536000, includeSubDomains: true } } });
    const plain = await node.get('secure.test.priv', { path: '/a?b=1' });
    assert.equal(plain.status, 308);
    assert.equal(plain.headers.location, `https://secure.test.priv:${port()}/a?b=1`);
    const r = await httpsGet(port(), 'secure.test.priv', ca);
    assert.equal(r.status, 200);
    assert.equal(r.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains');
    const noHsts = await httpsGet(port(), 'acme.test.priv', ca);
    assert.equal(noHsts.headers['strict-transport-security'], undefined);
  });

  it('refuses bad certificates with a 400 naming the problem, and never echoes the key', async () => {
    const good = pem('shop.example.com');
    const otherKey = pem('other.example.com').key;
    const expired = expiredCertificate(dir, 'old.example.com');
    for (const [name, body, re] of [
      ['shop.example.com', { cert: 'not a pem', key: good.key }, /not a PEM certificate/],
      ['shop.example.com', { cert: good.cert, key: 'nope' }, /not an unencrypted PEM private key/],
      ['shop.example.com', { cert: good.cert, key: otherKey }, /does not belong/],
      ['old.example.com', expired, /expired on 2020-02-01/],
      ['wrong.example.com', good, /does not cover wrong\.example\.com/],
      ['acme.test.priv', good, /default certificate/],
    ] as const) {
      const r = await node.admin('PUT', `/v1/certificates/${name}`, body);
      assert.equal(r.status, 400, `${name}: ${r.body}`);
      assert.match(r.body, re);
    }
    assert.equal((await node.admin('PUT', '/v1/certificates/shop.example.com', good)).status, 200);
    const get = await node.admin('GET', '/v1/certificates/shop.example.com');
    assert.equal(get.status, 200);
    assert.doesNotMatch(get.body, /PRIVATE KEY/);
    const summary = JSON.parse(get.body) as { subjectAltNames: string[]; notAfter: string };
    assert.deepEqual(summary.subjectAltNames, ['DNS:shop.example.com']);
    const explain = await node.admin('GET', '/v1/explain?host=shop.example.com');
    assert.doesNotMatch(explain.body, /PRIVATE KEY/);
  });

  it('curl speaks HTTP/1.1 and HTTP/2 to it, and accepts the wildcard for structured names with "_"', async () => {
    // Asynchronous: the server runs in this process and must keep answering meanwhile.
    const curl = async (args: string[]) =>
      (await execFileAsync('curl', ['-sS', '--max-time', '10', '--cacert', path.join(dir, 'ca.pem'), ...args], { encoding: 'utf8' })).stdout;
    const resolve = (name: string) => ['--resolve', `${name}:${port()}:127.0.0.1`];
    const v1 = await curl([...resolve('acme.test.priv'), '--http1.1', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', `https://acme.test.priv:${port()}/`]);
    assert.equal(v1, '200 1.1');
    const v2 = await curl([...resolve('acme.test.priv'), '--http2', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', `https://acme.test.priv:${port()}/`]);
    assert.equal(v2, '200 2');
    const structured = await curl([...resolve('wordpress_c001_01.test.priv'), '-o', '/dev/null', '-w', '%{http_code}', `https://wordpress_c001_01.test.priv:${port()}/`]);
    assert.equal(structured, '200');
  });
});
