/**
 * A gateway, a local proxy (host 01) and the admin API in this process, wired as compose.ts
 * wires them but with the listener limits, trust and admin rules a test chooses. Real file
 * registry in a temp dir, real sockets on 127.0.0.1 port 0.
 */
import fs from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { ADMIN_MAX_CONNECTIONS, ADMIN_SERVER_OPTIONS, createAdminApp } from '../../../admin/api.js';
import { openBackend } from '../../../discovery/open.js';
import type { TargetRules } from '../../../discovery/records.js';
import { Registry } from '../../../discovery/registry.js';
import { Forwarder } from '../../../gateway/forward.js';
import { compileHostPattern, DEFAULT_HOST_PATTERN, type RouteNames } from '../../../gateway/host.js';
import { createProxyServer, peerMatcher, type ProxyServerOptions } from '../../../gateway/proxy-server.js';
import { GatewayRouter, LocalProxyRouter } from '../../../gateway/router.js';
import { tempDir } from '../../support/node.js';
import { request, type Reply } from '../../support/util.js';

type Limits = Pick<ProxyServerOptions, 'headersTimeoutMs' | 'bodyTimeoutMs' | 'keepAliveTimeoutMs' | 'requestTimeoutMs' | 'maxConnections'>;

export interface StackOptions {
  gateway?: Limits;
  local?: Limits;
  upstreamTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** --trusted-proxies of the gateway. */
  trustedProxies?: string[];
  /** Extra forbidden targets (DNS, ZooKeeper); the admin and gateway listeners are always added. */
  forbidden?: TargetRules['forbidden'];
  allowTargets?: string[];
  authFailures?: { max: number; windowMs: number };
}

export interface Stack {
  names: RouteNames;
  registry: Registry;
  gateway: http.Server;
  local: http.Server;
  admin: http.Server;
  gatewayPort: number;
  localPort: number;
  adminPort: number;
  token: string;
  /** Requests that reached the local proxy / the admin API. */
  counts: { local: number; admin: number };
  /** Registers tenant `name` -> a container on host 01 listening on `port`; returns its hostname. */
  route(name: string, port: number): Promise<string>;
  /**
   * Registers a container on host 01 and returns its structured name (app_container_01.test.priv):
   * one fixed path, no replica balancing, retries or holds in between.
   */
  direct(port: number): Promise<string>;
  adminCall(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Reply>;
  close(): Promise<void>;
}

let containers = 0;

export async function startStack(o: StackOptions = {}): Promise<Stack> {
  const dir = tempDir('tgw-hardening-');
  const names: RouteNames = { domain: 'test.priv', hostPattern: compileHostPattern(DEFAULT_HOST_PATTERN, 'test.priv') };
  const backend = await openBackend(`file:${dir}/registry.json`, { writable: true });
  const registry = new Registry(backend, {});
  await registry.start();
  const forwarder = new Forwarder({ connectTimeoutMs: o.connectTimeoutMs ?? 2_000, upstreamTimeoutMs: o.upstreamTimeoutMs ?? 10_000 });
  const isLoopback = (ip: string) => ip.startsWith('127.') || ip.startsWith('::ffff:127.') || ip === '::1';
  const counts = { local: 0, admin: 0 };

  const local = createProxyServer({ component: 'local-proxy', router: new LocalProxyRouter(registry, names, '01'), forwarder, isTrusted: isLoopback, ...o.local });
  local.prependListener('request', () => counts.local++);
  const router = new GatewayRouter(registry, names, forwarder);
  const trusted = peerMatcher(o.trustedProxies ?? []);
  const gateway = createProxyServer({ component: 'gateway', router, forwarder, isTrusted: trusted, ...o.gateway });
  const localPort = await listen(local);
  const gatewayPort = await listen(gateway);
  await registry.put('hosts', '01', { address: `127.0.0.1:${localPort}` });

  const token = 'hardening-token-0123456789';
  const forbidden = [...(o.forbidden ?? []), { host: '127.0.0.1', port: gatewayPort, what: 'gateway HTTP listener' }];
  const allow = peerMatcher(o.allowTargets ?? [], '--allow-targets');
  const app = createAdminApp({ registry, names, router, token, targetRules: () => ({ forbidden, allow }), authFailures: o.authFailures });
  const admin = createAdaptorServer({ fetch: app.fetch, serverOptions: ADMIN_SERVER_OPTIONS }) as http.Server;
  admin.maxConnections = ADMIN_MAX_CONNECTIONS;
  admin.prependListener('request', () => counts.admin++);
  const adminPort = await listen(admin);
  forbidden.push({ host: '127.0.0.1', port: adminPort, what: 'admin API' });

  const stop = (s: http.Server) =>
    new Promise<void>((r) => {
      s.close(() => r());
      s.closeAllConnections();
    });
  return {
    names,
    registry,
    gateway,
    local,
    admin,
    gatewayPort,
    localPort,
    adminPort,
    token,
    counts,
    route: async (name, port) => {
      const c = `c${++containers}`;
      await registry.put('containers', `01/${c}`, { app: name, port });
      await registry.put('tenants', name, { targets: [{ host: '01', container: c }] });
      return `${name}.test.priv`;
    },
    direct: async (port) => {
      const c = `c${++containers}`;
      await registry.put('containers', `01/${c}`, { app: 'app', port });
      return `app_${c}_01.test.priv`;
    },
    adminCall: (method, path, body, headers) =>
      request(adminPort, {
        method,
        path,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      }),
    close: async () => {
      await Promise.all([stop(gateway), stop(local), stop(admin)]);
      router.close();
      await forwarder.close();
      await registry.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function listen(server: http.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}
