/**
 * Typed, cached access to a RegistryBackend: what the gateway, local proxies, DNS and the
 * admin API use. Reads go through a bounded LRU (negative results included) that change
 * events invalidate per key, so a registration is routable on the next request with no
 * reload; concurrent misses for one key share one backend read. When the backend is
 * unreachable the cached entries keep serving (last known good) and their age is reported.
 */
import { LRUCache } from 'lru-cache';
import type { z } from 'zod';
import { type ChangeEvent, type Kind, type ListResult, type RegistryBackend } from './backend.js';
import {
  certificateRecord,
  containerRecord,
  gatewayRecord,
  hostRecord,
  tenantRecord,
  type ContainerRecord,
  type GatewayRecord,
  type HostRecord,
  type TenantRecord,
} from './records.js';

export interface Lookup<T> {
  /** null: the registry has no (usable) record under that key. */
  value: T | null;
  /** ms since epoch when this was read from the backend. */
  fetchedAt: number;
}

export interface RegistryOptions {
  /** Most entries the route cache holds. */
  cacheMax?: number;
  warn?: (msg: string) => void;
}

const SCHEMAS = {
  certificates: certificateRecord,
  hosts: hostRecord,
  containers: containerRecord,
  tenants: tenantRecord,
  gateways: gatewayRecord,
} as const satisfies Record<Kind, z.ZodType>;

type RecordOf<K extends Kind> = z.infer<(typeof SCHEMAS)[K]>;

export class Registry {
  readonly backend: RegistryBackend;
  readonly #cache: LRUCache<string, Lookup<object>>;
  readonly #inflight = new Map<string, Promise<Lookup<object>>>();
  readonly #warn: (msg: string) => void;
  /** Bumped by every change event: a read that raced one is returned but not cached. */
  #generation = 0;
  #gateways: GatewayRecord[] = [];
  #gatewaysRefresh: Promise<void> | undefined;
  #gatewaysListeners = new Set<(gws: readonly GatewayRecord[]) => void>();
  #changeListeners = new Set<(ev: ChangeEvent) => void>();
  #unsubscribe: (() => void) | undefined;
  stats = { hits: 0, misses: 0, changes: 0 };

  constructor(backend: RegistryBackend, opts: RegistryOptions = {}) {
    this.backend = backend;
    this.#warn = opts.warn ?? ((msg) => process.emitWarning(msg));
    this.#cache = new LRUCache({ max: opts.cacheMax ?? 100_000 });
  }

  async start(): Promise<void> {
    this.#unsubscribe = this.backend.onChange((ev) => this.#onChange(ev));
    await this.backend.start();
    await this.#refreshGateways();
  }

  async close(): Promise<void> {
    this.#unsubscribe?.();
    await this.backend.close();
  }

  // ---- reads (hot path) ------------------------------------------------------------------

