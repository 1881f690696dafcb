/**
 * The composition root: Config -> registry backend -> Registry -> gateway, local proxy,
 * DNS and admin API. Nothing else constructs components or reads the environment.
 */
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';

import path from 'node:path';
import { createAdaptorServer } from '@hono/node-server';
import { createAdminApp } from './admin/api.js';
import type { Command, Config } from './config.js';
import { RegistryUnavailableError } from './discovery/backend.js';
import { openBackend } from './discovery/open.js';
import { Registry } from './discovery/registry.js';
import { startDnsServer, type DnsServer } from './dns/server.js';
import { Forwarder } from './gateway/forward.js';
import { createProxyServer } from './gateway/proxy-server.js';
import { GatewayRouter, LocalProxyRouter } from './gateway/router.js';
import type { Logger } from './log.js';

const ROLES: Record<Command, { gateway: boolean; localProxy: boolean; dns: boolean; writesFile: boolean }> = {
  up: { gateway: true, localProxy: true, dns: true, writesFile: true },
  gateway: { gateway: true, localProxy: false, dns: false, writesFile: true },
  'local-proxy': { gateway: false, localProxy: true, dns: false, writesFile: false },
  dns: { gateway: false, localProxy: false, dns: true, writesFile: false },
};

export interface Running {
  registry: Registry;
  /** Bound addresses, e.g. {http: "127.0.0.1:8080"}; only those of the roles running. */
  addresses: { http?: AddressInfo; admin?: AddressInfo; dns?: number; localProxy?: AddressInfo };
  /** The admin token, when this process serves the admin API. */
  token?: string;
  close(): Promise<void>;
}

export async function start(config: Config, log: Logger): Promise<Running> {
  const roles = ROLES[config.command];
  const warn = (msg: string) => log('warn', msg);
  const backend = await openBackend(config.registry, {
    writable: roles.writesFile,
    warn,
    zkAuth: config.zkAuth,
    sessionTimeoutMs: config.zkSessionTimeoutMs,
  });
  const registry = new Registry(backend, { warn });
  log('info', 'registry starting', { registry: backend.description });
  await registry.start();
  log('info', 'registry ready', { registry: backend.description });

  const closers: (() => Promise<void>)[] = [];
  const running: Running = { registry, addresses: {}, close: async () => {} };
  const forwarder = new Forwarder({ connectTimeoutMs: config.connectTimeoutMs, upstreamTimeoutMs: config.upstreamTimeoutMs });
  const finish = () => forwarder.close();
  const trusted = new Set(config.trustedProxies.map(plainIp));

  try {
    if (roles.localProxy) {
      const server = createProxyServer({
        component: 'local-proxy',
        router: new LocalProxyRouter(registry, config.names, config.hostId, config.containerHost),
        forwarder,
        isTrusted: (ip) => isLoopback(ip) || trusted.has(plainIp(ip)),
      });
      const addr = await listen(server, config.localPort, config.bind);
      closers.push(() => closeServer(server));
      running.addresses.localProxy = addr;
      log('info', 'listening', { role: 'local-proxy', hostId: config.hostId, address: `${addr.address}:${addr.port}` });
      const address = config.advertise ?? `127.0.0.1:${addr.port}`;
      await selfRegister(() => registry.put('hosts', config.hostId, { address }, true), `host ${config.hostId} at ${address}`, log);
    }

    if (roles.gateway) {
      const router = new GatewayRouter(registry, config.names);
      const server = createProxyServer({ component: 'gateway', router, forwarder, isTrusted: (ip) => trusted.has(plainIp(ip)) });
      const addr = await listen(server, config.httpPort, config.bind);
      closers.push(() => closeServer(server));
      running.addresses.http = addr;
      log('info', 'listening', { role: 'gateway', address: `${addr.address}:${addr.port}` });

      const token = await adminToken(config.dataDir);
      running.token = token;
      const app = createAdminApp({ registry, names: config.names, router, token });
      const admin = createAdaptorServer({ fetch: app.fetch }) as http.Server;
      const adminAddr = await listen(admin, config.adminPort, config.adminHost);
      closers.push(() => closeServer(admin));
      running.addresses.admin = adminAddr;
      log('info', 'listening', { role: 'admin', address: `${adminAddr.address}:${adminAddr.port}` });

      const id = config.gatewayId ?? `gw-${config.gatewayIp}-${addr.port}`.replace(/[^a-zA-Z0-9.-]/g, '-');
      await selfRegister(() => registry.put('gateways', id, { ip: config.gatewayIp }, true), `gateway ${id} (${config.gatewayIp})`, log);
    }

    if (roles.dns) {
      const dns: DnsServer = await startDnsServer({
        domain: config.names.domain,
        host: config.bind,
        port: config.dnsPort,
        gateways: () => registry.gateways(),
        warn,
      });
      closers.push(() => dns.close());
      running.addresses.dns = dns.port;
      log('info', 'listening', { role: 'dns', address: `${config.bind}:${dns.port}`, protocols: 'udp,tcp', zone: config.names.domain });
    }
  } catch (err) {
    await closeAll(closers, finish, registry);
    throw err;
  }


  let closing: Promise<void> | undefined;
  running.close = () => (closing ??= closeAll(closers, finish, registry));
  return running;
}

/** Listeners stop together (each finishing its in-flight requests), then pools and tunnels, then the registry (ephemerals go). */
async function closeAll(closers: (() => Promise<void>)[], finish: () => Promise<void>, registry: Registry): Promise<void> {
  await Promise.all(closers.map((close) => close().catch(() => {})));
  await finish().catch(() => {});
  await registry.close().catch(() => {});
}

/** Self-registration; on a read-only file registry it is the owner's job, so only warn. */
async function selfRegister(put: () => Promise<void>, what: string, log: Logger): Promise<void> {
  try {
    await put();
    log('info', 'registered', { what });
  } catch (err) {
    if (!(err instanceof RegistryUnavailableError)) throw err;
    log('warn', `could not register ${what}: ${err.message}`);
  }
}

/** TGW_ADMIN_TOKEN, else <data-dir>/admin-token, created on first start (mode 0600). */
async function adminToken(dataDir: string): Promise<string> {
  const fromEnv = process.env.TGW_ADMIN_TOKEN;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  const file = path.join(dataDir, 'admin-token');
  try {
    const t = (await fsp.readFile(file, 'utf8')).trim();
    if (t !== '') return t;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await fsp.mkdir(dataDir, { recursive: true });
  const token = randomBytes(32).toString('base64url');
  await fsp.writeFile(file, `${token}\n`, { mode: 0o600 });
  return token;
}

function listen(server: http.Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

/** Stops accepting, closes idle keep-alive connections, and gives busy ones `graceMs`. */
async function closeServer(server: http.Server, graceMs = 5_000): Promise<void> {
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.closeAllConnections();
      resolve();
    }, graceMs);
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}

const plainIp = (ip: string) => (ip.startsWith('::ffff:') ? ip.slice(7) : ip);
const isLoopback = (ip: string) => plainIp(ip).startsWith('127.') || ip === '::1';


