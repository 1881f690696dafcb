/**
 * Scale: register many tenants through the admin API (bounded concurrency, bounded time),
 * request many distinct tenant hosts through the gateway, then read the gateway's RSS and
 * the request latency for names already requested (cached), never requested (a registry
 * lookup on the way), and the structured name (no tenant lookup) as the baseline.
 */
import http from 'node:http';
import { percentile, pool, request } from './client.js';
import { rssBytes } from './proc.js';
import { registryLabel } from './freshness.js';
import { ADMIN_TOKEN, CONTAINER_ID, DOMAIN, HOST_ID, TENANT_HOST, startProject, type Env, type ProjectStack } from './stacks.js';

export interface Latency {
  p50Ms: number;
  p99Ms: number;
}

export interface ScaleResult {
  registry: string;
  tenantsWanted: number;
  tenantsRegistered: number;
  registerSeconds: number;
  registrationsPerSec: number;
  hostsRequested: number;
  hostsRouted: number;
  gatewayRssMiB: { start: number; afterRegistration: number; afterRequests: number };
  localProxyRssMiB: { start: number; afterRequests: number };
  latency: { cached: Latency; uncached: Latency; structured: Latency };
}

export interface ScaleSettings {
  tenants: number;
  hostsRequested: number;
  registerConcurrency: number;
  /** Registration stops (and says so) after this long. */
  registerBudgetS: number;
  samples: number;
}

const tenantName = (i: number): string => `t${String(i).padStart(6, '0')}`;
const mib = (pid: number): number => rssBytes(pid) / 1024 ** 2;

async function latency(stack: ProjectStack, agent: http.Agent, hosts: string[]): Promise<Latency> {
  const times: number[] = [];
  for (const host of hosts) {
    const t0 = performance.now();
    const r = await request({ port: stack.port, host, agent });
    if (r.status === 200) times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { p50Ms: percentile(times, 50), p99Ms: percentile(times, 99) };
}

/** `registryUrl` undefined: a fresh file registry in a temp dir. */
export async function measureScale(env: Env, appPort: number, registryUrl: string | undefined, s: ScaleSettings): Promise<ScaleResult> {
  const stack = await startProject(env, appPort, registryUrl === undefined ? {} : { registry: registryUrl });
  const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(s.registerConcurrency, 16) });
  try {
    const gwStart = mib(stack.gateway.pid);
    const lpStart = mib(stack.localProxy.pid);

    // Register: bounded concurrency, and a time budget so a slow backend cannot run away.
    const t0 = performance.now();
    const deadline = t0 + s.registerBudgetS * 1000;
    let registered = 0;
    let lastLog = t0;
    await pool(s.tenants, s.registerConcurrency, async (i) => {
      if (performance.now() > deadline) return;
      const body = JSON.stringify({ targets: [{ host: HOST_ID, container: CONTAINER_ID }] });
      const r = await request({
        port: stack.adminPort,
        host: `127.0.0.1:${stack.adminPort}`,
        method: 'PUT',
        path: `/v1/tenants/${tenantName(i)}`,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        body,
        agent,
        timeoutMs: 30_000,
      });
      if (r.status >= 200 && r.status < 300) registered++;
      else if (registered === 0) throw new Error(`registering ${tenantName(i)}: ${r.status} ${r.body}`);
      if (performance.now() - lastLog > 10_000) {
        lastLog = performance.now();
        env.log(`  ${registered} tenants registered after ${((lastLog - t0) / 1000).toFixed(0)} s`);
      }
    });
    const registerSeconds = (performance.now() - t0) / 1000;
    if (registered < s.tenants) env.log(`  registration budget of ${s.registerBudgetS} s spent: ${registered} of ${s.tenants} registered`);
    const gwRegistered = mib(stack.gateway.pid);

    // Request distinct tenant hosts, spread over the registered range.
    const requested = Math.min(s.hostsRequested, registered);
    const step = Math.max(1, Math.floor(registered / Math.max(1, requested)));
    const requestedIdx = Array.from({ length: requested }, (_, k) => k * step);
    let routed = 0;
    await pool(requested, 16, async (k) => {
      const r = await request({ port: stack.port, host: `${tenantName(requestedIdx[k] as number)}.${DOMAIN}`, agent });
      if (r.status === 200) routed++;
    });
    const gwRequests = mib(stack.gateway.pid);
    const lpRequests = mib(stack.localProxy.pid);

    // Latency, one request at a time: cached names, names never requested, the structured name.
    const n = Math.min(s.samples, requested);
    const requestedSet = new Set(requestedIdx);
    const cachedHosts = requestedIdx.slice(0, n).map((i) => `${tenantName(i)}.${DOMAIN}`);
    const uncachedHosts: string[] = [];
    for (let i = 0; i < registered && uncachedHosts.length < n; i++) {
      if (!requestedSet.has(i)) uncachedHosts.push(`${tenantName(i)}.${DOMAIN}`);
    }
    const structured = await latency(stack, agent, Array.from({ length: n }, () => TENANT_HOST));
    const cached = await latency(stack, agent, cachedHosts);
    const uncached = await latency(stack, agent, uncachedHosts);

    return {
      registry: registryLabel(registryUrl),
      tenantsWanted: s.tenants,
      tenantsRegistered: registered,
      registerSeconds,
      registrationsPerSec: registered / registerSeconds,
      hostsRequested: requested,
      hostsRouted: routed,
      gatewayRssMiB: { start: gwStart, afterRegistration: gwRegistered, afterRequests: gwRequests },
      localProxyRssMiB: { start: lpStart, afterRequests: lpRequests },
      latency: { cached, uncached, structured },
    };
  } finally {
    agent.destroy();
    await stack.stop();
  }
}
