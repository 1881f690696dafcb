/**
 * tenant-gateway as users run it: a child process (`up`, every port 0, a temp data dir),
 * optionally under prlimit for more file descriptors. Stopped by PID in close(), also after a
 * failed test.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from '../../support/cli.js';
import { tempDir } from '../../support/node.js';
import { request, waitFor, type Reply } from '../../support/util.js';


export interface GatewayProcess {
  child: ChildProcess;
  pid: number;
  httpPort: number;
  adminPort: number;
  lines: Record<string, unknown>[];
  admin(method: string, urlPath: string, body?: unknown): Promise<Reply>;
  /** Resident set size of the gateway process, bytes. */
  rss(): number;
  exited: Promise<number | null>;
  close(): Promise<void>;
}

/** The hard RLIMIT_NOFILE of this process (what a child may raise its soft limit to). */
export function hardFdLimit(): number {
  const text = fs.readFileSync('/proc/self/limits', 'utf8');
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  return m?.[2] === 'unlimited' ? 1 << 20 : Number(m?.[2] ?? 1024);
}

export async function startGatewayProcess(args: string[] = [], opts: { nofile?: number } = {}): Promise<GatewayProcess> {
  const dir = tempDir('tgw-hardening-cli-');
  const p = runCli(['up', '--http-port', '0', '--admin-port', '0', '--dns-port', '0', '--local-port', '0', '--data-dir', dir, ...args], { TGW_ADMIN_TOKEN: '' }, opts);
  const { child, lines } = p;
  const stderr = p.stderr;
  const exited = p.exited;
  let done = false;
  void exited.then(() => (done = true));
  const close = async () => {
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    const port = (role: string) => {
      const l = lines.find((x) => x.msg === 'listening' && x.role === role);
      return l ? Number(String(l.address).split(':').pop()) : undefined;
    };
    await waitFor(() => done || (port('gateway') && port('admin') && lines.some((l) => l.msg === 'registered' && String(l.what).startsWith('gateway'))), 'the gateway to start', 15_000);
    if (done) throw new Error(`tenant-gateway exited at start-up: ${stderr()}`);
    const adminPort = port('admin') as number;
    const token = fs.readFileSync(path.join(dir, 'admin-token'), 'utf8').trim();
    return {
      child,
      pid: child.pid as number,
      httpPort: port('gateway') as number,
      adminPort,
      lines,
      admin: (method, urlPath, body) =>
        request(adminPort, { method, path: urlPath, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) }),
      rss: () => {
        // The gateway is the node process (prlimit execs it, so the PID is the same).
        const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
        return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
      },
      exited,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Registers tenant `name` on host 01 (the process's own local proxy) -> an app on `port`. */
export async function route(gw: GatewayProcess, name: string, port: number): Promise<string> {
  const c = await gw.admin('PUT', `/v1/hosts/01/containers/${name}`, { app: name, port });
  if (c.status !== 200) throw new Error(`register container: ${c.status} ${c.body}`);
  const t = await gw.admin('PUT', `/v1/tenants/${name}`, { targets: [{ host: '01', container: name }] });
  if (t.status !== 200) throw new Error(`register tenant: ${t.status} ${t.body}`);
  return `${name}.test.priv`;
}
