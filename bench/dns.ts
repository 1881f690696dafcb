/**
 * DNS: the project's DNS server against dnsmasq (`address=/.test.priv/127.0.0.1`), both
 * driven by dnsperf over UDP on 127.0.0.1, interleaved round by round. dnsperf reports only a
 * mean latency, so it runs with -v (one line per answer with its latency) and the lines are
 * folded into a histogram as they stream in.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { median } from './client.js';
import { cpuMicros, freePort, start, stop, tcpOpen, tempDir, waitFor, type Proc } from './proc.js';
import { ADMIN_TOKEN, cliPath, DOMAIN, type Env } from './stacks.js';

export interface DnsServer {
  id: 'project' | 'dnsmasq';
  label: string;
  port: number;
  proc: Proc;
}

export interface DnsRound {
  qps: number;
  completed: number;
  lost: number;
  p50Ms: number;
  p99Ms: number;
  cpuUsPerQuery: number;
}

export interface DnsFigures {
  server: DnsServer['id'];
  label: string;
  qps: number;
  p50Ms: number;
  p99Ms: number;
  cpuUsPerQuery: number;
  lost: number;
  rounds: DnsRound[];
}

export interface DnsResult {
  figures: DnsFigures[];
  ratioQps?: number;
}

/** The names asked for: structured, tenant and apex-adjacent, all under the wildcard. */
const QUERIES = [
  'wordpress_c001_01.test.priv A',
  'acme.test.priv A',
  'wordpress_c002_02.test.priv A',
  'shop.test.priv A',
  'blog_c010_03.test.priv A',
  't000123.test.priv A',
];

/** A minimal A query (RFC 1035 §4.1) for readiness checks. */
function query(name: string): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')]));
  const header = Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

/** true when the server at `port` answers an A query for `name` with at least one answer. */
export function answers(port: number, name = 'wordpress_c001_01.test.priv'): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.close();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 500);
    sock.on('message', (msg) => done(msg.length >= 12 && msg.readUInt16BE(6) > 0));
    sock.on('error', () => done(false));
    sock.send(query(name), port, '127.0.0.1');
  });
}

export async function startDnsmasq(dnsmasq: string): Promise<DnsServer> {
  const port = await freePort();
  const proc = start('dnsmasq', dnsmasq, [
    '--keep-in-foreground',
    `--port=${port}`,
    '--listen-address=127.0.0.1',
    '--bind-interfaces',
    '--no-resolv',
    '--no-hosts',
    '--conf-file=/dev/null',
    '--pid-file=',
    '--user=root',
    '--group=root',
    '--address=/.test.priv/127.0.0.1',
  ]);
  await waitFor('dnsmasq', () => answers(port), 10_000, proc);
  return { id: 'dnsmasq', label: 'dnsmasq (address=/.test.priv/...)', port, proc };
}

/**
 * The project's DNS server (`tenant-gateway dns`), reading a file registry that a gateway
 * owns: the gateway registers itself under gateways/, which is what DNS answers with.
 * Only the DNS process is measured; the gateway is `owner` and idles.
 */
export async function startProjectDns(env: Env): Promise<DnsServer & { owner: Proc }> {
  const cli = cliPath(env);
  const dataDir = tempDir('dns');
  const registry = `file:${path.join(dataDir, 'registry.json')}`;
  const childEnv = { ...process.env, TGW_ADMIN_TOKEN: ADMIN_TOKEN };
  const [httpPort, adminPort, port] = [await freePort(), await freePort(), await freePort()];
  const owner = start(
    'tenant-gateway gateway (registry owner)',
    process.execPath,
    [cli, 'gateway', '--http-port', String(httpPort), '--admin-port', String(adminPort), '--data-dir', dataDir, '--registry', registry, '--domain', DOMAIN],
    { env: childEnv, cwd: dataDir },
  );
  try {
    await waitFor('tenant-gateway gateway', () => tcpOpen(adminPort), 15_000, owner);
    const proc = start('tenant-gateway dns', process.execPath, [cli, 'dns', '--dns-port', String(port), '--registry', registry, '--domain', DOMAIN], {
      env: childEnv,
      cwd: dataDir,
    });
    await waitFor('tenant-gateway dns (answering with the gateway)', () => answers(port), 15_000, proc);
    return { id: 'project', label: 'tenant-gateway dns', port, proc, owner };
  } catch (err) {
    await stop(owner);
    throw err;
  }
}

interface PerfOptions {
  dnsperf: string;
  port: number;
  durationS: number;
  queryFile: string;
}

