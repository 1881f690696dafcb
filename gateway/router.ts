/**
 * Hostname -> origin, for each tier. Every address comes from the registry; the Host text
 * only supplies registry keys. Lookups are synchronous on a cache hit (the common case).
 *
 *   gateway:      structured name -> hosts/<host>
 *                 tenant -> tenants/<name> -> a replica (balancing, health, stickiness,
 *                 maxConn; held while none can take it) -> hosts/<replica.host>; the chosen
 *                 container travels to the local proxy in x-tgw-container
 *   local proxy:  structured name -> containers/<thisHost>/<container> (app must match);
 *                 tenant -> the container the gateway chose, when it is the tenant's on this
 *                 host, else round robin over the tenant's containers here
 */
import type { IncomingMessage } from 'node:http';
import type { Lookup, Registry } from '../discovery/registry.js';
import { parseAddress, type Address, type HostRecord, type TenantRecord } from '../discovery/records.js';
import { pickRoundRobin } from './balancer.js';
import { ProxyError } from './errors.js';
import { TARGET_HEADER, type FailureKind, type Forwarder } from './forward.js';
import { classifyHost, type RouteNames } from './host.js';
import type { ResolveContext, Route, Router } from './proxy-server.js';
import { Replica, stickyCookie, TenantState, TenantTable, type HealthListener } from './tenants.js';

type MaybePromise<T> = T | Promise<T>;

const isTls = (req: IncomingMessage) => (req.socket as { encrypted?: boolean }).encrypted === true;

/** Applies `f` synchronously when `v` is already there, so cached routes never wait a tick. */
function then<T, U>(v: MaybePromise<T>, f: (t: T) => MaybePromise<U>): MaybePromise<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

/** Parsed addresses, per record object (a record is replaced, never mutated, on change). */
const parsed = new WeakMap<object, Address | null>();
function addressOf(rec: HostRecord): Address | null {
  let a = parsed.get(rec);
  if (a === undefined) {
    a = parseAddress(rec.address) ?? null;
    parsed.set(rec, a);
  }
  return a;
}

const apexError = (host: string) => new ProxyError('unknown_tenant', `${host} is the zone apex; no tenant is served there`);

export class GatewayRouter implements Router {
  readonly #registry: Registry;
  readonly #names: RouteNames;
  readonly #tenants: TenantTable;
  readonly #unsubscribe: () => void;

  readonly #onLocalProxyHealth: ((hostId: string, up: boolean) => void) | undefined;
  /** The HTTPS port, when TLS is on: tenants may ask for a redirect there. */
  readonly #httpsPort: () => number | undefined;

  constructor(
    registry: Registry,
    names: RouteNames,
    forwarder: Forwarder,
    opts: { httpsPort?: () => number | undefined; onHealth?: HealthListener; onLocalProxyHealth?: (hostId: string, up: boolean) => void } = {},
  ) {
    this.#onLocalProxyHealth = opts.onLocalProxyHealth;
    this.#registry = registry;
    this.#names = names;
    this.#httpsPort = opts.httpsPort ?? (() => undefined);
    this.#tenants = new TenantTable((tenant, replica, check) => this.#probe(forwarder, tenant, replica, check), 100_000, opts.onHealth);
    // Any registry change may unblock held requests (a replica registered, a host back).
    this.#unsubscribe = registry.onChange(() => this.#tenants.wakeAll());
  }

  close(): void {
    this.#unsubscribe();
    this.#tenants.close();
  }

