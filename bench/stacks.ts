/**
 * The four stacks, each the same topology on 127.0.0.1:
 *
 *   client -> edge -> local proxy of host 01 -> tenant app   (Host: wordpress_c001_01.test.priv)
 *
 *   project  tenant-gateway `gateway` + `local-proxy`, one process each, file registry
 *   nginx    one nginx per hop (worker_processes 1, master_process off), regex server_name,
 *            per-host / per-container upstreams with keepalive 64
 *   haproxy  one haproxy per hop (nbthread 1), hdr_reg ACLs, http-reuse always
 *   direct   the tenant app itself: the limit
 *
 * With a certificate (`makeCertificate`), each edge also listens for HTTPS on `tlsPort`: TLS is
 * terminated at the edge only, the edge -> local proxy hop stays plain HTTP (as in production).
 *
 * Configs are generated into temp dirs; every process is stopped by PID (proc.ts).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { request, tlsRequest, type TlsReply } from './client.js';
import type { Tools } from './deps.js';
import { freePort, run, start, stop, tcpOpen, tempDir, waitFor, type Proc } from './proc.js';

export const HOST_ID = '01';
export const CONTAINER_ID = 'c001';
export const APP = 'wordpress';
export const DOMAIN = 'test.priv';
export const TENANT_HOST = `${APP}_${CONTAINER_ID}_${HOST_ID}.${DOMAIN}`;

export type StackId = 'project' | 'nginx' | 'haproxy' | 'direct';
export const ALL_STACKS: readonly StackId[] = ['project', 'nginx', 'haproxy', 'direct'];

export const STACK_LABEL: Record<StackId, string> = {
  project: 'tenant-gateway (gateway + local proxy)',
  nginx: 'nginx, 1 worker per hop',
  haproxy: 'HAProxy, 1 thread per hop',
  direct: 'tenant app directly (the limit)',
};

export interface Stack {
  id: StackId;
  /** The port clients connect to (the edge; the app itself for `direct`). */
  port: number;
  /** The edge's HTTPS port, when the stack was started with a certificate. */
  tlsPort?: number;
  /** Protocol and cipher a client without SNI negotiated with `tlsPort` ("TLSv1.3 TLS_AES_..."). */
  tlsNegotiated?: string;
  /** The proxy processes whose CPU and memory are measured; empty for `direct`. */
  proxies: Proc[];
  stop(): Promise<void>;
}

export interface Env {
  /** The project's root (where bin/ and dist/ are). */
  root: string;
  tools: Tools;
  log(line: string): void;
}

const READY_MS = 15_000;

/** The one certificate every HTTPS edge serves: *.test.priv and test.priv, from scripts/dev-ca.sh. */
export interface Tls {
  /** PEM: the wildcard certificate, its key, both in one file (HAProxy's form), the CA. */
  cert: string;
  key: string;
  combined: string;
  ca: string;
  /** SHA-256 fingerprint of the certificate, as node:crypto prints it. */
  fingerprint: string;
}

/** Makes a CA and the wildcard certificate (ECDSA P-256) into a temp dir with scripts/dev-ca.sh. */
export async function makeCertificate(env: Env): Promise<Tls> {
  const dir = tempDir('tls');
  const r = await run('bash', [path.join(env.root, 'scripts/dev-ca.sh'), dir, DOMAIN], 30_000);
  if (r.code !== 0) throw new Error(`scripts/dev-ca.sh exited with ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  const tls: Tls = {
    cert: path.join(dir, 'wildcard.pem'),
    key: path.join(dir, 'wildcard-key.pem'),
    combined: path.join(dir, 'wildcard-combined.pem'),
    ca: path.join(dir, 'ca.pem'),
    fingerprint: '',
  };
  const pem = fs.readFileSync(tls.cert, 'utf8');
  fs.writeFileSync(tls.combined, `${pem.trimEnd()}\n${fs.readFileSync(tls.key, 'utf8')}`, { mode: 0o600 });
  tls.fingerprint = new crypto.X509Certificate(pem).fingerprint256;
  return tls;
}

export async function startApp(env: Env): Promise<{ port: number; proc: Proc }> {
  const port = await freePort();
  const proc = start('tenant app', process.execPath, [path.join(env.root, 'dist/bench/app.js'), String(port)]);
  await waitFor('tenant app', () => tcpOpen(port), READY_MS, proc);
  return { port, proc };
}

/** Waits until a GET through `port` with the tenant's Host answers 200 from the app. */
export async function waitRoutable(what: string, port: number, proc?: Proc, host = TENANT_HOST): Promise<void> {
  await waitFor(
    `${what}: routing ${host}`,
    async () => (await request({ port, host, timeoutMs: 1000 })).status === 200,
    READY_MS,
    proc,
  );
}

/**
 * Waits until a GET over HTTPS through `port` answers 200, then checks that the certificate
 * served is ours: the handshake sends no SNI (wrk's would be the IP) and verifies the chain and
 * the tenant's name against the run's CA. Returns the protocol and cipher negotiated.
 */
export async function waitRoutableTls(what: string, port: number, tls: Tls, proc?: Proc): Promise<string> {
  const ca = fs.readFileSync(tls.ca);
  let last: TlsReply | undefined;
  let failure = '';
  try {
    await waitFor(
      `${what}: routing ${TENANT_HOST} over HTTPS`,
      async () => {
        last = await tlsRequest({ port, host: TENANT_HOST, ca, timeoutMs: 1000 }).catch((err: unknown) => {
          failure = (err as Error).message;
          throw err;
        });
        return last.status === 200;
      },
      READY_MS,
      proc,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}${failure === '' ? '' : ` (last HTTPS error: ${failure})`}`);
  }
  const r = last as TlsReply;
  if (r.fingerprint !== tls.fingerprint) throw new Error(`${what}: port ${port} serves another certificate (SHA-256 ${r.fingerprint})`);
  return `${r.protocol} ${r.cipher}`;
}

