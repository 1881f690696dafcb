/**
 * tenant-gateway as users run it: `bin/tenant-gateway.js` as a child process, its JSON log
 * lines collected, its bound ports read from them. Tests stop what they start by PID
 * (`stopCli`), also after a failure.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/tenant-gateway.js');

export interface CliProcess {
  child: ChildProcess;
  /** stdout, one parsed JSON object per line ({text} for a line that is not JSON). */
  lines: Record<string, unknown>[];
  stderr(): string;
  /** The exit code (null when killed by a signal). */
  exited: Promise<number | null>;
}

/** `cmd args`, run with `nofile` file descriptors when prlimit exists; as they are otherwise. */
export function withFdLimit(nofile: number | undefined, cmd: string, args: string[]): [string, string[]] {
  if (nofile === undefined || spawnSync('prlimit', ['--version']).status !== 0) return [cmd, args];
  return ['prlimit', [`--nofile=${nofile}:${nofile}`, cmd, ...args]];
}

export function runCli(args: string[], env: Record<string, string> = {}, opts: { nofile?: number } = {}): CliProcess {
  const [cmd, argv] = withFdLimit(opts.nofile, process.execPath, [BIN, ...args]);
  const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ text: line });
      }
    }
  });
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, lines, stderr: () => err, exited };
}

/** The port a role reported in its `listening` log line, once it has. */
export function boundPort(p: CliProcess, role: string): number | undefined {
  const line = p.lines.find((l) => l.msg === 'listening' && l.role === role);
  return line ? Number(String(line.address).split(':').pop()) : undefined;
}

/** Kills it (SIGKILL) unless it already exited; resolves when it has. */
export async function stopCli(p: CliProcess): Promise<void> {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await p.exited;
}
