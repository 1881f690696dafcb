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
import { ADMIN_MAX_CONNECTIONS, ADMIN_SERVER_OPTIONS, createAdminApp } from './admin/api.js';
import type { Command, Config } from './config.js';
import { RegistryUnavailableError } from './discovery/backend.js';
import { openBackend } from './discovery/open.js';
import { Registry } from './discovery/registry.js';
import { startDnsServer, type DnsServer } from './dns/server.js';
import { Forwarder } from './gateway/forward.js';
import { createProxyServer, peerMatcher } from './gateway/proxy-server.js';
import type { ForbiddenTarget } from './discovery/records.js';
import { GatewayRouter, LocalProxyRouter } from './gateway/router.js';
import { createHttpsServer } from './gateway/tls.js';
import type { Logger } from './log.js';
import { AccessLog } from './ops/access-log.js';
import { mountOps } from './ops/admin-routes.js';
import { drainServer } from './ops/drain.js';
import { Metrics } from './ops/metrics.js';
import { applyReload, leveledLogger, type ReloadResult } from './ops/runtime.js';

const ROLES: Record<Command, { gateway: boolean; localProxy: boolean; dns: boolean; writesFile: boolean }> = {
  up: { gateway: true, localProxy: true, dns: true, writesFile: true },
  gateway: { gateway: true, localProxy: false, dns: false, writesFile: true },
  'local-proxy': { gateway: false, localProxy: true, dns: false, writesFile: false },
  dns: { gateway: false, localProxy: false, dns: true, writesFile: false },
};

export interface Running {
  registry: Registry;
  /** Bound addresses, e.g. {http: "127.0.0.1:8080"}; only those of the roles running. */
  addresses: { http?: AddressInfo; https?: AddressInfo; admin?: AddressInfo; dns?: number; localProxy?: AddressInfo };
  /** The admin token, when this process serves the admin API. */
  token?: string;
  metrics: Metrics;
  /** Applies the runtime-changeable settings of `next` (default: the config re-read); SIGHUP and POST /v1/reload. */
  reload(next?: Config): Promise<ReloadResult>;
  /** Drains: front listeners first (bounded by --drain-timeout), then the local proxy and DNS, then the registry. */
  close(): Promise<void>;
}

export interface StartOptions {
  /** Re-reads flags, environment and --config file, for reloads. */
  reloadConfig?: () => Config;
}

type Closer = (deadline: number) => Promise<void>;