// ---- nginx -------------------------------------------------------------------------------

function nginxConf(port: number, dir: string, serverName: string, upstreams: Record<string, number>, passTo: string, tls?: { port: number; tls: Tls }): string {
  const tlsListen = (extra: string): string => (tls === undefined ? '' : `\n    listen 127.0.0.1:${tls.port} ssl${extra};`);
  const tlsHttp =
    tls === undefined
      ? ''
      : `\n  ssl_certificate ${tls.tls.cert};\n  ssl_certificate_key ${tls.tls.key};\n  ssl_protocols TLSv1.2 TLSv1.3;`;
  const ups = Object.entries(upstreams)
    .map(([name, p]) => `  upstream ${name} { server 127.0.0.1:${p}; keepalive 64; keepalive_requests 1000000; }`)
    .join('\n');
  return `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }${tlsHttp}
${ups}
  server {
    listen 127.0.0.1:${port} default_server;${tlsListen(' default_server')}
    return 404;
  }
  server {
    listen 127.0.0.1:${port};${tlsListen('')}
    server_name "${serverName}";
    location / {
      proxy_pass http://${passTo};
      proxy_http_version 1.1;
      # "" unless the client asks for an upgrade: keeps upstream connections alive.
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_read_timeout 120s;
    }
  }
}
`;
}

async function startNginxHop(env: Env, name: string, conf: (port: number, dir: string) => string, tlsPort?: number): Promise<{ port: number; proc: Proc }> {
  const nginx = env.tools.path.nginx as string;
  const dir = tempDir(name);
  const port = await freePort();
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf(port, dir));
  const proc = start(name, nginx, ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', 'stderr', '-g', 'daemon off; master_process off;']);
  await waitFor(name, async () => (await tcpOpen(port)) && (tlsPort === undefined || (await tcpOpen(tlsPort))), READY_MS, proc);
  return { port, proc };
}

/** With `tls`, the edge also listens for HTTPS (same server blocks, same routing). */
export async function startNginx(env: Env, appPort: number, tls?: Tls): Promise<Stack> {
  const local = await startNginxHop(env, 'nginx-local', (port, dir) =>
    nginxConf(port, dir, '~^(?<app>[a-z0-9]+)_(?<c>[a-z0-9]+)_(?<h>[0-9]+)\\.test\\.priv$', { [`c_${CONTAINER_ID}`]: appPort }, 'c_$c'),
  );
  const tlsPort = tls === undefined ? undefined : await freePort();
  const edge = await startNginxHop(
    env,
    'nginx-edge',
    (port, dir) =>
      nginxConf(
        port,
        dir,
        '~^(?<app>[a-z0-9]+)_(?<c>[a-z0-9]+)_(?<h>[0-9]+)\\.test\\.priv$',
        { [`host_${HOST_ID}`]: local.port },
        'host_$h',
        tls === undefined || tlsPort === undefined ? undefined : { port: tlsPort, tls },
      ),
    tlsPort,
  );
  const proxies = [edge.proc, local.proc];
  const stack: Stack = { id: 'nginx', port: edge.port, tlsPort, proxies, stop: () => stopEach(proxies) };
  try {
    await waitRoutable('nginx', edge.port, edge.proc);
    if (tls !== undefined && tlsPort !== undefined) stack.tlsNegotiated = await waitRoutableTls('nginx', tlsPort, tls, edge.proc);
  } catch (err) {
    await stack.stop();
    throw err;
  }
  return stack;
}

