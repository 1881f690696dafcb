/**
 * Processes the benchmark starts, and what it reads about them from /proc.
 *
 * Guarantees: every child is registered here the moment it is spawned and is stopped by its
 * PID (never by name) on `stopAll()`, on normal exit, on SIGINT/SIGTERM and on an uncaught
 * error. Children listen on 127.0.0.1 only (the configs and flags the callers pass say so).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface Proc {
  name: string;
  pid: number;
  child: ChildProcess;
  /** Last lines of stdout+stderr, for error messages. */
  tail(): string;
  /** Resolves when the process has exited (immediately if it already has). */
  exited: Promise<number | null>;
  /** Resolves when it has exited and its output pipes are drained. */
  closed: Promise<void>;
}

const running = new Set<Proc>();
const tempDirs = new Set<string>();
/** Processes started for us by a helper script (e.g. a JVM): SIGKILLed by PID if the run dies. */
const adopted = new Set<number>();

export function adopt(pid: number): void {
  adopted.add(pid);
}

export function disown(pid: number): void {
  adopted.delete(pid);
}

export interface StartOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

export function start(name: string, cmd: string, args: string[], opts: StartOptions = {}): Proc {
  const child = spawn(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let spawnError: Error | undefined;
  child.on('error', (err) => (spawnError = err));
  if (child.pid === undefined) throw new Error(`${name}: could not start ${cmd}${spawnError ? `: ${spawnError.message}` : ' (is it installed?)'}`);
  let tail = '';
  const keep = (b: Buffer): void => {
    tail = (tail + b.toString('utf8')).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      running.delete(proc);
      resolve(code);
    });
  });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const proc: Proc = { name, pid: child.pid, child, tail: () => tail, exited, closed };
  running.add(proc);
  return proc;
}

/** SIGTERM, then SIGKILL after `graceMs`; by PID only. */
export async function stop(proc: Proc, graceMs = 3000): Promise<void> {
  if (!running.has(proc)) return;
  try {
    process.kill(proc.pid, 'SIGTERM');
  } catch {
    running.delete(proc);
    return;
  }
  const timer = setTimeout(() => {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }, graceMs);
  await proc.exited;
  clearTimeout(timer);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => stop(p)));
}

/** Synchronous last resort (process 'exit'): SIGKILL every child still registered. */
function killAllSync(): void {
  for (const p of running) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  running.clear();
  for (const pid of adopted) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  adopted.clear();
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

let hooked = false;
/** Install once: children and temp dirs are cleaned up however the run ends. */
export function installCleanupHooks(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAllSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping ${running.size} process(es)\n`);
      killAllSync();
      process.exit(130);
    });
  }
}

export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tgw-bench-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

/** A port that was free on 127.0.0.1 a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` until it returns true or the deadline passes; the error names `what`. */
export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, proc?: Proc): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc !== undefined && !running.has(proc)) {
      throw new Error(`${what}: ${proc.name} exited early. Its output:\n${proc.tail()}`);
    }
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) {
      throw new Error(`${what}: not ready after ${timeoutMs} ms${proc ? `. ${proc.name} output:\n${proc.tail()}` : ''}`);
    }
    await sleep(50);
  }
}

export function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(500);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(false));
  });
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU time of one process (all its threads), microseconds, resolution 1/CLK_TCK s. */
export interface CpuTimes {
  user: number;
  sys: number;
}

export function cpuTimes(pid: number): CpuTimes {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Field 2 (comm) may contain spaces; the fields after the last ')' are fixed (proc(5)).
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: (Number(rest[11]) * 1e6) / CLK_TCK, sys: (Number(rest[12]) * 1e6) / CLK_TCK };
}

/** utime+stime of one process, in microseconds. */
export function cpuMicros(pid: number): number {
  const t = cpuTimes(pid);
  return t.user + t.sys;
}

/** Resident set size of one process, in bytes. */
export function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

export function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  const out = r.stdout.trim();
  return r.status === 0 && out !== '' ? out : undefined;
}

/**
 * Runs a command to completion, killed (by PID) after `timeoutMs`; stdout and stderr as text.
 * Registered like every other child, so an interrupted run stops it too.
 */
export async function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
  env?: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  let proc: Proc;
  try {
    proc = start(cmd, cmd, args, { env });
  } catch (err) {
    return { code: null, stdout, stderr: String(err) };
  }
  proc.child.stdout?.on('data', (b: Buffer) => (stdout += b.toString('utf8')));
  proc.child.stderr?.on('data', (b: Buffer) => (stderr += b.toString('utf8')));
  const timer = setTimeout(() => void stop(proc, 1000), timeoutMs);
  const code = await proc.exited;
  clearTimeout(timer);
  // 'exit' can come before the pipes are drained; a grandchild holding them gets 2 s.
  await Promise.race([proc.closed, sleep(2000)]);
  return { code, stdout, stderr };
}