  resolve(host: string, ctx: ResolveContext): MaybePromise<Route> {
    const name = classifyHost(host, this.#names);
    if (name.kind === 'apex') throw apexError(host);
    if (name.kind === 'structured') {
      return then(this.#lookup('hosts', name.host, ctx), (h) => {
        if (h.value === null) throw new ProxyError('unknown_host', `no container host "${name.host}" is registered (from ${host})`);
        return this.#hostRoute(name.host, h.value);
      });
    }
    return then(this.#lookup('tenants', name.name, ctx), (t) => {
      if (t.value === null) throw new ProxyError('unknown_tenant', `no tenant is registered for ${host}`);
      const rec = t.value as TenantRecord;
      const httpsPort = this.#httpsPort();
      if (rec.https?.redirect === true && httpsPort !== undefined && !isTls(ctx.req)) throw this.#redirect(host, httpsPort, ctx);
      return this.#choose(this.#tenants.get(name.name, rec), host, ctx, undefined);
    });
  }

  /** 308 keeps the method and body (RFC 9110 §15.4.9). */
  #redirect(host: string, httpsPort: number, ctx: ResolveContext): ProxyError {
    const port = httpsPort === 443 ? '' : `:${httpsPort}`;
    const location = `https://${host}${port}${ctx.req.url ?? '/'}`;
    return new ProxyError('https_redirect', `this tenant is served over HTTPS: ${location}`, { location });
  }

  failure(kind: FailureKind, route: Route, err: Error): ProxyError {
    if (kind === 'stale') return new ProxyError('unknown_container', `${route.label} does not know the target (${err.message})`);
    if (kind === 'connect') return new ProxyError('local_proxy_unreachable', `${route.label} is registered but not reachable (${err.message})`);
    if (kind === 'timeout') return new ProxyError('upstream_timeout', `${route.label} did not answer in time`);
    return new ProxyError('upstream_broken', `${route.label} broke the connection (${err.message})`);
  }

  /** Health and balancing state of a tenant that has seen traffic (admin API, explain). */
  describeTenant(name: string): object | null {
    return this.#tenants.peek(name)?.describe(Date.now()) ?? null;
  }

  #lookup<K extends 'hosts' | 'tenants'>(kind: K, key: string, ctx: ResolveContext) {
    return ctx.fresh ? this.#registry.lookupFresh(kind, key) : this.#registry.lookup(kind, key);
  }

  #choose(state: TenantState, host: string, ctx: ResolveContext, holdUntil: number | undefined): MaybePromise<Route> {
    const lookups = state.replicas.map((r) => this.#lookup('hosts', r.host, ctx));
    if (lookups.some((l) => l instanceof Promise)) {
      return Promise.all(lookups).then((ls) => this.#pick(state, ls, host, ctx, holdUntil));
    }
    return this.#pick(state, lookups as Lookup<HostRecord>[], host, ctx, holdUntil);
  }

  #pick(state: TenantState, hosts: Lookup<HostRecord>[], host: string, ctx: ResolveContext, holdUntil: number | undefined): MaybePromise<Route> {
    const now = Date.now();
    const s = state.settings;
    const addresses = new Map<string, HostRecord | null>();
    state.replicas.forEach((r, i) => addresses.set(r.host, hosts[i]?.value ?? null));
    let atMaxConn = false;
    const usable = (r: Replica): boolean => {
      if (ctx.tried?.has(r.id) || !r.healthy(now) || !addresses.get(r.host)) return false;
      if (s.maxConn > 0 && r.inflight >= s.maxConn) {
        atMaxConn = true;
        return false;
      }
      return true;
    };
    const r = state.pick(ctx.req, usable, ctx.clientIp);
    if (r !== undefined) return this.#replicaRoute(state, r, addresses.get(r.host) as HostRecord, ctx);

    // Nothing can take it now: hold the request (bounded) and try again on the next change,
    // or after a short backoff (a next hop may lag the registry by milliseconds).
    const bound = atMaxConn ? s.maxQueue : s.hold.queue;
    const until = holdUntil ?? now + s.hold.timeoutMs;
    if (ctx.noHold === true || until <= now || state.waiting >= bound) throw this.#noReplica(state, addresses, now, until <= now ? s.hold.timeoutMs : undefined);
    // 5, 10, 20 ms...: a next hop that lags the registry usually catches up within the first.
    const backoff = Math.min(1_000, 5 * 2 ** ctx.holds++);
    return state.waitForChange(Math.min(until - now, backoff)).then(() => {
      if (Date.now() >= until) throw this.#noReplica(state, addresses, Date.now(), s.hold.timeoutMs);
      ctx.tried = undefined; // every replica deserves a new try; attempts stay bounded
      ctx.fresh = false;
      return then(this.#lookup('tenants', state.name, ctx), (t) => {
        if (t.value === null) throw new ProxyError('unknown_tenant', `no tenant is registered for ${host}`);
        return this.#choose(this.#tenants.get(state.name, t.value as TenantRecord), host, ctx, until);
      });
    });
  }

  #replicaRoute(state: TenantState, r: Replica, rec: HostRecord, ctx: ResolveContext): Route {
    const route = this.#hostRoute(r.host, rec);
    r.inflight++;
    const cookie = stickyCookie(state, r);
    const sent = cookie === undefined ? undefined : (ctx.req.headers.cookie ?? '');
    const extra: string[] = [];
    // Set the cookie only when the client does not already carry this replica's value.
    if (cookie !== undefined && !(sent as string).includes(`=${r.cookie}`)) extra.push('set-cookie', cookie);
    const hsts = state.record.https?.hsts;
    // RFC 6797 §7.2: HSTS only on secure transport.
    if (hsts !== undefined && isTls(ctx.req)) {
      extra.push('strict-transport-security', `max-age=${hsts.maxAge}${hsts.includeSubDomains ? '; includeSubDomains' : ''}${hsts.preload ? '; preload' : ''}`);
    }
    return {
      ...route,
      label: `${route.label} (tenant ${state.name}, container ${r.container})`,
      replica: r.id,
      headers: [TARGET_HEADER, r.container],
      responseHeaders: extra.length > 0 ? extra : undefined,
      retry: { attempts: state.settings.retries.attempts, deadlineMs: state.settings.retries.deadlineMs },
      release: (outcome) => state.release(r, outcome, Date.now()),
    };
  }

  #noReplica(state: TenantState, hosts: Map<string, HostRecord | null>, now: number, heldMs: number | undefined): ProxyError {
    const why = state.replicas
      .map((r) => {
        const reason = !hosts.get(r.host)
          ? 'host not registered'
          : !r.activeUp
            ? 'failing health checks'
            : now < r.ejectedUntil
              ? `ejected for ${Math.ceil((r.ejectedUntil - now) / 1000)} s after failures`
              : state.settings.maxConn > 0 && r.inflight >= state.settings.maxConn
                ? `at maxConn ${state.settings.maxConn}`
                : 'failed for this request';
        return `${r.id}: ${reason}`;
      })
      .join('; ');
    const held = heldMs === undefined ? 'the wait queue is full' : `waited ${heldMs / 1000} s`;
    return new ProxyError('no_healthy_replica', `tenant ${state.name} has no replica that can take the request (${why}); ${held}`);
  }

  #hostRoute(hostId: string, rec: HostRecord): Route {
    const origin = addressOf(rec);
    if (origin === null) throw new ProxyError('local_proxy_unreachable', `host ${hostId} has an unusable address ${JSON.stringify(rec.address)}`);
    return { origin, label: `host ${hostId}'s local proxy at ${rec.address}` };
  }

  async #probe(forwarder: Forwarder, tenant: string, r: Replica, check: { path: string; timeoutMs: number }) {
    const h = await this.#registry.lookup('hosts', r.host);
    const origin = h.value === null ? null : addressOf(h.value);
    if (origin === null) return { ok: false, result: 'host not registered' };
    const hostname = tenant.includes('.') ? tenant : `${tenant}.${this.#names.domain}`;
    const result = await forwarder.probe(origin, check.path, { host: hostname, [TARGET_HEADER]: r.container, 'user-agent': 'tenant-gateway-health' }, check.timeoutMs);
    // Any HTTP answer means the local proxy is up (even when its container is not).
    this.#onLocalProxyHealth?.(r.host, /^\d{3}$/.test(result.result));
    return result;
  }
}

