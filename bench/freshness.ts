/**
 * Freshness: the time from a registration call returning to the first request through the
 * gateway that routes by it. Two cases, each on a fresh project stack over `registryUrl`:
 *
 *   container  PUT /v1/hosts/01/containers/<id>  -> the local proxy must see it
 *   tenant     PUT /v1/tenants/<name>             -> the gateway (and local proxy) must see it
 *
 * Before each registration the name is requested once, so a negative cache entry exists:
 * the worst case, where invalidation (not just a miss) has to happen.
 * A figure is the time until the first 200 answer has arrived (so it includes one round trip).
 */
import http from 'node:http';
import { percentile, request } from './client.js';
import { APP, CONTAINER_ID, DOMAIN, HOST_ID, startProject, type Env, type ProjectStack } from './stacks.js';

export interface FreshnessCase {
  registry: string;
  kind: 'container' | 'tenant';
  count: number;
  routed: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Requests sent per registration until the first 200, median. */
  tries: number;
}

const DEADLINE_MS = 2000;

async function firstRoutable(stack: ProjectStack, host: string, agent: http.Agent): Promise<{ ms: number; tries: number } | undefined> {
  const t0 = performance.now();
  for (let tries = 1; ; tries++) {
    const r = await request({ port: stack.port, host, agent, timeoutMs: DEADLINE_MS }).catch(() => undefined);
    const ms = performance.now() - t0;
    if (r?.status === 200) return { ms, tries };
    if (ms > DEADLINE_MS) return undefined;
  }
}

async function measureCase(
  stack: ProjectStack,
  registryLabel: string,
  kind: FreshnessCase['kind'],
  count: number,
): Promise<FreshnessCase> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const times: number[] = [];
  const tries: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const id = `f${kind[0]}${String(i).padStart(5, '0')}`;
      const host = kind === 'container' ? `${APP}_${id}_${HOST_ID}.${DOMAIN}` : `${id}.${DOMAIN}`;
      await request({ port: stack.port, host, agent }).catch(() => undefined); // negative entry
      if (kind === 'container') {
        await stack.admin('PUT', `/v1/hosts/${HOST_ID}/containers/${id}`, { app: APP, port: stack.appPort });
      } else {
        await stack.admin('PUT', `/v1/tenants/${id}`, { targets: [{ host: HOST_ID, container: CONTAINER_ID }] });
      }
      const r = await firstRoutable(stack, host, agent);
      if (r !== undefined) {
        times.push(r.ms);
        tries.push(r.tries);
      }
    }
  } finally {
    agent.destroy();
  }
  times.sort((a, b) => a - b);
  tries.sort((a, b) => a - b);
  return {
    registry: registryLabel,
    kind,
    count,
    routed: times.length,
    p50Ms: percentile(times, 50),
    p99Ms: percentile(times, 99),
    maxMs: times.at(-1) ?? Number.NaN,
    tries: percentile(tries, 50),
  };
}

export function registryLabel(url: string | undefined): string {
  return url === undefined ? 'file' : url.startsWith('zk://') ? 'ZooKeeper' : url;
}

/** `registryUrl` undefined: a fresh file registry in a temp dir. */
export async function measureFreshness(env: Env, appPort: number, registryUrl: string | undefined, count: number): Promise<FreshnessCase[]> {
  const label = registryLabel(registryUrl);
  const stack = await startProject(env, appPort, registryUrl === undefined ? {} : { registry: registryUrl });
  try {
    const out: FreshnessCase[] = [];
    for (const kind of ['container', 'tenant'] as const) {
      const c = await measureCase(stack, label, kind, count);
      env.log(`  ${label} ${kind.padEnd(9)} p50 ${c.p50Ms.toFixed(2)} ms  p99 ${c.p99Ms.toFixed(2)} ms  (${c.routed}/${c.count} routed within ${DEADLINE_MS} ms)`);
      out.push(c);
    }
    return out;
  } finally {
    await stack.stop();
  }
}