// ---- HAProxy -----------------------------------------------------------------------------

function haproxyConf(port: number, acls: { name: string; regex: string; backend: string; target: number }[], tls?: { port: number; tls: Tls }): string {
  const rules = acls.map((a) => `  acl ${a.name} hdr_reg(host) -i ${a.regex}\n  use_backend ${a.backend} if ${a.name}`).join('\n');
  const backends = acls.map((a) => `backend ${a.backend}\n  server s1 127.0.0.1:${a.target}`).join('\n');
  const tlsGlobal = tls === undefined ? '' : '\n  ssl-default-bind-options ssl-min-ver TLSv1.2';
  const tlsBind = tls === undefined ? '' : `\n  bind 127.0.0.1:${tls.port} ssl crt ${tls.tls.combined}\n  http-request set-header X-Forwarded-Proto https if { ssl_fc }`;
  return `global
  nbthread 1
  maxconn 8000${tlsGlobal}
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout tunnel 120s
  timeout http-keep-alive 65s
  http-reuse always
  option forwardfor
frontend fe
  bind 127.0.0.1:${port}
  http-request set-header X-Forwarded-Proto http${tlsBind}
${rules}
  default_backend none
backend none
  http-request deny deny_status 404
${backends}
`;
}

async function startHaproxyHop(env: Env, name: string, conf: (port: number) => string, tlsPort?: number): Promise<{ port: number; proc: Proc }> {
  const haproxy = env.tools.path.haproxy as string;
  const dir = tempDir(name);
  const port = await freePort();
  const file = path.join(dir, 'haproxy.cfg');
  fs.writeFileSync(file, conf(port));
  const proc = start(name, haproxy, ['-db', '-f', file]);
  await waitFor(name, async () => (await tcpOpen(port)) && (tlsPort === undefined || (await tcpOpen(tlsPort))), READY_MS, proc);
  return { port, proc };
}

/** With `tls`, the edge's frontend also binds an HTTPS port (same ACLs). */
export async function startHaproxy(env: Env, appPort: number, tls?: Tls): Promise<Stack> {
  const local = await startHaproxyHop(env, 'haproxy-local', (port) =>
    haproxyConf(port, [{ name: `c_${CONTAINER_ID}`, regex: `^[a-z0-9]+_${CONTAINER_ID}_[0-9]+\\.test\\.priv$`, backend: `c_${CONTAINER_ID}`, target: appPort }]),
  );
  const tlsPort = tls === undefined ? undefined : await freePort();
  const edge = await startHaproxyHop(
    env,
    'haproxy-edge',
    (port) =>
      haproxyConf(
        port,
        [{ name: `h_${HOST_ID}`, regex: `^[a-z0-9]+_[a-z0-9]+_${HOST_ID}\\.test\\.priv$`, backend: `host_${HOST_ID}`, target: local.port }],
        tls === undefined || tlsPort === undefined ? undefined : { port: tlsPort, tls },
      ),
    tlsPort,
  );
  const proxies = [edge.proc, local.proc];
  const stack: Stack = { id: 'haproxy', port: edge.port, tlsPort, proxies, stop: () => stopEach(proxies) };
  try {
    await waitRoutable('haproxy', edge.port, edge.proc);
    if (tls !== undefined && tlsPort !== undefined) stack.tlsNegotiated = await waitRoutableTls('haproxy', tlsPort, tls, edge.proc);
  } catch (err) {
    await stack.stop();
    throw err;
  }
  return stack;
}

// ---- this project ------------------------------------------------------------------------

export interface ProjectOptions {
  /** Registry URL for both processes; default file:<tmp>/registry.json. */
  registry?: string;
  /** Extra node flags for the gateway process (e.g. --cpu-prof). */
  gatewayNodeFlags?: string[];
  localProxyNodeFlags?: string[];
  /** Register host 01 and container c001 -> appPort (default true). */
  register?: boolean;
  /** Serve HTTPS too (--https-port, --tls-cert, --tls-key) with this certificate. */
  tls?: Tls;
}

export interface ProjectStack extends Stack {
  gateway: Proc;
  localProxy: Proc;
  adminPort: number;
  localPort: number;
  /** The tenant app the registered container points at. */
  appPort: number;
  /** PUT/GET/DELETE on the admin API; rejects on a non-2xx answer. */
  admin(method: string, path: string, body?: object): Promise<unknown>;
}