export class LocalProxyRouter implements Router {
  readonly #registry: Registry;
  readonly #names: RouteNames;
  readonly #hostId: string;
  /** Where containers listen on this machine. */
  readonly #containerHost: string;
  /** Round robin state per tenant record (dropped with the record). */
  readonly #rr = new WeakMap<TenantRecord, { id: string; weight: number; inflight: number; current: number; container: string }[]>();

  constructor(registry: Registry, names: RouteNames, hostId: string, containerHost = '127.0.0.1') {
    this.#registry = registry;
    this.#names = names;
    this.#hostId = hostId;
    this.#containerHost = containerHost;
  }

  resolve(host: string, ctx: ResolveContext): MaybePromise<Route> {
    const name = classifyHost(host, this.#names);
    if (name.kind === 'apex') throw apexError(host);
    if (name.kind === 'structured') {
      if (name.host !== this.#hostId) {
        throw new ProxyError('unknown_host', `this local proxy serves host ${this.#hostId}, not host ${name.host} (from ${host})`);
      }
      return this.#container(name.container, name.app);
    }
    // A gateway that names a container knows something this process may not have seen yet:
    // on a miss, read the registry again once (read-your-writes across processes).
    const chosen = ctx.req.headers[TARGET_HEADER];
    const named = typeof chosen === 'string' && ctx.trusted ? chosen : undefined;
    const pickFrom = (t: Lookup<TenantRecord>, fresh: boolean): MaybePromise<Route> => {
      const here = t.value === null ? [] : this.#here(t.value);
      const wanted = named === undefined ? undefined : here.find((x) => x.container === named);
      if (named !== undefined && wanted === undefined && !fresh) return then(this.#registry.lookupFresh('tenants', name.name), (t2) => pickFrom(t2, true));
      if (t.value === null) throw new ProxyError('unknown_tenant', `no tenant is registered for ${host}`);
      const pick = wanted ?? pickRoundRobin(here);
      if (pick === undefined) throw new ProxyError('unknown_container', `tenant ${name.name} has no container on host ${this.#hostId}`);
      return this.#container(pick.container, undefined, named !== undefined);
    };
    return then(this.#registry.lookup('tenants', name.name), (t) => pickFrom(t, false));
  }

  failure(kind: FailureKind, route: Route, err: Error): ProxyError {
    if (kind === 'stale') return new ProxyError('unknown_container', `${route.label} is not known (${err.message})`);
    if (kind === 'connect') return new ProxyError('upstream_refused', `${route.label} refused the connection (${err.message})`);
    if (kind === 'timeout') return new ProxyError('upstream_timeout', `${route.label} did not answer in time`);
    return new ProxyError('upstream_broken', `${route.label} broke the connection (${err.message})`);
  }

  #here(rec: TenantRecord) {
    let list = this.#rr.get(rec);
    if (list === undefined) {
      list = rec.targets
        .filter((x) => x.host === this.#hostId)
        .map((x) => ({ id: x.container, container: x.container, weight: x.weight ?? 1, inflight: 0, current: 0 }));
      this.#rr.set(rec, list);
    }
    return list;
  }

  #container(containerId: string, app: string | undefined, freshOnMiss = false, fresh = false): MaybePromise<Route> {
    const key = `${this.#hostId}/${containerId}`;
    return then(fresh ? this.#registry.lookupFresh('containers', key) : this.#registry.lookup('containers', key), (c) => {
      if (c.value === null && freshOnMiss && !fresh) return this.#container(containerId, app, false, true);
      if (c.value === null) throw new ProxyError('unknown_container', `no container "${containerId}" is registered on host ${this.#hostId}`);
      if (app !== undefined && c.value.app !== app) {
        throw new ProxyError('unknown_container', `container ${containerId} on host ${this.#hostId} runs app "${c.value.app}", not "${app}"`);
      }
      return {
        origin: { host: this.#containerHost, port: c.value.port },
        label: `container ${containerId} on host ${this.#hostId} (port ${c.value.port})`,
      };
    });
  }
}
