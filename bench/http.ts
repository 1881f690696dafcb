/**
 * HTTP load through each stack with wrk: keep-alive, HTTPS keep-alive (TLS at the edge), a new
 * connection per request, and a 1 MiB streamed body. Stacks are interleaved round by round (the order rotates each round)
 * and each figure is the median over rounds; the proxies' CPU time comes from /proc.
 */
import { median } from './client.js';
import { cpuTimes, type CpuTimes } from './proc.js';
import { TENANT_HOST, type Stack, type StackId } from './stacks.js';
import { runWrk, type WrkResult } from './wrk.js';

export type PhaseId = 'keepalive' | 'https' | 'close' | 'stream';

export interface Phase {
  id: PhaseId;
  title: string;
  path: string;
  headers: string[];
  connections: number;
  durationS: number;
  /** Over HTTPS to each stack's `tlsPort`; stacks without one are left out. */
  tls?: boolean;
}

export interface Round extends WrkResult {
  /** utime+stime of the proxy processes over the run, per request; null for `direct`. */
  cpuUsPerReq: number | null;
  /** The user-space part of it (the rest is kernel time). */
  userUsPerReq: number | null;
}

export interface StackFigures {
  stack: StackId;
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  mbPerSec: number;
  cpuUsPerReq: number | null;
  userUsPerReq: number | null;
  /** Summed over rounds. */
  errors: number;
  rounds: Round[];
}

export interface PhaseResult {
  phase: Phase;
  figures: StackFigures[];
  /** this project / nginx; undefined when either was not measured. */
  ratioReqPerSec?: number;
  ratioP99?: number;
}

export interface LoadSettings {
  wrk: string;
  rounds: number;
  threads: number;
  warmupS: number;
  log(line: string): void;
}

export function phases(durationS: number, connections: number): Phase[] {
  return [
    { id: 'keepalive', title: 'HTTP keep-alive, 16-byte body', path: '/', headers: [], connections, durationS },
    { id: 'https', title: 'HTTPS keep-alive, 16-byte body (TLS at the edge only)', path: '/', headers: [], connections, durationS, tls: true },
    {
      id: 'close',
      title: 'HTTP, new connection per request (Connection: close)',
      path: '/',
      headers: ['Connection: close'],
      connections,
      durationS: Math.max(2, Math.round(durationS / 2)),
    },
    {
      id: 'stream',
      title: 'HTTP keep-alive, 1 MiB streamed body',
      path: '/1m',
      headers: [],
      connections: Math.min(connections, 16),
      durationS: Math.max(2, Math.round(durationS / 2)),
    },
  ];
}

function proxyCpu(stack: Stack): CpuTimes {
  const sum = { user: 0, sys: 0 };
  for (const p of stack.proxies) {
    const t = cpuTimes(p.pid);
    sum.user += t.user;
    sum.sys += t.sys;
  }
  return sum;
}

async function once(stack: Stack, phase: Phase, s: LoadSettings, durationS: number): Promise<Round> {
  const cpu0 = proxyCpu(stack);
  const r = await runWrk({
    wrk: s.wrk,
    port: phase.tls === true ? (stack.tlsPort as number) : stack.port,
    tls: phase.tls,
    host: TENANT_HOST,
    path: phase.path,
    headers: phase.headers,
    durationS,
    connections: phase.connections,
    threads: s.threads,
  });
  if (stack.proxies.length === 0 || r.requests === 0) return { ...r, cpuUsPerReq: null, userUsPerReq: null };
  const cpu1 = proxyCpu(stack);
  const user = (cpu1.user - cpu0.user) / r.requests;
  return { ...r, cpuUsPerReq: user + (cpu1.sys - cpu0.sys) / r.requests, userUsPerReq: user };
}

export async function measurePhase(all: Stack[], phase: Phase, s: LoadSettings): Promise<PhaseResult> {
  const stacks = phase.tls === true ? all.filter((st) => st.tlsPort !== undefined) : all;
  s.log(`${phase.title}: warm-up ${s.warmupS}s per stack`);
  for (const stack of stacks) await once(stack, phase, s, s.warmupS);
  const rounds = new Map<StackId, Round[]>(stacks.map((st) => [st.id, []]));
  for (let r = 0; r < s.rounds; r++) {
    // Rotate the order so no stack always runs right after another's load.
    const order = stacks.map((_, i) => stacks[(i + r) % stacks.length] as Stack);
    for (const stack of order) {
      const result = await once(stack, phase, s, phase.durationS);
      rounds.get(stack.id)?.push(result);
      const cpu = result.cpuUsPerReq === null ? '' : `, ${result.cpuUsPerReq.toFixed(0)} us CPU/req`;
      s.log(
        `  round ${r + 1}/${s.rounds} ${stack.id.padEnd(8)} ${result.reqPerSec.toFixed(0).padStart(7)} req/s  p50 ${result.p50Ms.toFixed(2)} ms  p99 ${result.p99Ms.toFixed(2)} ms${cpu}${result.errors > 0 ? `  ${result.errors} errors` : ''}`,
      );
    }
  }
  const figures: StackFigures[] = stacks.map((stack) => {
    const rs = rounds.get(stack.id) ?? [];
    const cpu = rs.map((x) => x.cpuUsPerReq).filter((x): x is number => x !== null);
    const user = rs.map((x) => x.userUsPerReq).filter((x): x is number => x !== null);
    return {
      stack: stack.id,
      reqPerSec: median(rs.map((x) => x.reqPerSec)),
      p50Ms: median(rs.map((x) => x.p50Ms)),
      p99Ms: median(rs.map((x) => x.p99Ms)),
      mbPerSec: median(rs.map((x) => x.bytesPerSec / 1024 ** 2)),
      cpuUsPerReq: cpu.length > 0 ? median(cpu) : null,
      userUsPerReq: user.length > 0 ? median(user) : null,
      errors: rs.reduce((n, x) => n + x.errors, 0),
      rounds: rs,
    };
  });
  const ours = figures.find((f) => f.stack === 'project');
  const nginx = figures.find((f) => f.stack === 'nginx');
  const result: PhaseResult = { phase, figures };
  if (ours !== undefined && nginx !== undefined) {
    result.ratioReqPerSec = ours.reqPerSec / nginx.reqPerSec;
    result.ratioP99 = ours.p99Ms / nginx.p99Ms;
  }
  return result;
}
