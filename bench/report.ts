/**
 * One renderer for stdout and bench/RESULTS.md: markdown tables, each figure next to its
 * target. The benchmark reports; it never fails a run because a target was missed.
 */
import type { DnsResult } from './dns.js';
import type { FreshnessCase } from './freshness.js';
import type { PhaseResult } from './http.js';
import type { ProfileResult } from './profile.js';
import type { ScaleResult } from './scale.js';
import { STACK_LABEL } from './stacks.js';
import type { WsResult } from './ws.js';

export interface Machine {
  date: string;
  nproc: number;
  cpu: string;
  node: string;
  kernel: string;
  tools: Record<string, string>;
  /** 1-minute load average when the run started and when it ended: other work skews figures. */
  loadStart: number;
  loadEnd?: number;
}

export interface Results {
  machine: Machine;
  command: string;
  settings: Record<string, unknown>;
  notes: string[];
  http: PhaseResult[];
  ws: WsResult[];
  dns?: DnsResult;
  freshness: FreshnessCase[];
  scale?: ScaleResult;
  profile?: ProfileResult;
}

const f = (x: number | null | undefined, digits = 0): string =>
  x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** "0.72x (target >= 0.6x, aim 1.0x): met" */
function verdict(value: number | undefined, text: string, met: (v: number) => boolean): string {
  if (value === undefined || !Number.isFinite(value)) return `- (${text})`;
  return `**${f(value, 2)}x** (${text}): ${met(value) ? 'met' : 'missed'}`;
}

function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

function httpSection(p: PhaseResult, s: Results['settings']): string {
  const stream = p.phase.id === 'stream';
  const head = ['path', 'req/s', ...(stream ? ['MiB/s'] : []), 'p50 ms', 'p99 ms', 'proxy CPU us/req', 'of it user space', 'errors'];
  const rows = p.figures.map((x) => [
    STACK_LABEL[x.stack],
    f(x.reqPerSec),
    ...(stream ? [f(x.mbPerSec)] : []),
    f(x.p50Ms, 2),
    f(x.p99Ms, 2),
    f(x.cpuUsPerReq),
    f(x.userUsPerReq),
    f(x.errors),
  ]);
  const out = [
    `### ${p.phase.title}`,
    '',
    `wrk -t${String(s.threads)} -c${p.phase.connections} -d${p.phase.durationS}s --latency${p.phase.headers.map((h) => ` -H '${h}'`).join('')}${p.phase.tls === true ? ' https://127.0.0.1:<edge TLS port>/' : ''}, medians of ${String(s.rounds)} interleaved rounds. Proxy CPU: utime+stime of both proxy processes from /proc, per request.${p.phase.tls === true ? ' TLS is terminated at the edge; the hop to the local proxy stays plain HTTP. Same certificate on every stack (see the notes); the connections are kept alive, so this is the cost of encryption, not of handshakes.' : ''}`,
    '',
    table(head, rows),
  ];
  if (p.ratioReqPerSec !== undefined) {
    out.push(
      '',
      `- tenant-gateway / nginx req/s: ${verdict(p.ratioReqPerSec, 'target >= 0.6x, aim 1.0x', (v) => v >= 0.6)}`,
      `- tenant-gateway / nginx p99: ${verdict(p.ratioP99, 'target <= 1.2x', (v) => v <= 1.2)}`,
    );
  }
  return out.join('\n');
}

function wsSection(ws: WsResult[]): string {
  const rows = ws.map((w) => [
    STACK_LABEL[w.stack],
    `${w.opened}/${w.wanted}`,
    f(w.rssIdleMiB, 1),
    f(w.rssOpenMiB, 1),
    f(w.kibPerConnection, 1),
    Object.entries(w.rssOpenByProcessMiB)
      .map(([k, v]) => `${k} ${f(v, 1)}`)
      .join(', '),
  ]);
  return [
    `### WebSocket connections held open through the chain`,
    '',
    table(['path', 'open', 'proxies RSS before MiB', 'RSS with all open MiB', 'KiB per connection (delta)', 'by process (MiB)'], rows),
    '',
    'Fresh processes. RSS is the figure to compare; the per-connection delta is noisy for Node, whose heap has slack (and may be collected) between the two readings.',
  ].join('\n');
}

function dnsSection(d: DnsResult, s: Results['settings']): string {
  const rows = d.figures.map((x) => [x.label, f(x.qps), f(x.p50Ms, 3), f(x.p99Ms, 3), f(x.cpuUsPerQuery, 1), f(x.lost)]);
  const out = [
    '### DNS (A queries for *.test.priv)',
    '',
    `dnsperf -c 4 -T 1 -q 100 -l ${String(s.duration)}, medians of ${String(s.rounds)} interleaved rounds`,
    '',
    table(['server', 'QPS', 'p50 ms', 'p99 ms', 'server CPU us/query', 'lost'], rows),
  ];
  if (d.ratioQps !== undefined) out.push('', `- tenant-gateway / dnsmasq QPS: ${verdict(d.ratioQps, 'target >= 0.5x, aim 1.0x', (v) => v >= 0.5)}`);
  return out.join('\n');
}

