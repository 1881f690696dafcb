/**
 * Balancing algorithms over a tenant's replicas. Pure: no sockets, no timers; table-tested
 * in test/balancer.test.ts. Callers pass only the replicas that may take a request.
 */

export interface Weighted {
  readonly id: string;
  readonly weight: number;
  /** Requests in flight (least connections). */
  inflight: number;
  /** Smooth weighted round robin's running score. */
  current: number;
}

/**
 * nginx's smooth weighted round robin: over any window of sum(weights) picks, each replica
 * is chosen exactly `weight` times, interleaved rather than in bursts.
 */
export function pickRoundRobin<T extends Weighted>(candidates: readonly T[]): T | undefined {
  let best: T | undefined;
  let total = 0;
  for (const c of candidates) {
    c.current += c.weight;
    total += c.weight;
    if (best === undefined || c.current > best.current) best = c;
  }
  if (best !== undefined) best.current -= total;
  return best;
}

/** Fewest in-flight requests per unit of weight; ties go round robin. */
export function pickLeastConn<T extends Weighted>(candidates: readonly T[]): T | undefined {
  let best: T[] = [];
  let bestScore = Infinity;
  for (const c of candidates) {
    const score = c.inflight / c.weight;
    if (score < bestScore) {
      bestScore = score;
      best = [c];
    } else if (score === bestScore) {
      best.push(c);
    }
  }
  return pickRoundRobin(best);
}

/** 32-bit FNV-1a, finished with murmur3's avalanche so nearby keys spread over the ring. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Points per unit of weight: enough for an even spread with a handful of replicas. */
const POINTS_PER_WEIGHT = 64;

/**
 * Consistent hashing (a ketama-style ring): adding or removing a replica moves only the keys
 * that land on its points, about 1/n of them. The ring holds every replica; a key whose
 * replica cannot take requests walks on to the next point of a replica that can.
 */
export class HashRing<T extends { readonly id: string; readonly weight: number }> {
  readonly #points: Uint32Array;
  readonly #owners: T[];

  constructor(replicas: readonly T[]) {
    const entries: [number, T][] = [];
    for (const r of replicas) {
      for (let i = 0; i < r.weight * POINTS_PER_WEIGHT; i++) entries.push([hash32(`${r.id}#${i}`), r]);
    }
    entries.sort((a, b) => a[0] - b[0]);
    this.#points = Uint32Array.from(entries, (e) => e[0]);
    this.#owners = entries.map((e) => e[1]);
  }

  /** The replica owning `key`, skipping those `usable` refuses; undefined when none is usable. */
  pick(key: string, usable: (r: T) => boolean): T | undefined {
    const n = this.#points.length;
    if (n === 0) return undefined;
    const h = hash32(key);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#points[mid] as number) < h) lo = mid + 1;
      else hi = mid;
    }
    const seen = new Set<T>();
    for (let i = 0; i < n; i++) {
      const owner = this.#owners[(lo + i) % n] as T;
      if (seen.has(owner)) continue;
      if (usable(owner)) return owner;
      seen.add(owner);
    }
    return undefined;
  }
}