export async function start(config: Config, rawLog: Logger, opts: StartOptions = {}): Promise<Running> {
  const { log, setLevel } = leveledLogger(rawLog, config.logLevel);
  const roles = ROLES[config.command];
  const warn = (msg: string) => log('warn', msg);
  // Before the registry: an access log that cannot be opened stops start-up with nothing to undo.
  const metrics = new Metrics({ maxTenants: config.metricsTenants });
  const accessLog = new AccessLog(config.accessLog, { warn });
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

  // Stages drained in order: the gateway and admin listeners, then what they forward to.
  const front: Closer[] = [];
  const closers: Closer[] = [];
  metrics.watchRegistry(registry);
  metrics.watchAccessLog(accessLog.stats);
  const observer = {
    requestDone: (rec: Parameters<Metrics['requestDone']>[0]) => {
      metrics.requestDone(rec);
      accessLog.requestDone(rec);
    },
  };
  let settings = config;
  const reload = async (next: Config = opts.reloadConfig?.() ?? settings): Promise<ReloadResult> => {
    const { config: now, result } = await applyReload(settings, next, {
      setAccessLog: (t) => accessLog.setTarget(t),
      setLogLevel: setLevel,
      setMetricsTenants: (n) => metrics.setMaxTenants(n),
      setTrustedProxies: (ips) => {
        trusted = peerMatcher(ips);
      },
    });
    settings = now;
    log('info', 'reloaded', { ...result });
    if (result.restartRequired.length > 0) log('warn', `changed settings that take effect only at restart: ${result.restartRequired.join(', ')}`);
    return result;
  };
  const running: Running = { registry, addresses: {}, metrics, reload, close: async () => {} };
  const forwarder = new Forwarder({ connectTimeoutMs: config.connectTimeoutMs, upstreamTimeoutMs: config.upstreamTimeoutMs });
  const finish = async () => {
    await forwarder.close();
    await accessLog.close();
  };
  let trusted = peerMatcher(config.trustedProxies);
  const limits = {
    headersTimeoutMs: config.headerTimeoutMs,
    bodyTimeoutMs: config.bodyTimeoutMs,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
    maxConnections: config.maxConnections,
  };
  // Addresses a registered host may not point at: this process's own listeners, its ZooKeeper.
  const forbidden: ForbiddenTarget[] = zkTargets(config.registry);
  const drain = (server: http.Server, role: string) => async (deadline: number) => {
    const { forced } = await drainServer(server, deadline);
    if (forced > 0) log('warn', `drain timeout: closed ${forced} ${role} connection(s) still busy`, { role });
  };

  try {
    if (roles.localProxy) {
      const server = createProxyServer({
        component: 'local-proxy',
        observer,
        router: new LocalProxyRouter(registry, config.names, config.hostId, config.containerHost),
        forwarder,
        isTrusted: (ip) => isLoopback(ip) || trusted(ip),
        ...limits,
      });
      const addr = await listen(server, config.localPort, config.bind);
      closers.push(drain(server, 'local-proxy'));
      running.addresses.localProxy = addr;
      log('info', 'listening', { role: 'local-proxy', hostId: config.hostId, address: `${addr.address}:${addr.port}` });
      const address = config.advertise ?? `127.0.0.1:${addr.port}`;
      await selfRegister(() => registry.put('hosts', config.hostId, { address }, true), `host ${config.hostId} at ${address}`, log);
    }

    if (roles.gateway) {
      let httpsPort: number | undefined;
      const router = new GatewayRouter(registry, config.names, forwarder, {
        httpsPort: () => httpsPort,
        onHealth: (tenant, replica, up) => metrics.setReplicaHealth(tenant, replica, up),
        onLocalProxyHealth: (hostId, up) => metrics.setLocalProxyHealth(hostId, up),
      });
      closers.push(async () => router.close());
      const server = createProxyServer({ component: 'gateway', observer, router, forwarder, isTrusted: (ip) => trusted(ip), ...limits });
      const addr = await listen(server, config.httpPort, config.bind);
      forbidden.push({ host: addr.address, port: addr.port, what: 'gateway HTTP listener' });
      if (config.tls !== undefined) {
        // The HTTPS listener hands its requests to the HTTP listener's handlers: one request path.
        const https = createHttpsServer({
          registry,
          domain: config.names.domain,
          defaultCert: { cert: await fsp.readFile(config.tls.cert), key: await fsp.readFile(config.tls.key) },
          onRequest: (req, res) => server.emit('request', req, res),
          onUpgrade: (req, socket, head) => server.emit('upgrade', req, socket, head),
          warn,
        });
        const httpsAddr = await listen(https as unknown as http.Server, config.httpsPort, config.bind);
        httpsPort = httpsAddr.port;
        forbidden.push({ host: httpsAddr.address, port: httpsAddr.port, what: 'gateway HTTPS listener' });
        running.addresses.https = httpsAddr;
        front.push(async (deadline) => {
          const forced = await https.drain(deadline);
          if (forced > 0) log('warn', `drain timeout: closed ${forced} https connection(s) still busy`, { role: 'gateway' });
        });
        log('info', 'listening', { role: 'gateway-https', address: `${httpsAddr.address}:${httpsAddr.port}`, alpn: 'h2,http/1.1' });
      }
      const gatewayId = config.gatewayId ?? `gw-${config.gatewayIp}-${addr.port}`.replace(/[^a-zA-Z0-9.-]/g, '-');
      // Deregistered as the drain starts, so DNS stops answering this gateway while it finishes.
      front.push((deadline) => Promise.all([registry.delete('gateways', gatewayId).catch(() => false), drain(server, 'gateway')(deadline)]).then(() => {}));
      running.addresses.http = addr;
      log('info', 'listening', { role: 'gateway', address: `${addr.address}:${addr.port}` });

      const token = await adminToken(config.dataDir);
      running.token = token;
      const allow = peerMatcher(config.allowTargets, '--allow-targets');
      const app = createAdminApp({ registry, names: config.names, router, token, targetRules: () => ({ forbidden, allow }) });
      mountOps(app, { metrics, registry, token, metricsAuth: () => settings.metricsAuth, reload: () => reload() });
      const admin = createAdaptorServer({ fetch: app.fetch, serverOptions: ADMIN_SERVER_OPTIONS }) as http.Server;
      admin.maxConnections = ADMIN_MAX_CONNECTIONS;
      const adminAddr = await listen(admin, config.adminPort, config.adminHost);
      forbidden.push({ host: adminAddr.address, port: adminAddr.port, what: 'admin API' });
      front.push(drain(admin, 'admin'));
      running.addresses.admin = adminAddr;
      log('info', 'listening', { role: 'admin', address: `${adminAddr.address}:${adminAddr.port}` });

      await selfRegister(() => registry.put('gateways', gatewayId, { ip: config.gatewayIp }, true), `gateway ${gatewayId} (${config.gatewayIp})`, log);
    }

    if (roles.dns) {
      const dns: DnsServer = await startDnsServer({
        domain: config.names.domain,
        host: config.bind,
        port: config.dnsPort,
        gateways: () => registry.gateways(),
        warn,
        rateLimit: config.dnsRateLimit,
        rateLimitExempt: isLoopback,
      });
      forbidden.push({ host: config.bind, port: dns.port, what: 'DNS server' });
      closers.push(() => dns.close());
      metrics.watchDns(dns.stats);
      running.addresses.dns = dns.port;
      log('info', 'listening', { role: 'dns', address: `${config.bind}:${dns.port}`, protocols: 'udp,tcp', zone: config.names.domain });
    }
  } catch (err) {
    await closeAll([front, closers], finish, registry, 0);
    throw err;
  }

  let closing: Promise<void> | undefined;
  running.close = () => (closing ??= closeAll([front, closers], finish, registry, settings.drainTimeoutMs));
  return running;
}

