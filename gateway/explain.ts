/**
 * `explain`: how a hostname routes, step by step, with the registry records used and how
 * old the cached copies are. Read-only; uses the same cache and the same Router as traffic.
 */
import type { IncomingMessage } from 'node:http';
import type { Kind } from '../discovery/backend.js';
import type { Registry } from '../discovery/registry.js';
import { ProxyError } from './errors.js';
import { classifyHost, normalizeHost, type RouteNames } from './host.js';
import type { Router } from './proxy-server.js';

export interface ExplainStep {
  path: string;
  record: object | null;
  /** Age of the copy routing uses; null: read just now. */
  cacheAgeMs: number | null;
}

export interface Explanation {
  input: string;
  normalized: string | undefined;
  kind: 'structured' | 'tenant' | 'apex' | undefined;
  parts: Record<string, string> | undefined;
  records: ExplainStep[];
  routes: boolean;
  /** A tenant's balancing and replica health, once it has seen traffic (null before). */
  balancing?: object | null;
  /** Where the gateway forwards (its local proxy), when it routes. */
  forwardTo?: string;
  /** The answer a request would get when it does not route. */
  status?: number;
  reason?: string;
  registry: { backend: string; connected: boolean; syncedAt: string | null; staleMs: number | null };
}

export async function explainHost(input: string, registry: Registry, names: RouteNames, router: Router): Promise<Explanation> {
  const st = registry.backend.status();
  const now = Date.now();
  const out: Explanation = {
    input,
    normalized: undefined,
    kind: undefined,
    parts: undefined,
    records: [],
    routes: false,
    registry: {
      backend: st.backend,
      connected: st.connected,
      syncedAt: st.syncedAt === null ? null : new Date(st.syncedAt).toISOString(),
      staleMs: st.connected || st.syncedAt === null ? null : now - st.syncedAt,
    },
  };
  let host: string;
  try {
    host = normalizeHost(input);
  } catch (err) {
    return { ...out, status: 400, reason: (err as Error).message };
  }
  out.normalized = host;
  const name = classifyHost(host, names);
  out.kind = name.kind;
  const record = async (kind: Kind, key: string) => {
    const cached = registry.peek(kind, key);
    const l = await registry.lookup(kind, key);
    out.records.push({ path: `${kind}/${key}`, record: l.value, cacheAgeMs: cached ? now - cached.fetchedAt : null });
    return l.value;
  };
  try {
    if (name.kind === 'structured') {
      out.parts = { app: name.app, container: name.container, host: name.host };
      await record('hosts', name.host);
      await record('containers', `${name.host}/${name.container}`);
    } else if (name.kind === 'tenant') {
      out.parts = { tenant: name.name };
      const t = await record('tenants', name.name);
      if (t && 'targets' in t) {
        for (const target of (t as { targets: { host: string; container: string }[] }).targets) {
          await record('hosts', target.host);
          await record('containers', `${target.host}/${target.container}`);
        }
      }
    }
    // A request with no headers: balancing and stickiness pick as they would for a new client.
    const probe = { headers: {}, url: '/', method: 'GET' } as IncomingMessage;
    const route = await router.resolve(host, { req: probe, clientIp: '', tried: undefined, fresh: false, holds: 0, trusted: false });
    route.release?.('aborted');
    out.routes = true;
    out.forwardTo = route.label;
    if (name.kind === 'tenant') out.balancing = router.describeTenant?.(name.name) ?? null;
  } catch (err) {
    if (name.kind === 'tenant') out.balancing = router.describeTenant?.(name.name) ?? null;
    const e = err instanceof ProxyError ? err : new ProxyError('registry_unavailable', (err as Error).message);
    out.status = e.status;
    out.reason = e.message;
  }
  return out;
}
