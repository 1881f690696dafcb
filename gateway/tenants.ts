/**
 * Per-tenant traffic state at the gateway: replicas with their in-flight counts and health,
 * the balancer, stickiness, the hold queue for moves, and active health checks.
 *
 * One TenantState per tenant that has seen traffic, in a bounded LRU; rebuilt when the
 * tenant's registry record changes, keeping the state of replicas that remain (so in-flight
 * counts and ejections survive a re-registration).
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { LRUCache } from 'lru-cache';
import type { Address, TenantRecord } from '../discovery/records.js';
import { HashRing, pickLeastConn, pickRoundRobin, type Weighted } from './balancer.js';

export const TENANT_DEFAULTS = {
  balance: 'round-robin',
  stickyCookie: 'tgw_route',
  healthCheck: { path: '/', interval: 5, timeout: 2, rise: 2, fall: 3 },
  passive: { failures: 3, cooldown: 10 },
  retries: { attempts: 3, deadline: 10 },
  hold: { timeout: 5, queue: 100 },
  maxConn: 0,
  maxQueue: 100,
} as const;

export type { Outcome } from './proxy-server.js';
import type { Outcome } from './proxy-server.js';

export class Replica implements Weighted {
  readonly id: string;
  readonly host: string;
  readonly container: string;
  weight: number;
  inflight = 0;
  current = 0;
  readonly #tenant: string;
  #cookie: string | undefined;
  consecutiveFailures = 0;
  /** Passive check: no new requests before this (ms since epoch). */
  ejectedUntil = 0;
  /** Active check verdict; true until checks say otherwise. */
  activeUp = true;
  activeStreak = 0;
  lastCheck: { at: number; result: string } | undefined;

  constructor(tenant: string, host: string, container: string, weight: number) {
    this.id = `${host}/${container}`;
    this.host = host;
    this.container = container;
    this.weight = weight;
    this.#tenant = tenant;
  }

  /** Sticky cookie value: a digest, so the cookie reveals nothing about the layout. Computed on first use. */
  get cookie(): string {
    this.#cookie ??= createHash('sha256').update(`${this.#tenant}\0${this.id}`).digest('base64url').slice(0, 16);
    return this.#cookie;
  }

  healthy(now: number): boolean {
    return this.activeUp && now >= this.ejectedUntil;
  }

  describe(now: number) {
    return {
      host: this.host,
      container: this.container,
      weight: this.weight,
      healthy: this.healthy(now),
      active: this.lastCheck === undefined ? 'unchecked' : this.activeUp ? 'up' : 'down',
      lastCheck: this.lastCheck === undefined ? null : { ...this.lastCheck, at: new Date(this.lastCheck.at).toISOString() },
      ejectedForMs: Math.max(0, this.ejectedUntil - now),
      consecutiveFailures: this.consecutiveFailures,
      inflight: this.inflight,
    };
  }
}

export interface Settings {
  balance: 'round-robin' | 'least-conn' | 'ip-hash' | 'hash';
  hashKey: string | undefined;
  sticky: { cookie: string; maxAge: number | undefined } | undefined;
  healthCheck: { path: string; intervalMs: number; timeoutMs: number; rise: number; fall: number } | undefined;
  passive: { failures: number; cooldownMs: number };
  retries: { attempts: number; deadlineMs: number };
  hold: { timeoutMs: number; queue: number };
  maxConn: number;
  maxQueue: number;
}

export function settingsOf(rec: TenantRecord): Settings {
  const d = TENANT_DEFAULTS;
  const hc = rec.healthCheck;
  return {
    balance: rec.balance ?? d.balance,
    hashKey: rec.hashKey,
    sticky: rec.sticky === undefined ? undefined : { cookie: rec.sticky.cookie ?? d.stickyCookie, maxAge: rec.sticky.maxAge },
    healthCheck:
      hc === undefined
        ? undefined
        : {
            path: hc.path ?? d.healthCheck.path,
            intervalMs: (hc.interval ?? d.healthCheck.interval) * 1000,
            timeoutMs: (hc.timeout ?? d.healthCheck.timeout) * 1000,
            rise: hc.rise ?? d.healthCheck.rise,
            fall: hc.fall ?? d.healthCheck.fall,
          },
    passive: { failures: rec.passive?.failures ?? d.passive.failures, cooldownMs: (rec.passive?.cooldown ?? d.passive.cooldown) * 1000 },
    retries: { attempts: rec.retries?.attempts ?? d.retries.attempts, deadlineMs: (rec.retries?.deadline ?? d.retries.deadline) * 1000 },
    hold: { timeoutMs: (rec.hold?.timeout ?? d.hold.timeout) * 1000, queue: rec.hold?.queue ?? d.hold.queue },
    maxConn: rec.maxConn ?? d.maxConn,
    maxQueue: rec.maxQueue ?? d.maxQueue,
  };
}