  /** Synchronous when cached (the common case), a promise on a miss. */
  lookup<K extends Kind>(kind: K, key: string): Lookup<RecordOf<K>> | Promise<Lookup<RecordOf<K>>> {
    const ck = `${kind}\0${key}`;
    const hit = this.#cache.get(ck);
    if (hit !== undefined) {
      this.stats.hits++;
      return hit as Lookup<RecordOf<K>>;
    }
    this.stats.misses++;
    let pending = this.#inflight.get(ck);
    if (pending === undefined) {
      pending = this.#fetch(kind, key, ck);
      this.#inflight.set(ck, pending);
      void pending.finally(() => this.#inflight.delete(ck)).catch(() => {});
    }
    return pending as Promise<Lookup<RecordOf<K>>>;
  }

  async host(id: string): Promise<HostRecord | null> {
    return (await this.lookup('hosts', id)).value;
  }
  async container(hostId: string, containerId: string): Promise<ContainerRecord | null> {
    return (await this.lookup('containers', `${hostId}/${containerId}`)).value;
  }
  async tenant(name: string): Promise<TenantRecord | null> {
    return (await this.lookup('tenants', name)).value;
  }

  /**
   * Reads through to the backend and refreshes the cache: after a forward failed to connect,
   * so a container that moved is found at its new place even before the change event arrives.
   */
  async lookupFresh<K extends Kind>(kind: K, key: string): Promise<Lookup<RecordOf<K>>> {
    await this.backend.sync?.();
    return this.#fetch(kind, key, `${kind}\0${key}`);
  }

  /** Every change event, after the cache has dropped what it invalidates. */
  onChange(listener: (ev: ChangeEvent) => void): () => void {
    this.#changeListeners.add(listener);
    return () => this.#changeListeners.delete(listener);
  }

  /** Cached entry without touching the backend (explain: how old is what we route by). */
  peek(kind: Kind, key: string): Lookup<object> | undefined {
    return this.#cache.peek(`${kind}\0${key}`);
  }

  /** The registered gateways, as of the last change event. Never undefined. */
  gateways(): readonly GatewayRecord[] {
    return this.#gateways;
  }

  onGatewaysChange(listener: (gws: readonly GatewayRecord[]) => void): () => void {
    this.#gatewaysListeners.add(listener);
    return () => this.#gatewaysListeners.delete(listener);
  }

  cacheSize(): number {
    return this.#cache.size;
  }

  // ---- writes (admin API, self-registration) ----------------------------------------------

  put(kind: Kind, key: string, value: object, ephemeral = false): Promise<void> {
    return this.backend.put(kind, key, value, { ephemeral });
  }

  delete(kind: Kind, key: string): Promise<boolean> {
    return this.backend.delete(kind, key);
  }

  list(kind: Kind, opts?: { parent?: string; after?: string; limit?: number }): Promise<ListResult> {
    return this.backend.list(kind, opts);
  }

  /** Reads straight from the backend (no cache): for the admin API's GETs. */
  async read<K extends Kind>(kind: K, key: string): Promise<RecordOf<K> | null> {
    return this.#validate(kind, key, await this.backend.get(kind, key));
  }

  // ---- internals ------------------------------------------------------------------------

  async #fetch<K extends Kind>(kind: K, key: string, ck: string): Promise<Lookup<RecordOf<K>>> {
    const generation = this.#generation;
    const raw = await this.backend.get(kind, key);
    const entry: Lookup<RecordOf<K>> = { value: this.#validate(kind, key, raw), fetchedAt: Date.now() };
    if (generation === this.#generation) this.#cache.set(ck, entry);
    return entry;
  }

  #validate<K extends Kind>(kind: K, key: string, raw: unknown): RecordOf<K> | null {
    if (raw === undefined || raw === null) return null;
    const parsed = SCHEMAS[kind].safeParse(raw);
    if (parsed.success) return parsed.data as RecordOf<K>;
    this.#warn(`registry record ${kind}/${key} is unusable and ignored: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
    return null;
  }

  #onChange(ev: ChangeEvent): void {
    this.#generation++;
    this.stats.changes++;
    if (ev.key !== undefined) {
      this.#cache.delete(`${ev.kind}\0${ev.key}`);
    } else {
      const prefix = `${ev.kind}\0`;
      for (const k of this.#cache.keys()) if (k.startsWith(prefix)) this.#cache.delete(k);
    }
    if (ev.kind === 'gateways') void this.#refreshGateways();
    for (const l of this.#changeListeners) l(ev);
  }

  /** Coalesced: one refresh at a time, one more queued if changes arrive meanwhile. */
  #refreshGateways(): Promise<void> {
    const run = async () => {
      const gws: GatewayRecord[] = [];
      let after: string | undefined;
      do {
        const page = await this.backend.list('gateways', { after, limit: 1000 });
        for (const key of page.keys) {
          const rec = this.#validate('gateways', key, await this.backend.get('gateways', key));
          if (rec) gws.push(rec);
        }
        after = page.next;
      } while (after !== undefined);
      this.#gateways = gws;
      for (const l of this.#gatewaysListeners) l(gws);
    };
    const next: Promise<void> = (this.#gatewaysRefresh ?? Promise.resolve())
      .then(run)
      .catch((err: Error) => this.#warn(`could not refresh the gateway list, keeping the last one: ${err.message}`));
    this.#gatewaysRefresh = next;
    return next;
  }
}