export const ADMIN_TOKEN = 'bench-admin-token-0123456789abcdef';

export function cliPath(env: Env): string {
  return path.join(env.root, 'bin/tenant-gateway.js');
}

/** Does the CLI exist and know the subcommands the benchmark needs? (undefined = yes) */
export async function projectUnavailable(env: Env): Promise<string | undefined> {
  const cli = cliPath(env);
  if (!fs.existsSync(cli)) return `${path.relative(env.root, cli)} does not exist yet`;
  const r = await run(process.execPath, [cli, '--help'], 15_000);
  const help = r.stdout + r.stderr;
  const missing = ['gateway', 'local-proxy'].filter((cmd) => !help.includes(cmd));
  if (missing.length > 0) return `${path.relative(env.root, cli)} --help does not list ${missing.join(', ')}`;
  return undefined;
}

export async function startProject(env: Env, appPort: number, opts: ProjectOptions = {}): Promise<ProjectStack> {
  const cli = cliPath(env);
  const dataDir = tempDir('project');
  const registry = opts.registry ?? `file:${path.join(dataDir, 'registry.json')}`;
  const [httpPort, adminPort, localPort] = [await freePort(), await freePort(), await freePort()];
  const tlsPort = opts.tls === undefined ? undefined : await freePort();
  const tlsFlags = opts.tls === undefined ? [] : ['--https-port', String(tlsPort), '--tls-cert', opts.tls.cert, '--tls-key', opts.tls.key];
  const childEnv = { ...process.env, TGW_ADMIN_TOKEN: ADMIN_TOKEN };
  const gateway = start(
    'tenant-gateway gateway',
    process.execPath,
    [
      ...(opts.gatewayNodeFlags ?? []),
      cli,
      'gateway',
      '--http-port',
      String(httpPort),
      '--admin-port',
      String(adminPort),
      '--data-dir',
      dataDir,
      '--registry',
      registry,
      '--domain',
      DOMAIN,
      ...tlsFlags,
    ],
    { env: childEnv, cwd: dataDir },
  );
  const admin = async (method: string, p: string, body?: object): Promise<unknown> => {
    const r = await request({
      port: adminPort,
      host: `127.0.0.1:${adminPort}`,
      method,
      path: p,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status < 200 || r.status > 299) throw new Error(`admin ${method} ${p}: ${r.status} ${r.body}`);
    return r.body === '' ? null : (JSON.parse(r.body) as unknown);
  };
  let localProxy: Proc | undefined;
  try {
    await waitFor('tenant-gateway gateway', () => tcpOpen(adminPort), READY_MS, gateway);
    // The file registry is owned (written) by the gateway; the local proxy follows the file.
    localProxy = start(
      'tenant-gateway local-proxy',
      process.execPath,
      [...(opts.localProxyNodeFlags ?? []), cli, 'local-proxy', '--host-id', HOST_ID, '--local-port', String(localPort), '--registry', registry, '--domain', DOMAIN],
      { env: childEnv, cwd: dataDir },
    );
    await waitFor('tenant-gateway local-proxy', () => tcpOpen(localPort), READY_MS, localProxy);
    const proxies = [gateway, localProxy];
    const stack: ProjectStack = {
      id: 'project',
      port: httpPort,
      tlsPort,
      proxies,
      gateway,
      localProxy,
      adminPort,
      localPort,
      appPort,
      admin,
      stop: () => stopEach(proxies),
    };
    if (opts.register !== false) {
      await admin('PUT', `/v1/hosts/${HOST_ID}`, { address: `127.0.0.1:${localPort}` });
      await admin('PUT', `/v1/hosts/${HOST_ID}/containers/${CONTAINER_ID}`, { app: APP, port: appPort });
      await waitRoutable('tenant-gateway', httpPort, gateway);
      if (opts.tls !== undefined && tlsPort !== undefined) stack.tlsNegotiated = await waitRoutableTls('tenant-gateway', tlsPort, opts.tls, gateway);
    }
    return stack;
  } catch (err) {
    await stopEach(localProxy === undefined ? [gateway] : [localProxy, gateway]);
    throw err;
  }
}

// ---- direct ------------------------------------------------------------------------------

export function directStack(appPort: number): Stack {
  return { id: 'direct', port: appPort, proxies: [], stop: async () => {} };
}

async function stopEach(procs: Proc[]): Promise<void> {
  for (const p of procs) await stop(p);
}