function freshnessSection(cases: FreshnessCase[]): string {
  const rows = cases.map((c) => [
    c.registry,
    c.kind === 'container' ? 'new container (local proxy)' : 'new tenant name (gateway)',
    `${c.routed}/${c.count}`,
    f(c.p50Ms, 2),
    `${f(c.p99Ms, 2)} ${Number.isFinite(c.p99Ms) ? (c.p99Ms < 10 ? '(met)' : '(missed)') : ''}`,
    f(c.maxMs, 2),
  ]);
  return [
    '### Freshness: registration call returned -> first request routed by it',
    '',
    'The name was requested once before it was registered (a negative cache entry exists); a figure ends when the first 200 answer has arrived. Target: p99 < 10 ms.',
    '',
    table(['registry', 'change', 'routed', 'p50 ms', 'p99 ms', 'max ms'], rows),
  ].join('\n');
}

function scaleSection(x: ScaleResult): string {
  const rss = x.gatewayRssMiB.afterRequests;
  return [
    `### Scale (${x.registry} registry): ${f(x.tenantsRegistered)} tenants registered, ${f(x.hostsRequested)} distinct hosts requested`,
    '',
    table(
      ['what', 'value'],
      [
        ['tenants registered (admin API)', `${f(x.tenantsRegistered)} of ${f(x.tenantsWanted)} in ${f(x.registerSeconds, 1)} s (${f(x.registrationsPerSec)}/s)`],
        ['distinct tenant hosts requested / routed', `${f(x.hostsRequested)} / ${f(x.hostsRouted)}`],
        ['gateway RSS MiB: start / after registration / after requests', `${f(x.gatewayRssMiB.start, 1)} / ${f(x.gatewayRssMiB.afterRegistration, 1)} / **${f(rss, 1)}** (target < 150: ${rss < 150 ? 'met' : 'missed'})`],
        ['local proxy RSS MiB: start / after requests', `${f(x.localProxyRssMiB.start, 1)} / ${f(x.localProxyRssMiB.afterRequests, 1)}`],
        ['latency, structured name (no tenant lookup) p50 / p99 ms', `${f(x.latency.structured.p50Ms, 2)} / ${f(x.latency.structured.p99Ms, 2)}`],
        ['latency, tenant already requested (cached) p50 / p99 ms', `${f(x.latency.cached.p50Ms, 2)} / ${f(x.latency.cached.p99Ms, 2)}`],
        ['latency, tenant never requested (lookup) p50 / p99 ms', `${f(x.latency.uncached.p50Ms, 2)} / ${f(x.latency.uncached.p99Ms, 2)}`],
      ],
    ),
    '',
    'Latencies are single requests through the whole chain, one at a time; the difference to the structured name is the cost of the tenant lookup.',
  ].join('\n');
}

function profileSection(p: ProfileResult): string {
  const out = [`### Where the project's proxy CPU goes (node --cpu-prof, keep-alive load, ${f(p.reqPerSec)} req/s while profiled)`, ''];
  for (const s of p.summaries) {
    out.push(
      `**${s.process}** (busy ${f(s.busyPct)}% of samples; shares are of busy time)`,
      '',
      table(['category', '% busy'], s.byCategory.map((c) => [c.name, f(c.pct, 1)])),
      '',
      table(['top functions (self time)', '% busy'], s.topFunctions.slice(0, 10).map((c) => [`\`${c.name}\``, f(c.pct, 1)])),
      '',
    );
  }
  if (p.note) out.push(`Note: ${p.note}`);
  return out.join('\n');
}

export function render(r: Results): string {
  const m = r.machine;
  const parts = [
    `## Benchmark results, ${m.date}`,
    '',
    `Machine: ${m.nproc} cores (${m.cpu}), Node.js ${m.node}, Linux ${m.kernel}${Object.entries(m.tools)
      .map(([k, v]) => `, ${k} ${v}`)
      .join('')}. Everything on 127.0.0.1; two hops (edge -> local proxy -> app), 16-byte body unless said. Produced by \`${r.command}\`.`,
  ];
  for (const p of r.http) parts.push('', httpSection(p, r.settings));
  if (r.ws.length > 0) parts.push('', wsSection(r.ws));
  if (r.dns) parts.push('', dnsSection(r.dns, r.settings));
  if (r.freshness.length > 0) parts.push('', freshnessSection(r.freshness));
  if (r.scale) parts.push('', scaleSection(r.scale));
  if (r.profile) parts.push('', profileSection(r.profile));
  const load = `load average ${f(m.loadStart, 1)} at the start${m.loadEnd === undefined ? '' : `, ${f(m.loadEnd, 1)} at the end`}`;
  const notes = [...r.notes];
  if (Math.max(m.loadStart, m.loadEnd ?? 0) > 1.5) notes.push(`Other work was running on this ${m.nproc}-core machine (${load}): treat the figures as noisy.`);
  else notes.push(`Quiet machine (${load}).`);
  parts.push('', '### Notes', '', ...notes.map((n) => `- ${n}`));
  return `${parts.join('\n')}\n`;
}
