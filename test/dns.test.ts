import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { GatewayRecord } from '../discovery/records.js';
import { answer, buildDnsView, EDNS_UDP_SIZE, type DnsView } from '../dns/answer.js';
import { startDnsServer, type DnsServer, type DnsServerOptions } from '../dns/server.js';
import {
  encodeResponse,
  ipv6Bytes,
  parseQuery,
  rcodeName,
  type DnsQuery,
  type DnsResponse,
  type ResourceRecord,
} from '../dns/wire.js';
import { buildQuery, decode, headerOf, TcpClient, tcpExchange, TYPE, UdpClient, udpExchange } from './support/dns-client.js';

const ZONE = 'test.priv';
const V4 = [{ ip: '203.0.113.7' }, { ip: '203.0.113.8' }];
const V6 = [{ ip: '2001:db8::1' }];

function view(gateways: readonly GatewayRecord[]): DnsView {
  return buildDnsView({ domain: ZONE, gateways, ttl: 5, serial: 42 });
}

function query(name: string, type: number, more: Partial<DnsQuery> = {}): DnsQuery {
  return {
    id: 7,
    opcode: 0,
    rd: true,
    cd: false,
    question: { labels: name === '' ? [] : name.split('.'), type, class: 1 },
    edns: undefined,
    malformed: false,
    ...more,
  };
}

/** dig-like one-liners, so a table row reads like the answer it expects. */
function show(rr: ResourceRecord): string {
  const d = rr.data;
  switch (d.kind) {
    case 'A':
    case 'AAAA':
      return `${rr.owner} ${d.kind} ${d.address}`;
    case 'NS':
      return `${rr.owner} NS ${d.host}`;
    case 'SOA':
      return `${rr.owner} SOA ${d.mname} ${d.rname}`;
    case 'HINFO':
      return `${rr.owner} HINFO ${d.cpu}`;
  }
}

function summary(res: DnsResponse) {
  return {
    rcode: rcodeName(res.rcode),
    aa: res.aa,
    answers: res.answers.map(show),
    authority: res.authority.map(show),
  };
}

const SOA = ['apex SOA ns.test.priv hostmaster.test.priv'];
const NODATA = { rcode: 'NOERROR', aa: true, answers: [], authority: SOA };
const REFUSED = { rcode: 'REFUSED', aa: false, answers: [], authority: [] };
const A_BOTH = ['qname A 203.0.113.7', 'qname A 203.0.113.8'];