/** One dnsperf run; latencies from its -v lines ("> NOERROR name A 0.000123"). */
async function dnsperf(o: PerfOptions): Promise<Omit<DnsRound, 'cpuUsPerQuery'>> {
  const args = ['-s', '127.0.0.1', '-p', String(o.port), '-d', o.queryFile, '-l', String(o.durationS), '-c', '4', '-T', '1', '-q', '100', '-v'];
  const proc = start('dnsperf', o.dnsperf, args);
  const timer = setTimeout(() => void stop(proc, 1000), (o.durationS + 20) * 1000);
  // Microsecond buckets up to 1 s; slower answers land in the last bucket.
  const hist = new Uint32Array(1_000_001);
  let answered = 0;
  let summary = '';
  const lines = readline.createInterface({ input: proc.child.stdout as NodeJS.ReadableStream });
  for await (const line of lines) {
    if (line.startsWith('> ')) {
      const us = Math.round(Number(line.slice(line.lastIndexOf(' ') + 1)) * 1e6);
      if (Number.isFinite(us)) {
        hist[Math.min(us, 1_000_000)]!++;
        answered++;
      }
    } else {
      summary += `${line}\n`;
    }
  }
  await proc.exited;
  clearTimeout(timer);
  const qps = /Queries per second:\s+([\d.]+)/.exec(summary);
  const completed = /Queries completed:\s+(\d+)/.exec(summary);
  const lost = /Queries lost:\s+(\d+)/.exec(summary);
  if (qps === null) throw new Error(`could not parse dnsperf output:\n${summary}${proc.tail()}`);
  return {
    qps: Number(qps[1]),
    completed: Number(completed?.[1] ?? answered),
    lost: Number(lost?.[1] ?? 0),
    p50Ms: histPercentile(hist, answered, 50) / 1000,
    p99Ms: histPercentile(hist, answered, 99) / 1000,
  };
}

function histPercentile(hist: Uint32Array, total: number, p: number): number {
  if (total === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * total);
  let seen = 0;
  for (let us = 0; us < hist.length; us++) {
    seen += hist[us] as number;
    if (seen >= rank) return us;
  }
  return hist.length - 1;
}

export interface DnsSettings {
  dnsperf: string;
  rounds: number;
  durationS: number;
  warmupS: number;
  log(line: string): void;
}

export async function measureDns(servers: DnsServer[], s: DnsSettings): Promise<DnsResult> {
  const dir = tempDir('dnsperf');
  const queryFile = path.join(dir, 'queries.txt');
  fs.writeFileSync(queryFile, `${QUERIES.join('\n')}\n`);
  s.log(`DNS: warm-up ${s.warmupS}s per server`);
  for (const srv of servers) await dnsperf({ dnsperf: s.dnsperf, port: srv.port, durationS: s.warmupS, queryFile });
  const rounds = new Map<string, DnsRound[]>(servers.map((x) => [x.id, []]));
  for (let r = 0; r < s.rounds; r++) {
    const order = servers.map((_, i) => servers[(i + r) % servers.length] as DnsServer);
    for (const srv of order) {
      const cpu0 = cpuMicros(srv.proc.pid);
      const res = await dnsperf({ dnsperf: s.dnsperf, port: srv.port, durationS: s.durationS, queryFile });
      const cpuUsPerQuery = res.completed > 0 ? (cpuMicros(srv.proc.pid) - cpu0) / res.completed : Number.NaN;
      rounds.get(srv.id)?.push({ ...res, cpuUsPerQuery });
      s.log(
        `  round ${r + 1}/${s.rounds} ${srv.id.padEnd(8)} ${res.qps.toFixed(0).padStart(7)} QPS  p50 ${res.p50Ms.toFixed(3)} ms  p99 ${res.p99Ms.toFixed(3)} ms  ${cpuUsPerQuery.toFixed(1)} us CPU/query${res.lost > 0 ? `  ${res.lost} lost` : ''}`,
      );
    }
  }
  const figures = servers.map((srv): DnsFigures => {
    const rs = rounds.get(srv.id) ?? [];
    return {
      server: srv.id,
      label: srv.label,
      qps: median(rs.map((x) => x.qps)),
      p50Ms: median(rs.map((x) => x.p50Ms)),
      p99Ms: median(rs.map((x) => x.p99Ms)),
      cpuUsPerQuery: median(rs.map((x) => x.cpuUsPerQuery)),
      lost: rs.reduce((n, x) => n + x.lost, 0),
      rounds: rs,
    };
  });
  const ours = figures.find((f) => f.server === 'project');
  const theirs = figures.find((f) => f.server === 'dnsmasq');
  return { figures, ratioQps: ours && theirs ? ours.qps / theirs.qps : undefined };
}
