/** Small HTTP(S) client helpers for set-up, freshness and scale (not for load: wrk does that). */
import http from 'node:http';
import https from 'node:https';
import tls, { type TLSSocket } from 'node:tls';

export interface Reply {
  status: number;
  body: string;
}

export interface RequestOptions {
  port: number;
  host: string;
  path?: string;
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string;
  agent?: http.Agent | false;
  timeoutMs?: number;
}

/** One request to 127.0.0.1:port with the given Host; rejects on network errors and timeouts. */
export function request(opts: RequestOptions): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { host: opts.host, ...opts.headers };
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(opts.body);
    }
    const req = http.request(
      {
        host: '127.0.0.1',
        port: opts.port,
        path: opts.path ?? '/',
        method: opts.method ?? 'GET',
        headers,
        agent: opts.agent ?? false,
        timeout: opts.timeoutMs ?? 5000,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from 127.0.0.1:${opts.port} in ${opts.timeoutMs ?? 5000} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

export interface TlsReply extends Reply {
  /** The server certificate's SHA-256 fingerprint, and what was negotiated. */
  fingerprint: string;
  protocol: string;
  cipher: string;
}

/**
 * One GET over HTTPS to 127.0.0.1:port with the given Host, sending no SNI (as a client that
 * knows only the IP), verifying the chain against `ca` and the certificate's names against `host`.
 */
export function tlsRequest(opts: { port: number; host: string; ca: Buffer; path?: string; timeoutMs?: number }): Promise<TlsReply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port: opts.port,
        path: opts.path ?? '/',
        headers: { host: opts.host },
        agent: false,
        servername: '',
        ca: opts.ca,
        checkServerIdentity: (_name, cert) => tls.checkServerIdentity(opts.host, cert),
        timeout: opts.timeoutMs ?? 5000,
      },
      (res) => {
        const socket = res.socket as TLSSocket;
        const fingerprint = socket.getPeerCertificate().fingerprint256;
        const protocol = socket.getProtocol() ?? '';
        const cipher = socket.getCipher().name;
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, fingerprint, protocol, cipher }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from https://127.0.0.1:${opts.port} in ${opts.timeoutMs ?? 5000} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` in flight. */
export async function pool(count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
}

/** Percentile of an ascending array (nearest rank); NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function median(values: readonly number[]): number {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return Number.NaN;
  const mid = xs.length >> 1;
  return xs.length % 2 === 1 ? (xs[mid] as number) : ((xs[mid - 1] as number) + (xs[mid] as number)) / 2;
}
