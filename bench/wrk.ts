/** wrk as the HTTP load generator: one bounded run, its --latency output parsed. */
import { run } from './proc.js';

export interface WrkOptions {
  wrk: string;
  port: number;
  host: string;
  path?: string;
  durationS: number;
  connections: number;
  threads: number;
  /** Extra request headers ("Name: value"). */
  headers?: string[];
  /** https://127.0.0.1:port: wrk sends the IP as SNI, so the server's default certificate answers. */
  tls?: boolean;
}

export interface WrkResult {
  requests: number;
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Bytes read per second. */
  bytesPerSec: number;
  /** Non-2xx/3xx answers plus socket errors (connect, read, write, timeout). */
  errors: number;
}

export async function runWrk(o: WrkOptions): Promise<WrkResult> {
  const args = [
    '-t',
    String(o.threads),
    '-c',
    String(o.connections),
    '-d',
    `${o.durationS}s`,
    '--timeout',
    '5s',
    '--latency',
    '-H',
    `Host: ${o.host}`,
    ...(o.headers ?? []).flatMap((h) => ['-H', h]),
    `${o.tls === true ? 'https' : 'http'}://127.0.0.1:${o.port}${o.path ?? '/'}`,
  ];
  const r = await run(o.wrk, args, (o.durationS + 20) * 1000);
  if (r.code !== 0) throw new Error(`wrk exited with ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return parseWrk(r.stdout);
}

const UNIT_MS: Record<string, number> = { us: 1e-3, ms: 1, s: 1000, m: 60_000 };
const UNIT_BYTES: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };

function ms(value: string | undefined, unit: string | undefined): number {
  return value === undefined || unit === undefined ? Number.NaN : Number(value) * (UNIT_MS[unit] ?? Number.NaN);
}

export function parseWrk(out: string): WrkResult {
  const p50 = /^\s*50%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(out);
  const p99 = /^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(out);
  const reqs = /^\s*(\d+) requests in/m.exec(out);
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(out);
  const transfer = /^Transfer\/sec:\s+([\d.]+)(B|KB|MB|GB)/m.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  if (reqs === null || rps === null) throw new Error(`could not parse wrk output:\n${out}`);
  // A read error is how wrk counts a server closing after "Connection: close": not a failure.
  const socketErrors = sock === null ? 0 : Number(sock[1]) + Number(sock[3]) + Number(sock[4]);
  return {
    requests: Number(reqs[1]),
    reqPerSec: Number(rps[1]),
    p50Ms: ms(p50?.[1], p50?.[2]),
    p99Ms: ms(p99?.[1], p99?.[2]),
    bytesPerSec: transfer === null ? Number.NaN : Number(transfer[1]) * (UNIT_BYTES[transfer[2] as string] ?? Number.NaN),
    errors: (non2xx === null ? 0 : Number(non2xx[1])) + socketErrors,
  };
}
