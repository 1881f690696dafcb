/**
 * The Debian tools the benchmark drives. Missing ones are installed with apt-get when we are
 * root (after one `apt-get update` if the first try fails); otherwise the stacks that need
 * them are skipped with a line saying so.
 */
import fs from 'node:fs';
import { run, which } from './proc.js';

/** command -> Debian package that ships it. */
const PACKAGES: Record<string, string> = {
  nginx: 'nginx-light',
  haproxy: 'haproxy',
  wrk: 'wrk',
  dnsperf: 'dnsperf',
  dnsmasq: 'dnsmasq-base',
};

export type Tool = 'nginx' | 'haproxy' | 'wrk' | 'dnsperf' | 'dnsmasq';

/** Absolute path of each tool that is (now) available; a note for each one that is not. */
export interface Tools {
  path: Partial<Record<Tool, string>>;
  notes: string[];
}

export async function ensureTools(wanted: Tool[], log: (s: string) => void): Promise<Tools> {
  const path: Partial<Record<Tool, string>> = {};
  const notes: string[] = [];
  const locate = (): Tool[] => {
    const absent: Tool[] = [];
    for (const t of wanted) {
      const p = which(t) ?? which(`/usr/sbin/${t}`);
      if (p === undefined) absent.push(t);
      else path[t] = p;
    }
    return absent;
  };
  let absent = locate();
  if (absent.length > 0) {
    const pkgs = absent.map((t) => PACKAGES[t] as string);
    if (process.getuid?.() !== 0) {
      notes.push(`not root: cannot install ${pkgs.join(' ')}; install them to bench ${absent.join(', ')}`);
    } else {
      log(`installing ${pkgs.join(' ')} with apt-get`);
      const failure = await aptInstall(pkgs, log);
      if (failure !== undefined) notes.push(failure);
      absent = locate();
    }
  }
  for (const t of absent) notes.push(`${t} is not available: skipping what needs it`);
  return { path, notes };
}

/**
 * apt-get install without starting the packages' services (nginx would take port 80):
 * a policy-rc.d that says "no" is put in place for the install when none exists.
 * Returns a failure message, or undefined on success.
 */
async function aptInstall(pkgs: string[], log: (s: string) => void): Promise<string | undefined> {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const args = ['-y', '-q', '--no-install-recommends', 'install', ...pkgs];
  const policy = '/usr/sbin/policy-rc.d';
  const ownPolicy = !fs.existsSync(policy);
  if (ownPolicy) fs.writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    let r = await run('apt-get', args, 300_000, env);
    if (r.code !== 0) {
      log('apt-get install failed; running apt-get update and trying again');
      await run('apt-get', ['-q', 'update'], 300_000, env);
      r = await run('apt-get', args, 300_000, env);
    }
    if (r.code === 0) return undefined;
    return `apt-get install ${pkgs.join(' ')} failed: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`;
  } finally {
    if (ownPolicy) fs.rmSync(policy, { force: true });
  }
}