/** Told when an active check changes a replica's verdict (metrics). */
export type HealthListener = (tenant: string, replica: string, up: boolean) => void;

/** Runs one active check; resolves with a short result ("200", "timeout", "refused") and whether it passed. */
export type Probe = (tenant: string, replica: Replica, check: NonNullable<Settings['healthCheck']>) => Promise<{ ok: boolean; result: string }>;

export class TenantState {
  readonly name: string;
  record: TenantRecord;
  settings: Settings;
  replicas: Replica[];
  #ring: HashRing<Replica> | undefined;
  /** Woken by any registry or health change: held requests and maxConn waiters re-resolve. */
  #waiters = new Set<() => void>();
  #timer: NodeJS.Timeout | undefined;

  constructor(name: string, record: TenantRecord, previous?: TenantState) {
    this.name = name;
    this.record = record;
    this.settings = settingsOf(record);
    const old = new Map(previous?.replicas.map((r) => [r.id, r]));
    this.replicas = record.targets.map((t) => {
      const r = old.get(`${t.host}/${t.container}`) ?? new Replica(name, t.host, t.container, t.weight ?? 1);
      r.weight = t.weight ?? 1;
      return r;
    });
    if (this.settings.balance === 'hash' || this.settings.balance === 'ip-hash') this.#ring = new HashRing(this.replicas);
    if (previous) for (const w of previous.takeWaiters()) this.#waiters.add(w);
  }

  /**
   * Picks a replica among those `usable` allows (healthy, not tried yet, below maxConn):
   * the sticky one when the cookie names one, else by the tenant's balancing method.
   */
  pick(req: IncomingMessage, usable: (r: Replica) => boolean, clientIp: string): Replica | undefined {
    const s = this.settings;
    if (s.sticky !== undefined) {
      const value = cookieValue(req.headers.cookie, s.sticky.cookie);
      if (value !== undefined) {
        const r = this.replicas.find((x) => x.cookie === value);
        if (r !== undefined && usable(r)) return r;
      }
    }
    if (this.#ring !== undefined) {
      const key = s.balance === 'ip-hash' ? clientIp : hashKeyOf(req, s.hashKey ?? 'path');
      return this.#ring.pick(key, usable);
    }
    const candidates = this.replicas.filter(usable);
    return s.balance === 'least-conn' ? pickLeastConn(candidates) : pickRoundRobin(candidates);
  }

  /** Records the end of a request on `r`; passive checks eject after consecutive failures. */
  release(r: Replica, outcome: Outcome, now: number): void {
    r.inflight--;
    const { failures, cooldownMs } = this.settings.passive;
    if (outcome === 'ok') {
      r.consecutiveFailures = 0;
    } else if (outcome === 'connect' || outcome === '5xx' || outcome === 'timeout' || outcome === 'broken') {
      r.consecutiveFailures++;
      if (failures > 0 && r.consecutiveFailures >= failures) {
        r.ejectedUntil = now + cooldownMs;
        r.consecutiveFailures = 0;
        // Wake waiters when the cooldown ends: the replica may take requests again.
        setTimeout(() => this.wake(), cooldownMs + 1).unref();
      }
    }
    this.wake();
  }

