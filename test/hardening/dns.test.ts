/**
 * The DNS server against hostile packets: malformed input never stops it (dropped or FORMERR),
 * EDNS per RFC 6891/8906, TC=1 over UDP and the full answer over TCP, ANY minimal (RFC 8482),
 * NOTIMP for other opcodes, a per-source rate limit, and a fast-check fuzz of the decoder.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { answer, buildDnsView } from '../../dns/answer.js';
import { startDnsServer, type DnsServer } from '../../dns/server.js';
import { encodeResponse, parseQuery, TCP_LIMIT, UDP_CLASSIC_LIMIT } from '../../dns/wire.js';
import { buildQuery, headerOf, TcpClient, TYPE, UdpClient } from '../support/dns-client.js';
import { waitFor } from '../support/util.js';

const GATEWAYS = Array.from({ length: 60 }, (_, i) => ({ ip: `10.0.${i >> 8}.${(i & 0xff) + 1}` }));

/** Header with id, then the question bytes of `name` A IN. */
function withHeader(id: number, flags: number, counts: [number, number, number, number], rest: Buffer): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(id, 0);
  h.writeUInt16BE(flags, 2);
  counts.forEach((c, i) => h.writeUInt16BE(c, 4 + i * 2));
  return Buffer.concat([h, rest]);
}
const question = (name: string) =>
  Buffer.concat([...name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')])), Buffer.from([0, 0, 1, 0, 1])]);

describe('hardening: DNS', () => {
  let dns: DnsServer;
  let client: UdpClient;

  before(async () => {
    dns = await startDnsServer({ domain: 'test.priv', host: '127.0.0.1', port: 0, gateways: () => GATEWAYS });
    client = await UdpClient.open(dns.port);
  });
  after(async () => {
    await client?.close();
    await dns?.close();
  });

  /** Sends `bad`, then a good query; returns what came back for `bad` (everything before the good reply). */
  async function probe(bad: Buffer): Promise<Buffer[]> {
    client.send(bad);
    const good = buildQuery('probe.test.priv', { id: 0xbeef });
    client.send(good);
    const { reply, before } = await client.until(0xbeef);
    assert.equal(headerOf(reply).rcode, 0, 'the server still answers');
    return before;
  }

  it('dropped without an answer: empty, shorter than a header, QR=1 (a response)', async () => {
    for (const bad of [Buffer.alloc(0), Buffer.from([1, 2, 3, 4, 5]), withHeader(7, 0x8000, [1, 0, 0, 0], question('a.test.priv'))]) {
      assert.deepEqual(await probe(bad), [], bad.toString('hex'));
    }
  });

  it('FORMERR: no question, two questions, truncated question, compression pointer loop, label > 63, name > 255', async () => {
    const longName = Array.from({ length: 5 }, () => 'a'.repeat(60)).join('.');
    const cases: [string, Buffer][] = [
      ['qdcount 0', withHeader(11, 0, [0, 0, 0, 0], Buffer.alloc(0))],
      ['qdcount 2', withHeader(12, 0, [2, 0, 0, 0], Buffer.concat([question('a.test.priv'), question('b.test.priv')]))],
      ['truncated question', withHeader(13, 0, [1, 0, 0, 0], question('a.test.priv').subarray(0, 8))],
      ['pointer loop', withHeader(14, 0, [1, 0, 0, 0], Buffer.from([0xc0, 12, 0, 1, 0, 1]))],
      ['label of 64', withHeader(15, 0, [1, 0, 0, 0], Buffer.concat([Buffer.from([64]), Buffer.alloc(64, 0x61), question('test.priv')]))],
      ['name over 255', withHeader(16, 0, [1, 0, 0, 0], question(`${longName}.test.priv`))],
      ['arcount past the end', withHeader(17, 0, [1, 0, 0, 3], question('a.test.priv'))],
    ];
    for (const [what, bad] of cases) {
      const replies = await probe(bad);
      assert.equal(replies.length, 1, what);
      assert.equal(headerOf(replies[0]!).rcode, 1, `${what}: FORMERR`);
    }
  });

  it('oversized garbage (4 KB) and 300 random packets do not stop it', async () => {
    await probe(Buffer.alloc(4096, 0xff));
    const rnd = fc.sample(fc.uint8Array({ minLength: 0, maxLength: 600 }), { numRuns: 300, seed: 8 });
    for (const p of rnd) client.send(Buffer.from(p));
    await probe(Buffer.alloc(0));
  });

  it('EDNS: OPT echoed with our payload size; version 1 -> BADVERS; unknown options ignored', async () => {
    const r = await client.exchange(buildQuery('a.test.priv', { id: 21, edns: { udpSize: 4096 } }));
    const h = headerOf(r);
    assert.equal(h.rcode, 0);
    assert.equal(h.arcount, 1);
    const opt = r.subarray(r.length - 11);
    assert.equal(opt.readUInt16BE(1), TYPE.OPT);
    assert.equal(opt.readUInt16BE(3), 1232);

    const v1 = await client.exchange(buildQuery('a.test.priv', { id: 22, edns: { version: 1 } }));
    assert.equal(headerOf(v1).rcode, 0, 'BADVERS lives in the OPT extended rcode');
    assert.equal(headerOf(v1).ancount, 0);
    assert.equal(v1.readUInt8(v1.length - 11 + 5), 1, 'extended rcode 1 (<<4) = BADVERS 16');

    // An OPT carrying an unknown option (code 65001) and unknown flag bits.
    const q = buildQuery('a.test.priv', { id: 23, edns: {} });
    const withOption = Buffer.concat([q.subarray(0, q.length - 2), Buffer.from([0, 8, 0xfd, 0xe9, 0, 4, 1, 2, 3, 4])]);
    withOption.writeUInt16BE(0x7fff, withOption.length - 10 - 4); // Z flags all set
    const r3 = await client.exchange(withOption);
    assert.equal(headerOf(r3).rcode, 0);
    assert.equal(headerOf(r3).ancount, GATEWAYS.length > 0 ? headerOf(r3).ancount : 0);
    assert.equal(r3.readUInt16BE(r3.length - 2), 0, 'no options echoed');
  });

  it('TC=1 over UDP when the answer does not fit 512 bytes; the whole answer over TCP', async () => {
    const udp = await client.exchange(buildQuery('big.test.priv', { id: 31 }));
    assert.equal(headerOf(udp).tc, 1);
    assert.equal(headerOf(udp).ancount, 0);
    assert.ok(udp.length <= UDP_CLASSIC_LIMIT);
    const tcp = await TcpClient.connect(dns.port);
    try {
      tcp.write(TcpClient.frame(buildQuery('big.test.priv', { id: 32 })));
      const full = await tcp.read();
      assert.equal(headerOf(full).tc, 0);
      assert.equal(headerOf(full).ancount, GATEWAYS.length);
    } finally {
      tcp.close();
    }
  });

  it('ANY gets one RRset (RFC 8482), not everything', async () => {
    const tcp = await TcpClient.connect(dns.port);
    try {
      tcp.write(TcpClient.frame(buildQuery('test.priv', { id: 41, type: TYPE.ANY })));
      const r = await tcp.read();
      assert.equal(headerOf(r).rcode, 0);
      assert.equal(headerOf(r).ancount, GATEWAYS.length, 'only the A RRset (no SOA, NS)');
    } finally {
      tcp.close();
    }
  });

  it('opcodes other than QUERY -> NOTIMP', async () => {
    for (const opcode of [1, 2, 4, 5, 15]) {
      const r = await client.exchange(buildQuery('a.test.priv', { id: 50 + opcode, opcode }));
      assert.equal(headerOf(r).rcode, 4, `opcode ${opcode}`);
    }
  });

  it('a source over the rate limit (50/s) is dropped, and answered again once its bucket refills', async () => {
    const limitedDns = await startDnsServer({ domain: 'test.priv', host: '127.0.0.1', port: 0, gateways: () => GATEWAYS, rateLimit: 50 });
    const flood = await UdpClient.open(limitedDns.port);
    try {
      // A burst from one source: at most the bucket (50) plus the refill during the burst get answers.
      for (let i = 0; i < 300; i++) flood.send(buildQuery('f.test.priv', { id: 1000 + i }));
      await waitFor(() => limitedDns.stats.rateLimited >= 200, 'queries dropped by the rate limit', 5_000);
      assert.ok(limitedDns.stats.queries - limitedDns.stats.rateLimited <= 100, JSON.stringify(limitedDns.stats));
      let id = 2000;
      await waitFor(
        async () => {
          const q = buildQuery('o.test.priv', { id: ++id });
          flood.send(q);
          return headerOf((await flood.until(id, 200)).reply).rcode === 0;
        },
        'an answer after the refill',
        5_000,
      );
    } finally {
      await flood.close();
      await limitedDns.close();
    }
  });

  it('loopback can be exempt from the rate limit', async () => {
    const exempt = await startDnsServer({ domain: 'test.priv', host: '127.0.0.1', port: 0, gateways: () => GATEWAYS, rateLimit: 1, rateLimitExempt: (a) => a.startsWith('127.') });
    const c = await UdpClient.open(exempt.port);
    try {
      for (let i = 0; i < 20; i++) assert.equal(headerOf(await c.exchange(buildQuery('e.test.priv', { id: 3000 + i }))).rcode, 0);
      assert.equal(exempt.stats.rateLimited, 0);
    } finally {
      await c.close();
      await exempt.close();
    }
  });

  it('fuzz (fast-check): the decoder and encoder never throw, on random bytes and on mutated queries', () => {
    const view = buildDnsView({ domain: 'test.priv', gateways: GATEWAYS, ttl: 5, serial: 1 });
    const check = (bytes: Uint8Array) => {
      const q = parseQuery(bytes);
      if (q === undefined) return;
      const res = answer(q, view);
      for (const limit of [UDP_CLASSIC_LIMIT, 1232, TCP_LIMIT]) {
        const out = encodeResponse(res, limit);
        assert.ok(out.length <= limit);
        assert.equal(out.readUInt16BE(0), q.id);
      }
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 700 }), check), { numRuns: 5_000, seed: 42 });
    const seeds = [buildQuery('a.b.test.priv'), buildQuery('x.test.priv', { edns: { udpSize: 4096, do: true } }), buildQuery('test.priv', { type: TYPE.ANY })];
    const mutated = fc
      .tuple(fc.constantFrom(...seeds), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), fc.nat({ max: 40 }))
      .map(([seed, edits, cut]) => {
        const b = Buffer.from(seed);
        for (const [at, v] of edits) b[at % b.length] = v;
        return b.subarray(0, Math.max(0, b.length - cut));
      });
    fc.assert(fc.property(mutated, check), { numRuns: 5_000, seed: 43 });
  });
});
