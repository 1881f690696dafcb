/**
 * `npm run bench`: tenant-gateway next to nginx, HAProxy and dnsmasq, in one run on 127.0.0.1.
 *
 *   npm run bench                                   everything (about 10 minutes on 2 cores)
 *   npm run bench -- --only http,dns --duration 5 --rounds 3
 *   npm run bench -- --only https                   HTTPS at the edge, one certificate for all
 *   npm run bench -- --help
 *
 * Writes a table to stdout, bench/results/<date>.json and bench/RESULTS.md. Reports, never
 * asserts: a missed target is printed as such and the exit code stays 0. Every process it
 * starts is stopped by PID, on failure and on Ctrl-C too.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureTools, type Tool } from './deps.js';
import { measureDns, startDnsmasq, startProjectDns, type DnsServer } from './dns.js';
import { measureFreshness } from './freshness.js';
import { measurePhase, phases, type PhaseId } from './http.js';
import { installCleanupHooks, removeTempDirs, run, stop, stopAll, type Proc } from './proc.js';
import { profileProject } from './profile.js';
import { render, type Machine, type Results } from './report.js';
import { measureScale } from './scale.js';
import {
  ALL_STACKS,
  DOMAIN,
  directStack,
  makeCertificate,
  projectUnavailable,
  startApp,
  startHaproxy,
  startNginx,
  startProject,
  type Env,
  type Stack,
  type StackId,
  type Tls,
} from './stacks.js';
import { measureWebSockets } from './ws.js';
import { startZooKeeper, type ZooKeeper } from './zookeeper.js';

const SECTIONS = ['http', 'https', 'close', 'stream', 'ws', 'dns', 'freshness', 'scale', 'profile'] as const;
type Section = (typeof SECTIONS)[number];
const PHASE_SECTION: Record<PhaseId, Section> = { keepalive: 'http', https: 'https', close: 'close', stream: 'stream' };

const HELP = `npm run bench -- [flags]

  --only LIST          sections, comma-separated: ${SECTIONS.join(', ')} (default: all)
  --stacks LIST        HTTP stacks: ${ALL_STACKS.join(', ')} (default: all)
  --duration S         seconds per measured load run (default 5; close/stream runs use half)
  --rounds N           interleaved rounds per figure, medians reported (default 3)
  --connections N      wrk connections (default 64)
  --threads N          wrk threads (default 1: the machine has 2 cores to share)
  --ws N               WebSocket connections to hold open (default 1000)
  --registrations N    freshness: registrations per case (default 200)
  --registries LIST    freshness: file (a temp file registry), zk (a ZooKeeper started with
                       scripts/zookeeper.sh) or zk://host:port/chroot (a fresh chroot suffix is
                       added per run) (default: file,zk)
  --tenants N          scale: tenants to register (default 100000)
  --hosts N            scale: distinct tenant hosts to request (default 10000)
  --register-budget S  scale: stop registering after S seconds (default 300)
  --register-concurrency N  scale: registration calls in flight (default 256)
  --scale-registry R   scale: file, zk or a zk:// URL, as for --registries (default file)
  --no-write           print only; do not write bench/results/*.json or bench/RESULTS.md
`;

function options() {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      stacks: { type: 'string' },
      duration: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '3' },
      connections: { type: 'string', default: '64' },
      threads: { type: 'string', default: '1' },
      ws: { type: 'string', default: '1000' },
      registrations: { type: 'string', default: '200' },
      registries: { type: 'string', default: 'file,zk' },
      tenants: { type: 'string', default: '100000' },
      hosts: { type: 'string', default: '10000' },
      'register-budget': { type: 'string', default: '300' },
      'register-concurrency': { type: 'string', default: '256' },
      'scale-registry': { type: 'string', default: 'file' },
      'no-write': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  const num = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}; got ${JSON.stringify(v)}`);
    return n;
  };
  const list = <T extends string>(name: string, v: string | undefined, all: readonly T[]): T[] => {
    if (v === undefined) return [...all];
    const items = v.split(',').map((x) => x.trim()).filter((x) => x !== '');
    const bad = items.filter((x) => !all.includes(x as T));
    if (bad.length > 0) throw new Error(`--${name}: unknown ${bad.join(', ')}; choose from ${all.join(', ')}`);
    return items as T[];
  };
  return {
    sections: new Set(list<Section>('only', values.only, SECTIONS)),
    stacks: list<StackId>('stacks', values.stacks, ALL_STACKS),
    duration: num('duration', values.duration, 1),
    rounds: Math.round(num('rounds', values.rounds, 1)),
    connections: Math.round(num('connections', values.connections, 1)),
    threads: Math.round(num('threads', values.threads, 1)),
    ws: Math.round(num('ws', values.ws, 1)),
    registrations: Math.round(num('registrations', values.registrations, 1)),
    registries: values.registries.split(',').map((x) => x.trim()).filter((x) => x !== ''),
    tenants: Math.round(num('tenants', values.tenants, 1)),
    hosts: Math.round(num('hosts', values.hosts, 1)),
    registerBudget: num('register-budget', values['register-budget'], 1),
    registerConcurrency: Math.round(num('register-concurrency', values['register-concurrency'], 1)),
    scaleRegistry: values['scale-registry'],
    write: !values['no-write'],
  };
}

const log = (line: string): void => void process.stderr.write(`${line}\n`);

/** First and last line of an error (the last is usually the child's own complaint). */
function oneLine(err: unknown): string {
  const lines = (err instanceof Error ? err.message : String(err)).split('\n').map((l) => l.trim()).filter((l) => l !== '');
  return lines.length <= 1 ? (lines[0] ?? '') : `${lines[0]} ... ${lines.at(-1)}`;
}