  /** Resolves on the next change that may make a replica usable, or `false` at the deadline. */
  waitForChange(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (changed: boolean) => {
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve(changed);
      };
      const wake = () => done(true);
      const timer = setTimeout(() => done(false), Math.max(0, timeoutMs));
      this.#waiters.add(wake);
    });
  }

  get waiting(): number {
    return this.#waiters.size;
  }

  wake(): void {
    const ws = this.takeWaiters();
    for (const w of ws) w();
  }

  takeWaiters(): (() => void)[] {
    const ws = [...this.#waiters];
    this.#waiters.clear();
    return ws;
  }

  #onHealth: HealthListener | undefined;

  /** Starts (or restarts) active checks when the tenant has them configured. */
  startChecks(probe: Probe, onHealth?: HealthListener): void {
    this.#onHealth = onHealth;
    this.stopChecks();
    const hc = this.settings.healthCheck;
    if (hc === undefined) return;
    const run = () => {
      for (const r of this.replicas) {
        probe(this.name, r, hc).then(
          ({ ok, result }) => this.#checked(r, ok, result, hc),
          (err: Error) => this.#checked(r, false, err.message, hc),
        );
      }
    };
    this.#timer = setInterval(run, hc.intervalMs);
    this.#timer.unref();
    run();
  }

  stopChecks(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #checked(r: Replica, ok: boolean, result: string, hc: NonNullable<Settings['healthCheck']>): void {
    r.lastCheck = { at: Date.now(), result };
    // The streak counts consecutive results that disagree with the current verdict.
    if (ok === r.activeUp) {
      r.activeStreak = 0;
      return;
    }
    r.activeStreak++;
    if (r.activeStreak >= (ok ? hc.rise : hc.fall)) {
      r.activeUp = ok;
      r.activeStreak = 0;
      if (ok) r.ejectedUntil = 0;
      this.#onHealth?.(this.name, r.id, ok);
      this.wake();
    }
  }

  describe(now: number) {
    return {
      balance: this.settings.balance,
      sticky: this.settings.sticky?.cookie ?? null,
      healthChecks: this.settings.healthCheck !== undefined,
      held: this.#waiters.size,
      replicas: this.replicas.map((r) => r.describe(now)),
    };
  }
}

/** Bounded table of tenant states; a state whose checks run is stopped when it is evicted. */
export class TenantTable {
  readonly #states: LRUCache<string, TenantState>;
  readonly #probe: Probe;
  readonly #onHealth: HealthListener | undefined;

  constructor(probe: Probe, max = 100_000, onHealth?: HealthListener) {
    this.#probe = probe;
    this.#onHealth = onHealth;
    this.#states = new LRUCache<string, TenantState>({
      max,
      dispose: (state, _key, reason) => {
        if (reason !== 'set') state.stopChecks();
        state.wake();
      },
    });
  }

  /** The state for `name` as of `record`; rebuilt when the record object changed. */
  get(name: string, record: TenantRecord): TenantState {
    const state = this.#states.get(name);
    if (state !== undefined && state.record === record) return state;
    if (state !== undefined) state.stopChecks();
    const next = new TenantState(name, record, state);
    this.#states.set(name, next);
    next.startChecks(this.#probe, this.#onHealth);
    if (state !== undefined) next.wake();
    return next;
  }

  peek(name: string): TenantState | undefined {
    return this.#states.peek(name);
  }

  /** A registry change: every held request re-resolves (cheap: only states with waiters act). */
  wakeAll(): void {
    for (const s of this.#states.values()) if (s.waiting > 0) s.wake();
  }

  close(): void {
    for (const s of this.#states.values()) s.stopChecks();
    this.#states.clear();
  }
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function hashKeyOf(req: IncomingMessage, key: string): string {
  if (key === 'path') {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    return q === -1 ? url : url.slice(0, q);
  }
  if (key.startsWith('header:')) {
    const v = req.headers[key.slice(7).toLowerCase()];
    return Array.isArray(v) ? v.join(',') : (v ?? '');
  }
  return cookieValue(req.headers.cookie, key.slice(7)) ?? '';
}

export function stickyCookie(state: TenantState, r: Replica): string | undefined {
  const s = state.settings.sticky;
  if (s === undefined) return undefined;
  return `${s.cookie}=${r.cookie}; Path=/; HttpOnly; SameSite=Lax${s.maxAge !== undefined ? `; Max-Age=${s.maxAge}` : ''}`;
}

export type { Address };
