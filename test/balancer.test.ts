import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HashRing, pickLeastConn, pickRoundRobin } from '../gateway/balancer.js';

const replicas = (...weights: number[]) => weights.map((weight, i) => ({ id: `r${i}`, weight, inflight: 0, current: 0 }));

describe('smooth weighted round robin', () => {
  it('picks each replica `weight` times per cycle, interleaved (nginx order)', () => {
    const rs = replicas(5, 1, 1);
    const seq = Array.from({ length: 7 }, () => pickRoundRobin(rs)?.id);
    assert.deepEqual(seq, ['r0', 'r0', 'r1', 'r0', 'r2', 'r0', 'r0']);
  });
  it('equal weights alternate', () => {
    const rs = replicas(1, 1, 1);
    assert.deepEqual(Array.from({ length: 6 }, () => pickRoundRobin(rs)?.id), ['r0', 'r1', 'r2', 'r0', 'r1', 'r2']);
  });
  it('no candidates -> undefined', () => assert.equal(pickRoundRobin([]), undefined));
});

describe('least connections', () => {
  it('prefers the fewest in flight per weight, ties round robin', () => {
    const rs = replicas(1, 2, 1);
    rs[0]!.inflight = 2;
    rs[1]!.inflight = 2; // 1 per unit of weight
    rs[2]!.inflight = 1;
    assert.equal(pickLeastConn(rs)?.id, 'r1');
    rs[1]!.inflight = 4;
    assert.equal(pickLeastConn(rs)?.id, 'r2');
  });
});

describe('consistent hash ring', () => {
  const keys = Array.from({ length: 20_000 }, (_, i) => `user-${i}`);
  const owners = (ring: HashRing<{ id: string; weight: number }>) => keys.map((k) => ring.pick(k, () => true)?.id);

  it('spreads keys evenly', () => {
    const counts = new Map<string, number>();
    for (const o of owners(new HashRing(replicas(1, 1, 1)))) counts.set(o ?? '', (counts.get(o ?? '') ?? 0) + 1);
    for (const [, n] of counts) assert.ok(n > keys.length * 0.25 && n < keys.length * 0.42, `uneven: ${[...counts]}`);
  });

  it('weights scale the share', () => {
    const counts = new Map<string, number>();
    for (const o of owners(new HashRing(replicas(3, 1)))) counts.set(o ?? '', (counts.get(o ?? '') ?? 0) + 1);
    const share = (counts.get('r0') ?? 0) / keys.length;
    assert.ok(share > 0.65 && share < 0.85, `r0 share ${share}`);
  });

  it('adding a replica moves only about 1/n of the keys, all to the new one', () => {
    const before = owners(new HashRing(replicas(1, 1, 1)));
    const after = owners(new HashRing(replicas(1, 1, 1, 1)));
    let moved = 0;
    for (let i = 0; i < keys.length; i++) {
      if (before[i] !== after[i]) {
        moved++;
        assert.equal(after[i], 'r3', 'a key moved between old replicas');
      }
    }
    assert.ok(moved / keys.length < 0.35 && moved / keys.length > 0.15, `moved ${moved / keys.length}`);
  });

  it('an unusable replica sends its keys to the next one; others keep theirs', () => {
    const ring = new HashRing(replicas(1, 1, 1));
    const before = owners(ring);
    const after = keys.map((k) => ring.pick(k, (r) => r.id !== 'r1')?.id);
    for (let i = 0; i < keys.length; i++) {
      if (before[i] !== 'r1') assert.equal(after[i], before[i]);
      else assert.notEqual(after[i], 'r1');
    }
    assert.equal(ring.pick('x', () => false), undefined);
  });
});