async function machine(tools: Partial<Record<Tool, string>>): Promise<Machine> {
  const versions: Record<string, string> = {};
  const ask = async (name: string, cmd: string | undefined, args: string[], re: RegExp): Promise<void> => {
    if (cmd === undefined) return;
    const r = await run(cmd, args, 10_000);
    const m = re.exec(r.stdout + r.stderr);
    if (m?.[1]) versions[name] = m[1];
  };
  await ask('nginx', tools.nginx, ['-v'], /nginx\/([\d.]+)/);
  await ask('HAProxy', tools.haproxy, ['-v'], /version ([\d.]+)/);
  await ask('wrk', tools.wrk, ['-v'], /wrk ([^\s]+)/);
  await ask('dnsperf', tools.dnsperf, ['-h'], /Version ([\d.]+)/);
  await ask('dnsmasq', tools.dnsmasq, ['-v'], /version ([\d.]+)/);
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    nproc: os.availableParallelism(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU',
    node: process.version,
    kernel: os.release(),
    tools: versions,
    loadStart: os.loadavg()[0] ?? 0,
  };
}

/**
 * Runs `fn` against a registry named on the command line: "file" (undefined: the project
 * stack makes a temp file registry), "zk" (a ZooKeeper started here, stopped after) or a
 * zk:// URL, to which a fresh chroot suffix is added so earlier runs' records do not count.
 */
async function withRegistry<T>(env: Env, reg: string, fn: (url: string | undefined) => Promise<T>): Promise<T> {
  const stamp = Date.now().toString(36);
  if (reg === 'file') return fn(undefined);
  if (reg.startsWith('zk://')) return fn(`${reg.replace(/\/+$/, '')}-bench-${stamp}`);
  if (reg !== 'zk') throw new Error(`registry ${JSON.stringify(reg)} is not file, zk or a zk:// URL`);
  const zk: ZooKeeper = await startZooKeeper(env);
  try {
    return await fn(zk.url(`tgw-bench-${stamp}`));
  } finally {
    await zk.stop();
  }
}

