/**
 * Hostname -> origin, for each tier. Every address comes from the registry; the Host text
 * only supplies registry keys. Lookups are synchronous on a cache hit (the common case).
 *
 *   gateway:      structured name -> hosts/<host>;  tenant -> tenants/<name> -> hosts/<target.host>
 *   local proxy:  structured name -> containers/<thisHost>/<container> (app must match);
 *                 tenant -> tenants/<name> -> its targets on this host -> containers/...
 */
import type { Lookup, Registry } from '../discovery/registry.js';
import { parseAddress, type Address, type HostRecord, type Target } from '../discovery/records.js';
import { ProxyError } from './errors.js';
import type { FailureKind } from './forward.js';
import { classifyHost, type RouteNames } from './host.js';
import type { Route, Router } from './proxy-server.js';

type MaybePromise<T> = T | Promise<T>;

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

/** Round robin over a tenant's targets, one counter per router (good enough until issue 5's balancers). */
class RoundRobin {
  #next = 0;
  order<T>(items: readonly T[]): T[] {
    const start = this.#next++ % items.length;
    return [...items.slice(start), ...items.slice(0, start)];
  }
}

export class GatewayRouter implements Router {
  readonly #registry: Registry;
  readonly #names: RouteNames;
  readonly #rr = new RoundRobin();

  constructor(registry: Registry, names: RouteNames) {
    this.#registry = registry;
    this.#names = names;
  }

  resolve(host: string): MaybePromise<Route> {
    const name = classifyHost(host, this.#names);
    if (name.kind === 'apex') throw new ProxyError('unknown_tenant', `${host} is the zone apex; no tenant is served there`);
    if (name.kind === 'structured') {
      return then(this.#registry.lookup('hosts', name.host), (h) => {
        if (h.value === null) throw new ProxyError('unknown_host', `no container host "${name.host}" is registered (from ${host})`);
        return this.#route(name.host, h.value);
      });
    }
    return then(this.#registry.lookup('tenants', name.name), (t) => {
      if (t.value === null) throw new ProxyError('unknown_tenant', `no tenant is registered for ${host}`);
      return this.#firstLiveHost(name.name, this.#rr.order(t.value.targets), 0);
    });
  }

  failure(kind: FailureKind, route: Route, err: Error): ProxyError {
    if (kind === 'connect') return new ProxyError('local_proxy_unreachable', `${route.label} is registered but not reachable (${err.message})`);
    if (kind === 'timeout') return new ProxyError('upstream_timeout', `${route.label} did not answer in time`);
    return new ProxyError('upstream_broken', `${route.label} broke the connection (${err.message})`);
  }

  /** The first target whose host is registered. */
  #firstLiveHost(tenant: string, targets: Target[], i: number): MaybePromise<Route> {
    const target = targets[i];
    if (target === undefined) {
      throw new ProxyError('local_proxy_unreachable', `none of tenant ${tenant}'s container hosts is registered (${targets.map((t) => t.host).join(', ')})`);
    }
    return then(this.#registry.lookup('hosts', target.host), (h: Lookup<HostRecord>) =>
      h.value === null ? this.#firstLiveHost(tenant, targets, i + 1) : this.#route(target.host, h.value),
    );
  }

  #route(hostId: string, rec: HostRecord): Route {
    const origin = addressOf(rec);
    if (origin === null) throw new ProxyError('local_proxy_unreachable', `host ${hostId} has an unusable address ${JSON.stringify(rec.address)}`);
    return { origin, label: `host ${hostId}'s local proxy at ${rec.address}` };
  }
}

export class LocalProxyRouter implements Router {
  readonly #registry: Registry;
  readonly #names: RouteNames;
  readonly #hostId: string;
  /** Where containers listen on this machine. */
  readonly #containerHost: string;
  readonly #rr = new RoundRobin();

  constructor(registry: Registry, names: RouteNames, hostId: string, containerHost = '127.0.0.1') {
    this.#registry = registry;
    this.#names = names;
    this.#hostId = hostId;
    this.#containerHost = containerHost;
  }

  resolve(host: string): MaybePromise<Route> {
    const name = classifyHost(host, this.#names);
    if (name.kind === 'apex') throw new ProxyError('unknown_tenant', `${host} is the zone apex; no tenant is served there`);
    if (name.kind === 'structured') {
      if (name.host !== this.#hostId) {
        throw new ProxyError('unknown_host', `this local proxy serves host ${this.#hostId}, not host ${name.host} (from ${host})`);
      }
      return this.#container(name.container, name.app);
    }
    return then(this.#registry.lookup('tenants', name.name), (t) => {
      if (t.value === null) throw new ProxyError('unknown_tenant', `no tenant is registered for ${host}`);
      const here = t.value.targets.filter((x) => x.host === this.#hostId);
      const first = this.#rr.order(here)[0];
      if (first === undefined) throw new ProxyError('unknown_container', `tenant ${name.name} has no container on host ${this.#hostId}`);
      return this.#container(first.container, undefined);
    });
  }

  failure(kind: FailureKind, route: Route, err: Error): ProxyError {
    if (kind === 'connect') return new ProxyError('upstream_refused', `${route.label} refused the connection (${err.message})`);
    if (kind === 'timeout') return new ProxyError('upstream_timeout', `${route.label} did not answer in time`);
    return new ProxyError('upstream_broken', `${route.label} broke the connection (${err.message})`);
  }

  #container(containerId: string, app: string | undefined): MaybePromise<Route> {
    return then(this.#registry.lookup('containers', `${this.#hostId}/${containerId}`), (c) => {
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