/**
 * Stage by stage, each listener stops accepting and finishes its in-flight requests (all
 * stages share one deadline, `drainMs` from now); then pools and tunnels, then the registry
 * (ephemerals go). The gateway drains before the local proxy it forwards to in the same process.
 */
async function closeAll(stages: Closer[][], finish: () => Promise<void>, registry: Registry, drainMs: number): Promise<void> {
  const deadline = Date.now() + drainMs;
  for (const stage of stages) await Promise.all(stage.map((close) => close(deadline).catch(() => {})));
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

const plainIp = (ip: string) => (ip.startsWith('::ffff:') ? ip.slice(7) : ip);
const isLoopback = (ip: string) => plainIp(ip).startsWith('127.') || ip === '::1';



/** zk://h1:p1,h2:p2/chroot -> its servers, as forbidden targets; [] for a file registry. */
function zkTargets(registry: string): ForbiddenTarget[] {
  if (!registry.startsWith('zk://')) return [];
  const hosts = registry.slice('zk://'.length).split('/')[0] ?? '';
  return hosts
    .split(',')
    .map((hp) => {
      const i = hp.lastIndexOf(':');
      return { host: hp.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(hp.slice(i + 1)), what: 'ZooKeeper' };
    })
    .filter((t) => t.host !== '' && Number.isInteger(t.port));
}