async function main(): Promise<void> {
  const o = options();
  installCleanupHooks();
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
  const has = (s: Section): boolean => o.sections.has(s);
  const httpPhases = (['http', 'https', 'close', 'stream'] as const).filter(has);
  const needHttpStacks = httpPhases.length > 0 || has('ws');

  const wanted: Tool[] = [];
  if (needHttpStacks || has('profile')) wanted.push('wrk');
  if (needHttpStacks && o.stacks.includes('nginx')) wanted.push('nginx');
  if (needHttpStacks && o.stacks.includes('haproxy')) wanted.push('haproxy');
  if (has('dns')) wanted.push('dnsperf', 'dnsmasq');
  const tools = await ensureTools(wanted, log);
  const env: Env = { root, tools, log };
  const notes = [...tools.notes];
  for (const n of tools.notes) log(`bench: ${n}`);

  const projectMissing = await projectUnavailable(env);
  if (projectMissing !== undefined) {
    notes.push(`tenant-gateway skipped: ${projectMissing} (run npm run build first)`);
    log(`bench: tenant-gateway skipped: ${projectMissing}`);
  }

  const results: Results = {
    machine: await machine(tools.path),
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    settings: { duration: o.duration, rounds: o.rounds, connections: o.connections, threads: o.threads, stacks: o.stacks },
    notes,
    http: [],
    ws: [],
    freshness: [],
  };

  const app = await startApp(env);
  try {
    // ---- HTTP stacks, all started once, measured interleaved ---------------------------
    /** With `tls`, each edge also serves HTTPS with that certificate (`direct` does not). */
    const starters: Record<StackId, (tls?: Tls) => Promise<Stack | string>> = {
      project: async (tls) => projectMissing ?? startProject(env, app.port, { tls }),
      nginx: async (tls) => (tools.path.nginx ? startNginx(env, app.port, tls) : 'nginx is not installed'),
      haproxy: async (tls) => (tools.path.haproxy ? startHaproxy(env, app.port, tls) : 'haproxy is not installed'),
      direct: async () => directStack(app.port),
    };
    /** Starts each stack; one that cannot start is noted (once) and left out. */
    const startStacks = async (ids: StackId[], tls?: Tls): Promise<Stack[]> => {
      const stacks: Stack[] = [];
      for (const id of ids) {
        try {
          const s = await starters[id](tls);
          if (typeof s !== 'string') stacks.push(s);
          else if (!notes.some((n) => n.startsWith(`${id}: skipped`))) notes.push(`${id}: skipped (${s})`);
        } catch (err) {
          if (!notes.some((n) => n.startsWith(`${id}: skipped`))) notes.push(`${id}: skipped, it did not start: ${oneLine(err)}`);
          log(`bench: ${id} did not start: ${(err as Error).message}`);
        }
      }
      return stacks;
    };

    // ---- HTTP: all stacks started once, measured interleaved ------------------------------
    if (httpPhases.length > 0) {
      if (tools.path.wrk === undefined) notes.push('HTTP sections skipped: wrk is not available');
      else {
        // HTTPS: one certificate for the run, served by every edge (the HTTP ports stay as they are).
        let tls: Tls | undefined;
        if (has('https')) {
          try {
            tls = await makeCertificate(env);
          } catch (err) {
            notes.push(`HTTPS skipped: no certificate: ${oneLine(err)}`);
            log(`bench: HTTPS skipped: ${(err as Error).message}`);
          }
        }
        const stacks = await startStacks(o.stacks, tls);
        if (tls !== undefined) {
          const served = stacks.filter((s) => s.tlsNegotiated !== undefined).map((s) => `${s.id} ${s.tlsNegotiated ?? ''}`);
          notes.push(
            `HTTPS: TLS at the edge only (edge -> local proxy stays HTTP); every edge serves the same scripts/dev-ca.sh certificate (*.${DOMAIN}, ECDSA P-256, SHA-256 ${tls.fingerprint.slice(0, 23)}...), checked against the run's CA before measuring. wrk connects to https://127.0.0.1:port (its SNI is the IP, so each edge answers with its default certificate) with the tenant's Host, one handshake per connection. Negotiated with a client without SNI: ${served.join('; ')}.`,
          );
        }
        try {
          const settings = { wrk: tools.path.wrk, rounds: o.rounds, threads: o.threads, warmupS: Math.min(2, o.duration), log };
          for (const phase of phases(o.duration, o.connections)) {
            if (!has(PHASE_SECTION[phase.id]) || (phase.tls === true && tls === undefined)) continue;
            results.http.push(await measurePhase(stacks, phase, settings));
          }
        } finally {
          for (const s of stacks) await s.stop();
        }
      }
    }

    // ---- WebSocket memory: fresh stacks, so the HTTP load's heap growth is not counted -----
    if (has('ws')) {
      log(`WebSocket: ${o.ws} connections held open per stack`);
      const stacks = await startStacks(o.stacks.filter((id) => id !== 'direct'));
      try {
        for (const stack of stacks) {
          const w = await measureWebSockets(stack, o.ws, log);
          log(`  ${stack.id.padEnd(8)} ${w.opened}/${w.wanted} open, proxies RSS ${w.rssIdleMiB.toFixed(1)} -> ${w.rssOpenMiB.toFixed(1)} MiB (${w.kibPerConnection.toFixed(1)} KiB/conn)`);
          results.ws.push(w);
        }
      } finally {
        for (const s of stacks) await s.stop();
      }
    }

    // ---- DNS ----------------------------------------------------------------------------
    if (has('dns')) {
      if (tools.path.dnsperf === undefined) notes.push('DNS skipped: dnsperf is not available');
      else {
        const servers: DnsServer[] = [];
        const owners: Proc[] = [];
        try {
          if (projectMissing === undefined) {
            const ours = await startProjectDns(env);
            owners.push(ours.owner);
            servers.push(ours);
          }
          if (tools.path.dnsmasq !== undefined) servers.push(await startDnsmasq(tools.path.dnsmasq));
          results.dns = await measureDns(servers, { dnsperf: tools.path.dnsperf, rounds: o.rounds, durationS: o.duration, warmupS: Math.min(2, o.duration), log });
        } catch (err) {
          notes.push(`DNS: ${oneLine(err)}`);
          log(`bench: DNS failed: ${(err as Error).message}`);
        } finally {
          for (const p of [...servers.map((s) => s.proc), ...owners]) await stop(p);
        }
      }
    }

    // ---- freshness, scale, profile: the project alone --------------------------------------
    if (projectMissing === undefined) {
      if (has('freshness')) {
        log(`Freshness: ${o.registrations} registrations per case`);
        for (const reg of o.registries) {
          try {
            const cases = await withRegistry(env, reg, (url) => measureFreshness(env, app.port, url, o.registrations));
            results.freshness.push(...cases);
          } catch (err) {
            notes.push(`freshness (${reg}): ${oneLine(err)}`);
            log(`bench: freshness on ${reg} failed: ${(err as Error).message}`);
          }
        }
      }
      if (has('scale')) {
        log(`Scale (${o.scaleRegistry} registry): registering ${o.tenants} tenants, then requesting ${o.hosts} distinct hosts`);
        try {
          results.scale = await withRegistry(env, o.scaleRegistry, (url) =>
            measureScale(env, app.port, url, {
              tenants: o.tenants,
              hostsRequested: o.hosts,
              registerConcurrency: o.registerConcurrency,
              registerBudgetS: o.registerBudget,
              samples: 1000,
            }),
          );
        } catch (err) {
          notes.push(`scale: ${oneLine(err)}`);
          log(`bench: scale failed: ${(err as Error).message}`);
        }
      }
      if (has('profile') && tools.path.wrk !== undefined) {
        log('Profile: gateway and local proxy under node --cpu-prof, keep-alive load');
        try {
          results.profile = await profileProject(env, app.port, tools.path.wrk, o.duration, o.connections, path.join(root, 'bench/results'));
        } catch (err) {
          notes.push(`profile: ${oneLine(err)}`);
          log(`bench: profile failed: ${(err as Error).message}`);
        }
      }
    }
  } finally {
    await stop(app.proc);
    await stopAll();
    removeTempDirs();
  }

  results.machine.loadEnd = os.loadavg()[0] ?? 0;
  const text = render(results);
  process.stdout.write(`\n${text}`);
  if (o.write) {
    const dir = path.join(root, 'bench/results');
    fs.mkdirSync(dir, { recursive: true });
    const json = path.join(dir, `${results.machine.date.replace(/:/g, '-')}.json`);
    fs.writeFileSync(json, `${JSON.stringify(results, null, 2)}\n`);
    fs.writeFileSync(path.join(root, 'bench/RESULTS.md'), `<!-- written by npm run bench; paste into the README -->\n${text}`);
    log(`\nwrote ${path.relative(process.cwd(), json)} and bench/RESULTS.md`);
  }
}

main().catch(async (err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  await stopAll();
  removeTempDirs();
  process.exit(1);
});
