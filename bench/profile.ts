/**
 * Where the project's proxy time goes: the gateway and the local proxy run under
 * `node --cpu-prof` for one keep-alive load, then each V8 profile is folded into self time
 * per category (undici, node:http, streams/net, our code, GC...) and per function.
 */
import fs from 'node:fs';
import path from 'node:path';
import { sleep } from './proc.js';
import { startProject, TENANT_HOST, type Env } from './stacks.js';
import { runWrk } from './wrk.js';

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface Share {
  name: string;
  /** Percent of the busy (non-idle) samples. */
  pct: number;
}

export interface ProfileSummary {
  process: string;
  file: string;
  busyPct: number;
  byCategory: Share[];
  topFunctions: Share[];
}

export interface ProfileResult {
  reqPerSec: number;
  summaries: ProfileSummary[];
  note?: string;
}

function category(fn: string, url: string): string {
  if (fn === '(garbage collector)') return 'GC';
  if (fn === '(program)') return 'V8/native (program)';
  if (url.includes('node_modules/undici') || url.startsWith('wasm://')) return 'undici (upstream client; wasm = its llhttp parser)';
  if (url.includes('node_modules/lru-cache')) return 'lru-cache';
  if (url.includes('node_modules/')) return 'other npm packages';
  if (/\/dist\/(gateway|discovery|admin|dns)\//.test(url) || /\/dist\/[^/]+\.js$/.test(url)) return 'tenant-gateway code';
  if (/node:_?http|node:internal\/http|_http_/.test(url)) return 'node:http (server side)';
  if (/node:net|node:internal\/(stream|streams|net)|node:stream|node:internal\/stream_base/.test(url)) return 'net + streams';
  if (/node:internal\/(timers|process\/task_queues)|node:timers|node:events|node:internal\/async_hooks/.test(url)) return 'timers, events, ticks';
  if (url.startsWith('node:')) return 'other node internals';
  if (url === '' && /^write/.test(fn)) return 'socket writes (native: writev, string encode + syscall)';
  if (url === '') return 'V8 builtins / other native';
  return 'other';
}

/** "node_modules/undici/lib/x.js" -> "undici/lib/x.js"; the project's "dist/gateway/x.js" stays. */
function shortUrl(url: string): string {
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) return url.slice(nm + '/node_modules/'.length);
  return url.replace(/^file:\/\/.*?\/dist\//, 'dist/');
}

/** `windowS`: count only the samples of the last this-many seconds (the load, not start-up). */
export function summarize(file: string, processName: string, windowS = Infinity): ProfileSummary {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const hits = new Map<number, number>();
  const samples = prof.samples ?? [];
  const deltas = prof.timeDeltas ?? [];
  const from = prof.endTime - windowS * 1e6;
  let t = prof.startTime;
  for (let i = 0; i < samples.length; i++) {
    t += deltas[i] ?? 0;
    const id = samples[i] as number;
    if (t >= from) hits.set(id, (hits.get(id) ?? 0) + 1);
  }
  let total = 0;
  let idle = 0;
  const byCat = new Map<string, number>();
  const byFn = new Map<string, number>();
  for (const node of prof.nodes) {
    const n = hits.get(node.id) ?? 0;
    if (n === 0) continue;
    total += n;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') {
      idle += n;
      continue;
    }
    const cat = category(functionName, url);
    byCat.set(cat, (byCat.get(cat) ?? 0) + n);
    const where = url === '' ? '' : ` ${shortUrl(url)}:${lineNumber + 1}`;
    const key = `${functionName || '(anonymous)'}${where}`;
    byFn.set(key, (byFn.get(key) ?? 0) + n);
  }
  const busy = total - idle;
  const shares = (m: Map<string, number>, k: number): Share[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([name, n]) => ({ name, pct: (100 * n) / busy }));
  return {
    process: processName,
    file,
    busyPct: total > 0 ? (100 * busy) / total : 0,
    byCategory: shares(byCat, 12),
    topFunctions: shares(byFn, 15),
  };
}

export async function profileProject(env: Env, appPort: number, wrk: string, durationS: number, connections: number, outDir: string): Promise<ProfileResult> {
  const dir = path.join(outDir, `prof-${Date.now()}`);
  fs.mkdirSync(dir, { recursive: true });
  const flags = ['--cpu-prof', `--cpu-prof-dir=${dir}`];
  const stack = await startProject(env, appPort, { gatewayNodeFlags: flags, localProxyNodeFlags: flags });
  let reqPerSec = Number.NaN;
  try {
    await runWrk({ wrk, port: stack.port, host: TENANT_HOST, durationS: 2, connections, threads: 1 });
    reqPerSec = (await runWrk({ wrk, port: stack.port, host: TENANT_HOST, durationS, connections, threads: 1 })).reqPerSec;
  } finally {
    await stack.stop();
  }
  // The profile is written while the process exits; it names the file after the pid.
  const summaries: ProfileSummary[] = [];
  for (const [proc, name] of [
    [stack.gateway, 'gateway'],
    [stack.localProxy, 'local proxy'],
  ] as const) {
    let file: string | undefined;
    for (let i = 0; i < 40 && file === undefined; i++) {
      file = fs.readdirSync(dir).find((f) => f.includes(`.${proc.pid}.`) && f.endsWith('.cpuprofile'));
      if (file === undefined) await sleep(100);
    }
    if (file !== undefined) summaries.push(summarize(path.join(dir, file), name, durationS));
  }
  const note =
    summaries.length < 2
      ? 'no .cpuprofile was written for some process: V8 writes it only on a clean exit (SIGTERM must end in process.exit)'
      : undefined;
  return { reqPerSec, summaries, ...(note ? { note } : {}) };
}