describe('answer(query, view): the pure answer table', () => {
  const rows: Array<[string, DnsQuery, readonly GatewayRecord[], ReturnType<typeof summary>]> = [
    ['A at the apex', query('test.priv', TYPE.A), V4, { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['A one level down', query('acme.test.priv', TYPE.A), V4, { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['A any depth', query('a.b.c.d.test.priv', TYPE.A), V4, { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['A with underscores', query('wordpress_c001_01.test.priv', TYPE.A), V4, { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['A, mixed case', query('WordPress_C001_01.TEST.Priv', TYPE.A), V4, { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['A for the NS host', query('ns.test.priv', TYPE.A), V4, { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['A, only IPv6 gateways: NODATA', query('x.test.priv', TYPE.A), V6, NODATA],
    ['A, no gateways: NODATA, not SERVFAIL', query('x.test.priv', TYPE.A), [], NODATA],
    ['AAAA', query('x.test.priv', TYPE.AAAA), [...V4, ...V6], { rcode: 'NOERROR', aa: true, answers: ['qname AAAA 2001:db8::1'], authority: [] }],
    ['AAAA, only IPv4 gateways: NODATA', query('x.test.priv', TYPE.AAAA), V4, NODATA],
    ['duplicate gateway IPs answered once', query('x.test.priv', TYPE.A), [...V4, ...V4], { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['SOA at the apex', query('test.priv', TYPE.SOA), V4, { rcode: 'NOERROR', aa: true, answers: SOA, authority: [] }],
    ['SOA below the apex: NODATA', query('x.test.priv', TYPE.SOA), V4, NODATA],
    ['NS at the apex', query('TEST.PRIV', TYPE.NS), V4, { rcode: 'NOERROR', aa: true, answers: ['apex NS ns.test.priv'], authority: [] }],
    ['NS below the apex: NODATA', query('x.test.priv', TYPE.NS), V4, NODATA],
    ['TXT: NODATA', query('x.test.priv', TYPE.TXT), V4, NODATA],
    ['MX: NODATA', query('test.priv', TYPE.MX), V4, NODATA],
    ['ANY: the A RRset only (RFC 8482)', query('x.test.priv', TYPE.ANY), [...V4, ...V6], { rcode: 'NOERROR', aa: true, answers: A_BOTH, authority: [] }],
    ['ANY, IPv6 only: the AAAA RRset', query('x.test.priv', TYPE.ANY), V6, { rcode: 'NOERROR', aa: true, answers: ['qname AAAA 2001:db8::1'], authority: [] }],
    ['ANY, no gateways: HINFO RFC8482', query('x.test.priv', TYPE.ANY), [], { rcode: 'NOERROR', aa: true, answers: ['qname HINFO RFC8482'], authority: [] }],
    ['out of zone', query('example.com', TYPE.A), V4, REFUSED],
    ['the parent of the zone', query('priv', TYPE.A), V4, REFUSED],
    ['the root', query('', TYPE.NS), V4, REFUSED],
    ['a suffix that is not a label boundary', query('xtest.priv', TYPE.A), V4, REFUSED],
    ['the zone as a prefix', query('test.priv.evil.example', TYPE.A), V4, REFUSED],
    ['a label containing a dot', query('x.test.priv', TYPE.A, { question: { labels: ['x.test', 'priv'], type: TYPE.A, class: 1 } }), V4, REFUSED],
    ['class CH', query('test.priv', TYPE.A, { question: { labels: ['test', 'priv'], type: TYPE.A, class: 3 } }), V4, REFUSED],
    ['AXFR', query('test.priv', TYPE.AXFR), V4, REFUSED],
    ['opcode NOTIFY', query('test.priv', TYPE.SOA, { opcode: 4 }), V4, { rcode: 'NOTIMP', aa: false, answers: [], authority: [] }],
    ['opcode STATUS', query('test.priv', TYPE.A, { opcode: 2 }), V4, { rcode: 'NOTIMP', aa: false, answers: [], authority: [] }],
    ['malformed', query('test.priv', TYPE.A, { malformed: true, question: undefined }), V4, { rcode: 'FORMERR', aa: false, answers: [], authority: [] }],
    ['qtype OPT', query('test.priv', TYPE.OPT), V4, { rcode: 'FORMERR', aa: false, answers: [], authority: [] }],
    ['EDNS version 1', query('test.priv', TYPE.A, { edns: { udpSize: 1232, version: 1, do: false } }), V4, { rcode: 'BADVERS', aa: false, answers: [], authority: [] }],
  ];
  for (const [name, q, gateways, expected] of rows) {
    test(name, () => assert.deepEqual(summary(answer(q, view(gateways))), expected));
  }

  test('flags: RD copied, question echoed as asked, OPT only when asked for', () => {
    const q = query('MiXeD.Test.Priv', TYPE.A, { rd: false });
    const res = answer(q, view(V4));
    assert.equal(res.rd, false);
    assert.deepEqual(res.question?.labels, ['MiXeD', 'Test', 'Priv']);
    assert.equal(res.edns, undefined);
    const withOpt = answer(query('x.test.priv', TYPE.A, { edns: { udpSize: 4096, version: 0, do: true } }), view(V4));
    assert.deepEqual(withOpt.edns, { udpSize: EDNS_UDP_SIZE, do: true });
    const badvers = answer(query('x.test.priv', TYPE.A, { edns: { udpSize: 512, version: 3, do: false } }), view(V4));
    assert.ok(badvers.edns, 'BADVERS needs an OPT to carry the extended rcode');
  });

  test('the zone name is validated and normalized', () => {
    assert.equal(buildDnsView({ domain: 'Test.Priv.', gateways: [], ttl: 5, serial: 1 }).domain, 'test.priv');
    for (const bad of ['', '.', 'a..b', `${'x'.repeat(64)}.priv`, 'bad name.priv']) {
      assert.throws(() => buildDnsView({ domain: bad, gateways: [], ttl: 5, serial: 1 }), /is not a zone name/, bad);
    }
  });
});

describe('parseQuery: strict decoding', () => {
  const ok = buildQuery('a.test.priv', { id: 0x1234, type: TYPE.AAAA });
  const header = (qd: number, flags = 0x0100) => {
    const h = Buffer.alloc(12);
    h.writeUInt16BE(0xbeef, 0);
    h.writeUInt16BE(flags, 2);
    h.writeUInt16BE(qd, 4);
    return h;
  };
  const loop = Buffer.concat([header(1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
  const longLabel = Buffer.concat([header(1), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0, 0, 1, 0, 1])]);
  const longName = Buffer.concat([header(1), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([60]), Buffer.alloc(60, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]);
  const twoOpts = (() => {
    const q = buildQuery('a.test.priv', { edns: {} });
    const opt = q.subarray(q.length - 11);
    const out = Buffer.concat([q, opt]);
    out.writeUInt16BE(2, 10);
    return out;
  })();
  const rows: Array<[string, Buffer, 'drop' | 'formerr']> = [
    ['empty', Buffer.alloc(0), 'drop'],
    ['truncated header', ok.subarray(0, 11), 'drop'],
    ['a response (QR=1)', header(1, 0x8100), 'drop'],
    ['no question', header(0), 'formerr'],
    ['two questions', Buffer.concat([header(2), ok.subarray(12), ok.subarray(12)]), 'formerr'],
    ['truncated question name', ok.subarray(0, 16), 'formerr'],
    ['question without type/class', ok.subarray(0, ok.length - 2), 'formerr'],
    ['compression pointer loop', loop, 'formerr'],
    ['label longer than 63', longLabel, 'formerr'],
    ['name longer than 255', longName, 'formerr'],
    ['extended label type', Buffer.concat([header(1), Buffer.from([0x41, 0, 0, 1, 0, 1])]), 'formerr'],
    ['arcount larger than the message', (() => { const b = Buffer.from(ok); b.writeUInt16BE(3, 10); return b; })(), 'formerr'],
    ['two OPT records', twoOpts, 'formerr'],
  ];
  for (const [name, bytes, expected] of rows) {
    test(name, () => {
      const q = parseQuery(bytes);
      if (expected === 'drop') assert.equal(q, undefined);
      else assert.equal(q?.malformed, true);
    });
  }

  test('a well-formed query with EDNS', () => {
    const q = parseQuery(buildQuery('WordPress_c001_01.test.priv', { id: 0x1234, type: TYPE.AAAA, edns: { udpSize: 4096, do: true } }));
    assert.deepEqual(q, {
      id: 0x1234,
      opcode: 0,
      rd: true,
      cd: false,
      question: { labels: ['WordPress_c001_01', 'test', 'priv'], type: TYPE.AAAA, class: 1 },
      edns: { udpSize: 4096, version: 0, do: true },
      malformed: false,
    });
  });

  test('a name of exactly 255 bytes is fine, 256 is not (RFC 1035 §2.3.4)', () => {
    const name = (last: number) => ['a'.repeat(63), 'b'.repeat(63), 'c'.repeat(63), 'd'.repeat(last)].join('.');
    assert.equal(parseQuery(buildQuery(name(61)))?.malformed, false);
    assert.equal(parseQuery(buildQuery(name(62)))?.malformed, true);
  });

  test('random garbage never throws', () => {
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let i = 0; i < 20000; i++) {
      const bytes = Buffer.from(Array.from({ length: Math.floor(rand() * 80) }, () => Math.floor(rand() * 256)));
      if (i % 2 === 0 && bytes.length > 2) bytes[2] = bytes[2]! & 0x7f; // half of them pass the QR check
      const q = parseQuery(bytes);
      if (q) encodeResponse(answer(q, view(V4)), 512);
    }
  });
});

describe('encodeResponse', () => {
  test('IPv6 addresses', () => {
    assert.equal(ipv6Bytes('2001:db8::1').toString('hex'), '20010db8000000000000000000000001');
    assert.equal(ipv6Bytes('::').toString('hex'), '0'.repeat(32));
    assert.equal(ipv6Bytes('::ffff:192.0.2.1').toString('hex'), '00000000000000000000ffffc0000201');
    assert.equal(ipv6Bytes('fe80::1:2%eth0').toString('hex'), 'fe800000000000000000000000010002');
    assert.equal(ipv6Bytes('1:2:3:4:5:6:7:8').toString('hex'), '00010002000300040005000600070008');
  });

  test('dns2 decodes what we encode, including compressed owners', () => {
    const v = view([...V4, ...V6]);
    const a = decode(encodeResponse(answer(query('Acme.Test.Priv', TYPE.A), v), 512));
    assert.deepEqual(a.answers.map((r) => [r.name, r.type, r.ttl, r.address]), [
      ['Acme.Test.Priv', TYPE.A, 5, '203.0.113.7'],
      ['Acme.Test.Priv', TYPE.A, 5, '203.0.113.8'],
    ]);
    const nodata = decode(encodeResponse(answer(query('acme.test.priv', TYPE.TXT), v), 512));
    assert.deepEqual(nodata.authorities.map((r) => [r.name, r.primary, r.admin, r.serial, r.minimum]), [
      ['test.priv', 'ns.test.priv', 'hostmaster.test.priv', 42, 5],
    ]);
  });

  test('too big for the limit: TC=1, question (and OPT) only', () => {
    const many = Array.from({ length: 40 }, (_, i) => ({ ip: `10.0.0.${i + 1}` }));
    const v = view(many);
    const plain = encodeResponse(answer(query('x.test.priv', TYPE.A), v), 512);
    assert.deepEqual([headerOf(plain).tc, headerOf(plain).ancount, headerOf(plain).qdcount], [1, 0, 1]);
    assert.ok(plain.length <= 512);
    const edns = encodeResponse(answer(query('x.test.priv', TYPE.A, { edns: { udpSize: 1232, version: 0, do: false } }), v), 1232);
    assert.deepEqual([headerOf(edns).tc, headerOf(edns).ancount, headerOf(edns).arcount], [0, 40, 1]);
  });
});

// ---------------------------------------------------------------------------------------------
// Real sockets

async function startServer(
  t: { after: (fn: () => Promise<void>) => void },
  gateways: () => readonly GatewayRecord[],
  more: Partial<DnsServerOptions> = {},
): Promise<DnsServer> {
  const server = await startDnsServer({ domain: ZONE, host: '127.0.0.1', port: 0, gateways, ...more });
  t.after(() => server.close());
  return server;
}

describe('startDnsServer over UDP and TCP', () => {
  test('UDP: A, AAAA, SOA, REFUSED, EDNS', async (t) => {
    const server = await startServer(t, () => [...V4, ...V6]);
    assert.ok(server.port > 0);

    const a = decode(await udpExchange(server.port, buildQuery('WordPress_c001_01.Test.Priv', { type: TYPE.A })));
    assert.equal(a.header.aa, 1);
    assert.equal(a.header.ra, 0);
    assert.equal(a.header.rcode, 0);
    assert.equal(a.questions[0]?.name, 'WordPress_c001_01.Test.Priv');
    assert.deepEqual(a.answers.map((r) => r.address), ['203.0.113.7', '203.0.113.8']);

    const aaaa = decode(await udpExchange(server.port, buildQuery('x.test.priv', { type: TYPE.AAAA })));
    assert.deepEqual(aaaa.answers.map((r) => r.address), ['2001:db8::1']);

    const soa = decode(await udpExchange(server.port, buildQuery('test.priv', { type: TYPE.SOA })));
    assert.equal(soa.answers[0]?.primary, 'ns.test.priv');

    const refused = decode(await udpExchange(server.port, buildQuery('example.com', { type: TYPE.A })));
    assert.equal(refused.header.rcode, 5);
    assert.equal(refused.header.ra, 0);
    assert.equal(refused.answers.length, 0);

    const edns = decode(await udpExchange(server.port, buildQuery('x.test.priv', { edns: { udpSize: 4096, do: true } })));
    const opt = edns.additionals.find((r) => r.type === TYPE.OPT);
    assert.equal(opt?.class, EDNS_UDP_SIZE);

    const badvers = decode(await udpExchange(server.port, buildQuery('x.test.priv', { edns: { version: 1 } })));
    assert.equal(badvers.header.rcode, 16);

    assert.equal(server.stats.queries, 6);
    assert.deepEqual(server.stats.byRcode, { NOERROR: 4, REFUSED: 1, BADVERS: 1 });
  });

  test('TCP: several pipelined queries on one connection, answered in order', async (t) => {
    const server = await startServer(t, () => V4);
    const names = ['a.test.priv', 'b.test.priv', 'nope.example', 'test.priv'];
    const replies = await tcpExchange(server.port, names.map((n, i) => buildQuery(n, { id: 100 + i, type: i === 3 ? TYPE.NS : TYPE.A })));
    assert.deepEqual(replies.map((r) => headerOf(r).id), [100, 101, 102, 103]);
    assert.deepEqual(replies.map((r) => rcodeName(headerOf(r).rcode)), ['NOERROR', 'NOERROR', 'REFUSED', 'NOERROR']);
    assert.equal(decode(replies[3]!).answers[0]?.ns, 'ns.test.priv');
  });

  test('TCP: a message split across writes, byte by byte', async (t) => {
    const server = await startServer(t, () => V4);
    const client = await TcpClient.connect(server.port);
    t.after(() => client.close());
    const framed = TcpClient.frame(buildQuery('slow.test.priv', { id: 9 }));
    for (const byte of framed) {
      client.write(Buffer.from([byte]));
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    const reply = await client.read();
    assert.equal(headerOf(reply).id, 9);
    assert.equal(headerOf(reply).ancount, 2);
  });

  test('TC=1 over UDP when the answer does not fit; TCP carries it all', async (t) => {
    const many = Array.from({ length: 100 }, (_, i) => ({ ip: `10.0.${i >> 8}.${(i & 0xff) + 1}` }));
    const server = await startServer(t, () => many);
    for (const edns of [undefined, { udpSize: 4096 }]) {
      const udp = await udpExchange(server.port, buildQuery('x.test.priv', edns ? { edns } : {}));
      assert.equal(headerOf(udp).tc, 1);
      assert.equal(headerOf(udp).ancount, 0);
      assert.ok(udp.length <= (edns ? EDNS_UDP_SIZE : 512));
    }
    const [tcp] = await tcpExchange(server.port, [buildQuery('x.test.priv')]);
    assert.equal(headerOf(tcp!).tc, 0);
    assert.equal(headerOf(tcp!).ancount, 100);
  });

  test('the answer follows gateways() from one query to the next', async (t) => {
    let gateways: readonly GatewayRecord[] = [];
    const server = await startServer(t, () => gateways);
    const client = await UdpClient.open(server.port);
    t.after(() => client.close());
    const ask = async () => decode(await client.exchange(buildQuery('x.test.priv')));

    const empty = await ask();
    assert.equal(empty.header.rcode, 0);
    assert.equal(empty.answers.length, 0);
    assert.equal(empty.authorities[0]?.type, TYPE.SOA);
    const serial0 = empty.authorities[0]?.serial ?? 0;

    gateways = [{ ip: '192.0.2.1' }];
    const one = await ask();
    assert.deepEqual(one.answers.map((r) => r.address), ['192.0.2.1']);

    // The same array mutated in place is seen too.
    const mutable: GatewayRecord[] = [{ ip: '192.0.2.1' }];
    gateways = mutable;
    mutable.push({ ip: '192.0.2.2' });
    assert.deepEqual((await ask()).answers.map((r) => r.address), ['192.0.2.1', '192.0.2.2']);

    gateways = [];
    const gone = await ask();
    assert.equal(gone.answers.length, 0);
    assert.ok((gone.authorities[0]?.serial ?? 0) > serial0, 'the SOA serial grows when the gateway set changes');
  });

  test('a gateways() callback that throws: last known answer, one warning', async (t) => {
    const warnings: string[] = [];
    let fail = false;
    const server = await startServer(t, () => {
      if (fail) throw new Error('registry view broken');
      return V4;
    }, { warn: (m) => warnings.push(m) });
    const client = await UdpClient.open(server.port);
    t.after(() => client.close());
    assert.equal(decode(await client.exchange(buildQuery('x.test.priv'))).answers.length, 2);
    fail = true;
    assert.equal(decode(await client.exchange(buildQuery('x.test.priv'))).answers.length, 2);
    assert.equal(decode(await client.exchange(buildQuery('y.test.priv'))).answers.length, 2);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /registry view broken/);
  });
});

describe('malformed input never stops the server', () => {
  const header = (qd: number, flags = 0) => {
    const h = Buffer.alloc(12);
    h.writeUInt16BE(0xdead, 0);
    h.writeUInt16BE(flags, 2);
    h.writeUInt16BE(qd, 4);
    return h;
  };
  const junk: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['one byte', Buffer.from([0x42])],
    ['truncated header', Buffer.alloc(11)],
    ['compression loop', Buffer.concat([header(1), Buffer.from([0xc0, 12, 0, 1, 0, 1])])],
    ['pointer to itself mid-name', Buffer.concat([header(1), Buffer.from([1, 0x61, 0xc0, 13, 0, 1, 0, 1])])],
    ['label > 63', Buffer.concat([header(1), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0, 0, 1, 0, 1])])],
    ['garbage text', Buffer.from('GET / HTTP/1.1\r\nHost: test.priv\r\n\r\n')],
    ['a response (QR=1)', Buffer.concat([header(1, 0x8400), Buffer.from([0, 0, 1, 0, 1])])],
    ['question count 65535', header(0xffff)],
    ['all 0xff', Buffer.alloc(600, 0xff)],
    ['opcode UPDATE', buildQuery('test.priv', { id: 0xdead, opcode: 5 })],
  ];

  test('UDP: each junk packet, then a normal query is still answered', async (t) => {
    const server = await startServer(t, () => V4);
    const client = await UdpClient.open(server.port);
    t.after(() => client.close());
    for (const [name, bytes] of junk) {
      client.send(bytes);
      const q = buildQuery('after-junk.test.priv', { id: 0x4242 });
      client.send(q);
      const { reply, before } = await client.until(0x4242);
      assert.equal(headerOf(reply).ancount, 2, name);
      for (const b of before) {
        const rcode = rcodeName(headerOf(b).rcode);
        assert.ok(rcode === 'FORMERR' || rcode === 'NOTIMP', `${name}: junk answered ${rcode}`);
      }
    }
    assert.equal(server.stats.queries, junk.length * 2);
    assert.equal(server.stats.byRcode.NOERROR, junk.length);
  });

  test('TCP: junk frames on one connection, then a normal query on the same connection', async (t) => {
    const server = await startServer(t, () => V4);
    const client = await TcpClient.connect(server.port);
    t.after(() => client.close());
    client.write(Buffer.concat([...junk.map(([, b]) => TcpClient.frame(b)), TcpClient.frame(buildQuery('x.test.priv', { id: 0x4343 }))]));
    for (;;) {
      const reply = await client.read();
      if (headerOf(reply).id === 0x4343) {
        assert.equal(headerOf(reply).ancount, 2);
        break;
      }
      assert.ok(['FORMERR', 'NOTIMP'].includes(rcodeName(headerOf(reply).rcode)));
    }
    // And a fresh connection works as well.
    const [again] = await tcpExchange(server.port, [buildQuery('y.test.priv', { id: 5 })]);
    assert.equal(headerOf(again!).ancount, 2);
  });

  test('TCP: a connection closed mid-message does not disturb the server', async (t) => {
    const server = await startServer(t, () => V4);
    const half = await TcpClient.connect(server.port);
    half.write(Buffer.from([0x00, 0x40, 0x12, 0x34])); // promises 64 bytes, sends 2
    half.close();
    const [reply] = await tcpExchange(server.port, [buildQuery('x.test.priv', { id: 6 })]);
    assert.equal(headerOf(reply!).id, 6);
  });
});

describe('TCP limits', () => {
  test('an idle connection is closed after the idle timeout', async (t) => {
    const server = await startServer(t, () => V4, { tcpIdleTimeoutMs: 100 });
    const client = await TcpClient.connect(server.port);
    t.after(() => client.close());
    await client.waitClosed(5000);
    assert.ok(client.closed);
  });

  test('connections beyond the maximum are refused; the others keep working', async (t) => {
    const warnings: string[] = [];
    const server = await startServer(t, () => V4, { tcpMaxConnections: 2, warn: (m) => warnings.push(m) });
    const clients: TcpClient[] = [];
    t.after(() => clients.forEach((c) => c.close()));
    for (let i = 0; i < 2; i++) {
      const c = await TcpClient.connect(server.port);
      clients.push(c);
      c.write(TcpClient.frame(buildQuery('x.test.priv', { id: 10 + i })));
      assert.equal(headerOf(await c.read()).id, 10 + i);
    }
    const extra = await TcpClient.connect(server.port);
    clients.push(extra);
    await extra.waitClosed(5000);
    assert.match(warnings.join('\n'), /more than 2 TCP connections/);
    clients[0]!.write(TcpClient.frame(buildQuery('x.test.priv', { id: 20 })));
    assert.equal(headerOf(await clients[0]!.read()).id, 20);
  });
});

describe('binding', () => {
  test('port 0 gives the same free port for UDP and TCP', async (t) => {
    const server = await startServer(t, () => V4);
    const udp = await udpExchange(server.port, buildQuery('x.test.priv', { id: 1 }));
    const [tcp] = await tcpExchange(server.port, [buildQuery('x.test.priv', { id: 2 })]);
    assert.equal(headerOf(udp).id, 1);
    assert.equal(headerOf(tcp!).id, 2);
  });

  test('a fixed port that is taken fails with a clear error', async (t) => {
    const first = await startServer(t, () => V4);
    await assert.rejects(
      startDnsServer({ domain: ZONE, host: '127.0.0.1', port: first.port, gateways: () => V4 }),
      /dns: cannot bind (UDP|TCP) 127\.0\.0\.1:\d+/,
    );
  });

  test('bad options fail before binding', async () => {
    await assert.rejects(startDnsServer({ domain: 'bad zone', host: '127.0.0.1', port: 0, gateways: () => [] }), /not a zone name/);
    await assert.rejects(startDnsServer({ domain: ZONE, host: '127.0.0.1', port: 0, ttl: -1, gateways: () => [] }), /ttl/);
  });
});

test('close() releases the port and is idempotent, with a connection still open', async () => {
  const server = await startDnsServer({ domain: ZONE, host: '127.0.0.1', port: 0, gateways: () => V4 });
  const client = await TcpClient.connect(server.port);
  try {
    await Promise.all([server.close(), server.close()]);
    await client.waitClosed(5000);
    const again = await startDnsServer({ domain: ZONE, host: '127.0.0.1', port: server.port, gateways: () => V4 });
    await again.close();
  } finally {
    client.close();
    await server.close();
  }
});
