/**
 * Prometheus metrics for the admin listener's `GET /metrics` (prom-client, on a Registry of
 * our own, never the global one).
 *
 * Hot path: `requestDone` does array increments only (no label hashing, no allocation for a
 * tenant that already has its series). prom-client's own `Histogram.observe` costs ~2 µs a call
 * (label hashing, a float-keyed bucket map), so counts live in typed arrays here and are handed
 * to prom-client when scraped.
 *
 * Bounded: per-tenant series exist for at most `maxTenants` tenants (the busiest, approximately)
 * plus `tenant="other"`; replica and local proxy health series are capped the same way. 100k
 * tenants never make 100k series.
 */
import client from 'prom-client';
import type { Registry as RouteRegistry } from '../discovery/registry.js';
import type { RequestObserver, RequestRecord } from '../gateway/proxy-server.js';

/** A RequestRecord as issue 5's retrying forwarder may extend it. */
export type ObservedRequest = RequestRecord;

export const COMPONENTS = ['gateway', 'local-proxy'] as const;
/** Index 0: the client went away before a response head (status 0). */
export const STATUS_CLASSES = ['aborted', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;
const NCLASS = STATUS_CLASSES.length;
/** Seconds; tuned for a proxy hop (sub-ms) through slow app responses. */
export const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const componentIndex = (c: string): number => (c === 'gateway' ? 0 : 1);
const classIndex = (status: number): number => {
  const c = (status / 100) | 0;
  return c < 1 ? 0 : c > 5 ? 5 : c;
};

/** What DNS exposes (dns/server.ts `stats`); `byQtype` once the DNS server counts it. */
export interface DnsStats {
  queries: number;
  byRcode: Record<string, number>;
  byQtype?: Record<string, number>;
  /** UDP queries dropped by the per-source rate limit. */
  rateLimited?: number;
}

export interface AccessLogStats {
  lines: number;
  dropped: number;
  errors: number;
}

export interface MetricsOptions {
  /** Tenants with their own series; 0: none (only tenant="other"). */
  maxTenants?: number;
  /** Most replica and local proxy health series each. */
  maxHealthSeries?: number;
  /** How often the busiest unlabeled tenants may take a quiet labeled tenant's place. */
  rotateMs?: number;
  /** Process metrics (CPU, memory, event loop lag, GC) from prom-client. */
  processMetrics?: boolean;
}

/** Per-tenant counts, one row per tenant that has its own series. */
interface TenantRow {
  /** [component * NCLASS + class] */
  counts: Float64Array;
  /** Requests in the current rotation window. */
  window: number;
}

export interface TenantSnapshot {
  tenant: string;
  /** Cumulative requests by component, then status class (STATUS_CLASSES order). */
  gateway: number[];
  localProxy: number[];
}

export interface MetricsSnapshot {
  /** ms since epoch */
  now: number;
  totals: { gateway: number[]; localProxy: number[] };
  tenants: TenantSnapshot[];
  other: { gateway: number[]; localProxy: number[] };
  replicas: { tenant: string; replica: string; up: boolean }[];
  localProxies: Record<string, boolean>;
}

/**
 * Approximate top-N by traffic with stable series: a tenant seen while a slot is free gets one
 * at once (so under N tenants, every tenant has its series); after that, once per window the
 * busiest unlabeled tenants replace labeled ones that had less than half their traffic. An
 * evicted tenant's series disappears (Prometheus treats it as ended), so counters never go
 * down; `tgw_http_requests_total` is the exact total.
 */
export class TenantTraffic {
  #max: number;
  readonly #rotateMs: number;
  readonly #rows = new Map<string, TenantRow>();
  readonly #other = new Float64Array(2 * NCLASS);
  /** Unlabeled tenants' traffic this window; bounded (a full map ends the window). */
  readonly #candidates = new Map<string, number>();
  #nextRotate = 0;
  evictions = 0;

  constructor(max: number, rotateMs: number) {
    this.#max = max;
    this.#rotateMs = rotateMs;
  }

  get max(): number {
    return this.#max;
  }

  /** Fewer slots: the quietest tenants lose theirs now. */
  setMax(max: number): void {
    this.#max = max;
    if (this.#rows.size <= max) return;
    const byWindow = [...this.#rows].sort((a, b) => a[1].window - b[1].window);
    for (const [tenant] of byWindow.slice(0, this.#rows.size - max)) this.#evict(tenant);
  }

  count(tenant: string, slot: number, now: number): void {
    if (now >= this.#nextRotate) this.#rotate(now);
    const row = this.#rows.get(tenant);
    if (row !== undefined) {
      row.counts[slot]!++;
      row.window++;
      return;
    }
    if (this.#rows.size < this.#max) {
      const counts = new Float64Array(2 * NCLASS);
      counts[slot] = 1;
      this.#rows.set(tenant, { counts, window: 1 });
      return;
    }
    this.#other[slot]!++;
    const n = this.#candidates.get(tenant);
    if (n !== undefined) {
      this.#candidates.set(tenant, n + 1);
      return;
    }
    // Many distinct quiet tenants fill the candidates: close the window early, so a busy
    // tenant that shows up late is still counted (amortized: one sort per 1000 new names).
    if (this.#candidates.size >= Math.max(1000, this.#max * 10)) this.#rotate(now);
    this.#candidates.set(tenant, 1);
  }

  rows(): ReadonlyMap<string, TenantRow> {
    return this.#rows;
  }

  other(): Float64Array {
    return this.#other;
  }

  #rotate(now: number): void {
    this.#nextRotate = now + this.#rotateMs;
    if (this.#candidates.size > 0 && this.#max > 0) {
      const hot = [...this.#candidates].sort((a, b) => b[1] - a[1]);
      const quiet = [...this.#rows].sort((a, b) => a[1].window - b[1].window);
      let q = 0;
      for (const [tenant, n] of hot) {
        const victim = quiet[q];
        if (victim === undefined || n < 10 || n <= 2 * victim[1].window) break;
        this.#evict(victim[0]);
        this.#rows.set(tenant, { counts: new Float64Array(2 * NCLASS), window: 0 });
        q++;
      }
    }
    this.#candidates.clear();
    for (const row of this.#rows.values()) row.window = 0;
  }

  #evict(tenant: string): void {
    this.#rows.delete(tenant);
    this.evictions++;
  }
}

/** A map of at most `max` entries; when full, the oldest entry reported up goes first, else the oldest. */
class HealthMap {
  readonly #entries = new Map<string, boolean>();
  dropped = 0;
  constructor(readonly max: number) {}

  set(key: string, up: boolean): void {
    this.#entries.delete(key);
    if (this.#entries.size >= this.max) {
      let victim: string | undefined;
      for (const [k, v] of this.#entries) {
        if (v) {
          victim = k;
          break;
        }
      }
      victim ??= this.#entries.keys().next().value;
      if (victim !== undefined) this.#entries.delete(victim);
      this.dropped++;
    }
    this.#entries.set(key, up);
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  entries(): IterableIterator<[string, boolean]> {
    return this.#entries.entries();
  }
}

/** prom-client's Registry only calls `get()` on what it holds: a histogram whose counts we keep. */
class ArrayHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    readonly series: () => Iterable<{ labels: Record<string, string>; buckets: Float64Array; sum: number }>,
  ) {}

  async get() {
    const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
    for (const s of this.series()) {
      let count = 0;
      for (let i = 0; i < DURATION_BUCKETS.length; i++) {
        count += s.buckets[i]!;
        values.push({ value: count, labels: { ...s.labels, le: DURATION_BUCKETS[i]! }, metricName: `${this.name}_bucket` });
      }
      count += s.buckets[DURATION_BUCKETS.length]!;
      values.push({ value: count, labels: { ...s.labels, le: '+Inf' }, metricName: `${this.name}_bucket` });
      values.push({ value: s.sum, labels: s.labels, metricName: `${this.name}_sum` });
      values.push({ value: count, labels: s.labels, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export class Metrics implements RequestObserver {
  readonly registry = new client.Registry();
  readonly #requests = new Float64Array(2 * NCLASS);
  /** [component * NCLASS + class][bucket], last bucket +Inf */
  readonly #buckets: Float64Array[] = Array.from({ length: 2 * NCLASS }, () => new Float64Array(DURATION_BUCKETS.length + 1));
  readonly #durationSum = new Float64Array(2 * NCLASS);
  readonly #bytes = new Float64Array(2);
  readonly #incomplete = new Float64Array(2);
  readonly #retries = new Float64Array(2);
  /** error code -> [gateway, local-proxy]; keys are ProxyErrorCode values (a closed set). */
  readonly #errors = new Map<string, Float64Array>();
  readonly #tenants: TenantTraffic;
  readonly #replicas: HealthMap;
  readonly #localProxies: HealthMap;
  #routeRegistry: RouteRegistry | undefined;
  #dns: DnsStats | undefined;
  #accessLog: AccessLogStats | undefined;

  constructor(opts: MetricsOptions = {}) {
    this.#tenants = new TenantTraffic(opts.maxTenants ?? 100, opts.rotateMs ?? 10_000);
    this.#replicas = new HealthMap(opts.maxHealthSeries ?? 1000);
    this.#localProxies = new HealthMap(opts.maxHealthSeries ?? 1000);
    if (opts.processMetrics ?? true) client.collectDefaultMetrics({ register: this.registry });
    this.#define();
  }

  // ---- hot path -------------------------------------------------------------------------

  requestDone(rec: ObservedRequest): void {
    const c = componentIndex(rec.component);
    const slot = c * NCLASS + classIndex(rec.status);
    this.#requests[slot]!++;
    const sec = rec.durationMs / 1000;
    this.#durationSum[slot]! += sec;
    const buckets = this.#buckets[slot]!;
    let b = 0;
    while (b < DURATION_BUCKETS.length && sec > DURATION_BUCKETS[b]!) b++;
    buckets[b]!++;
    this.#bytes[c]! += rec.bytes;
    if (!rec.completed) this.#incomplete[c]!++;
    if (rec.retries !== undefined && rec.retries > 0) this.#retries[c]! += rec.retries;
    if (rec.error !== undefined) {
      let e = this.#errors.get(rec.error);
      if (e === undefined) this.#errors.set(rec.error, (e = new Float64Array(2)));
      e[c]!++;
    }
    // Only routed requests name a registered tenant: random Host headers never get a series.
    if (rec.upstream !== undefined && this.#tenants.max > 0) this.#tenants.count(rec.host, slot, rec.start);
  }

  // ---- collaborators read when scraped ----------------------------------------------------

  watchRegistry(registry: RouteRegistry): void {
    this.#routeRegistry = registry;
  }
  watchDns(stats: DnsStats): void {
    this.#dns = stats;
  }
  watchAccessLog(stats: AccessLogStats): void {
    this.#accessLog = stats;
  }

  setMaxTenants(n: number): void {
    this.#tenants.setMax(n);
  }

  // ---- health (issue 5 reports it; bounded) ----------------------------------------------

  /** One replica (e.g. "01/c001") of a tenant is up or down; series kept for at most maxHealthSeries. */
  setReplicaHealth(tenant: string, replica: string, up: boolean): void {
    this.#replicas.set(`${tenant}\0${replica}`, up);
  }
  forgetReplica(tenant: string, replica: string): void {
    this.#replicas.delete(`${tenant}\0${replica}`);
  }
  setLocalProxyHealth(hostId: string, up: boolean): void {
    this.#localProxies.set(hostId, up);
  }
  forgetLocalProxy(hostId: string): void {
    this.#localProxies.delete(hostId);
  }

  // ---- reading ----------------------------------------------------------------------------

  /** The Prometheus text exposition. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** For the dashboard: cumulative counts; rates are differences between two snapshots. */
  snapshot(): MetricsSnapshot {
    const split = (a: Float64Array) => ({ gateway: [...a.subarray(0, NCLASS)], localProxy: [...a.subarray(NCLASS)] });
    const tenants: TenantSnapshot[] = [];
    for (const [tenant, row] of this.#tenants.rows()) tenants.push({ tenant, ...split(row.counts) });
    const replicas = [];
    for (const [key, up] of this.#replicas.entries()) {
      const [tenant = '', replica = ''] = key.split('\0');
      replicas.push({ tenant, replica, up });
    }
    return {
      now: Date.now(),
      totals: split(this.#requests),
      tenants,
      other: split(this.#tenants.other()),
      replicas,
      localProxies: Object.fromEntries(this.#localProxies.entries()),
    };
  }

  // ---- definitions ------------------------------------------------------------------------

  #define(): void {
    const registers = [this.registry];
    const perClass = function* (a: Float64Array) {
      for (let c = 0; c < 2; c++) {
        for (let k = 0; k < NCLASS; k++) {
          const v = a[c * NCLASS + k]!;
          if (v > 0) yield { labels: { component: COMPONENTS[c]!, status_class: STATUS_CLASSES[k]! }, value: v };
        }
      }
    };
    const counter = <L extends string>(name: string, help: string, labelNames: L[], fill: (set: (labels: Partial<Record<L, string>>, v: number) => void) => void) =>
      new client.Counter({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          fill((labels, v) => this.inc(labels as Partial<Record<L, string | number>>, v));
        },
      });
    const gauge = <L extends string>(name: string, help: string, labelNames: L[], fill: (set: (labels: Partial<Record<L, string>>, v: number) => void) => void) =>
      new client.Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          fill((labels, v) => this.set(labels as Partial<Record<L, string | number>>, v));
        },
      });
    const perComponent = (a: Float64Array) => (set: (l: { component: string }, v: number) => void) => {
      for (let c = 0; c < 2; c++) if (a[c]! > 0) set({ component: COMPONENTS[c]! }, a[c]!);
    };

    counter('tgw_http_requests_total', 'HTTP requests answered, by component and status class (aborted: the client left before a response head)', ['component', 'status_class'], (set) => {
      for (const s of perClass(this.#requests)) set(s.labels, s.value);
    });
    this.registry.registerMetric(
      new ArrayHistogram('tgw_http_request_duration_seconds', 'Time from request head to response end, by component and status class', () => {
        const out = [];
        for (let c = 0; c < 2; c++) {
          for (let k = 0; k < NCLASS; k++) {
            const slot = c * NCLASS + k;
            if (this.#requests[slot]! > 0) out.push({ labels: { component: COMPONENTS[c]!, status_class: STATUS_CLASSES[k]! }, buckets: this.#buckets[slot]!, sum: this.#durationSum[slot]! });
          }
        }
        return out;
      }) as unknown as client.Metric,
    );
    counter('tgw_http_response_bytes_total', 'Response bytes written to clients (heads included)', ['component'], perComponent(this.#bytes));
    counter('tgw_http_incomplete_responses_total', 'Responses that did not complete (client gone, upstream broke mid-body)', ['component'], perComponent(this.#incomplete));
    counter('tgw_upstream_retries_total', 'Requests retried on another replica', ['component'], perComponent(this.#retries));
    counter(
      'tgw_proxy_errors_total',
      'Answers this proxy produced itself, by error code (connect failures: local_proxy_unreachable at the gateway, upstream_refused at a local proxy)',
      ['component', 'error'],
      (set) => {
        for (const [error, a] of this.#errors) for (let c = 0; c < 2; c++) if (a[c]! > 0) set({ component: COMPONENTS[c]!, error }, a[c]!);
      },
    );
    counter(
      'tgw_tenant_http_requests_total',
      'Routed requests by tenant hostname for the busiest tenants (see --metrics-tenants); the rest count under tenant="other"',
      ['component', 'tenant', 'status_class'],
      (set) => {
        const emit = (tenant: string, a: Float64Array) => {
          for (const s of perClass(a)) set({ ...s.labels, tenant }, s.value);
        };
        for (const [tenant, row] of this.#tenants.rows()) emit(tenant, row.counts);
        emit('other', this.#tenants.other());
      },
    );
    gauge('tgw_tenant_series', 'Tenants that currently have their own series', [], (set) => set({}, this.#tenants.rows().size));
    counter('tgw_tenant_series_evictions_total', 'Tenants whose series gave way to a busier tenant', [], (set) => set({}, this.#tenants.evictions));

    gauge('tgw_replica_up', 'Replica health as last checked (1 up, 0 down), for at most 1000 replicas, down ones kept first', ['tenant', 'replica'], (set) => {
      for (const [key, up] of this.#replicas.entries()) {
        const [tenant = '', replica = ''] = key.split('\0');
        set({ tenant, replica }, up ? 1 : 0);
      }
    });
    gauge('tgw_local_proxy_up', "A container host's local proxy health as last checked (1 up, 0 down)", ['host'], (set) => {
      for (const [host, up] of this.#localProxies.entries()) set({ host }, up ? 1 : 0);
    });

    // Registry: connection, staleness of the view, change events, cache.
    const reg = () => this.#routeRegistry;
    gauge('tgw_registry_info', 'The registry backend in use (value 1)', ['backend'], (set) => {
      const r = reg();
      if (r) set({ backend: r.backend.description }, 1);
    });
    gauge('tgw_registry_connected', '1 when the registry backend is connected', [], (set) => {
      const r = reg();
      if (r) set({}, r.backend.status().connected ? 1 : 0);
    });
    gauge('tgw_registry_last_sync_age_seconds', 'Seconds since the registry view was last known to be in sync (absent before the first sync)', [], (set) => {
      const at = reg()?.backend.status().syncedAt;
      if (at !== undefined && at !== null) set({}, (Date.now() - at) / 1000);
    });
    gauge('tgw_registry_stale_seconds', 'How old the routes served are while the registry is disconnected; 0 when connected', [], (set) => {
      const st = reg()?.backend.status();
      if (st) set({}, st.connected || st.syncedAt === null ? 0 : (Date.now() - st.syncedAt) / 1000);
    });
    counter('tgw_registry_change_events_total', 'Change (watch) events received from the registry backend', [], (set) => {
      const r = reg();
      if (r) set({}, r.stats.changes);
    });
    counter('tgw_registry_cache_hits_total', 'Route lookups answered from the cache', [], (set) => {
      const r = reg();
      if (r) set({}, r.stats.hits);
    });
    counter('tgw_registry_cache_misses_total', 'Route lookups that read the backend', [], (set) => {
      const r = reg();
      if (r) set({}, r.stats.misses);
    });
    gauge('tgw_registry_cache_entries', 'Entries in the route cache (bounded to 100,000)', [], (set) => {
      const r = reg();
      if (r) set({}, r.cacheSize());
    });

    // DNS (only where this process serves DNS).
    counter('tgw_dns_queries_total', 'DNS messages received', [], (set) => {
      if (this.#dns) set({}, this.#dns.queries);
    });
    counter('tgw_dns_responses_total', 'DNS responses sent, by rcode', ['rcode'], (set) => {
      for (const [rcode, n] of boundedEntries(this.#dns?.byRcode)) set({ rcode }, n);
    });
    counter('tgw_dns_rate_limited_total', 'DNS queries over UDP dropped by the per-source rate limit', [], (set) => {
      if (this.#dns?.rateLimited !== undefined) set({}, this.#dns.rateLimited);
    });
    counter('tgw_dns_queries_by_type_total', 'DNS queries answered, by question type', ['qtype'], (set) => {
      for (const [qtype, n] of boundedEntries(this.#dns?.byQtype)) set({ qtype }, n);
    });

    counter('tgw_access_log_lines_total', 'Access log lines handed to the writer', [], (set) => {
      if (this.#accessLog) set({}, this.#accessLog.lines);
    });
    counter('tgw_access_log_dropped_total', 'Access log lines dropped because the writer was more than its buffer behind', [], (set) => {
      if (this.#accessLog) set({}, this.#accessLog.dropped);
    });
  }
}

/** At most 64 label values from a counter map another module fills. */
function* boundedEntries(map: Record<string, number> | undefined): Generator<[string, number]> {
  if (map === undefined) return;
  let n = 0;
  for (const entry of Object.entries(map)) {
    if (++n > 64) return;
    yield entry;
  }
}
