/**
 * A real ZooKeeper for tests, through scripts/zookeeper.sh: a standalone server or a 3-node
 * ensemble on free ports, data in its own temp dir, members stopped, restarted and paused by
 * PID. stop() removes everything it started, also after a failed test (call it in t.after).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The repository root: the nearest parent holding scripts/zookeeper.sh. */
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(dir, 'scripts', 'zookeeper.sh'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('scripts/zookeeper.sh not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export const ZOOKEEPER_SH = path.join(repoRoot(), 'scripts', 'zookeeper.sh');

export interface ZooKeeperOptions {
  nodes?: 1 | 3;
  /** Server tickTime; sessions may last 2-20 ticks. Default 250 ms (sessions of 0.5-5 s). */
  tickMs?: number;
}

export class ZooKeeperServer {
  readonly port: number;
  readonly nodes: number;
  readonly dir: string;
  /** "127.0.0.1:P[,127.0.0.1:P+1,...]" */
  connectString = '';
  #stopped = false;

  readonly tickMs: number;

  private constructor(port: number, nodes: number, dir: string, tickMs: number) {
    this.port = port;
    this.nodes = nodes;
    this.dir = dir;
    this.tickMs = tickMs;
  }

  static async start(opts: ZooKeeperOptions = {}): Promise<ZooKeeperServer> {
    const zk = await ZooKeeperServer.prepare(opts);
    await zk.boot();
    return zk;
  }

  /** Ports and dir chosen, nothing started yet: for "ZooKeeper down at start-up". */
  static async prepare(opts: ZooKeeperOptions = {}): Promise<ZooKeeperServer> {
    const nodes = opts.nodes ?? 1;
    const port = await freePortRange(nodes === 1 ? 1 : 9);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tgw-zk-test-'));
    const zk = new ZooKeeperServer(port, nodes, dir, opts.tickMs ?? 250);
    zk.connectString = Array.from({ length: nodes }, (_, i) => `127.0.0.1:${port + i}`).join(',');
    return zk;
  }

  /** Starts every member and waits until they serve. */
  async boot(): Promise<void> {
    try {
      // The dir exists (mkdtemp) but the script did not create it: stop() removes it, not the script.
      const { stdout } = await this.#script('start', '--nodes', String(this.nodes), '--tick-ms', String(this.tickMs));
      this.connectString = stdout.trim().split('\n').pop() ?? '';
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** "leader", "follower", "standalone", or undefined when member n does not serve. */
  mode(member = 1): Promise<string | undefined> {
    return new Promise((resolve) => {
      const sock = net.connect(this.port + member - 1, '127.0.0.1');
      let out = '';
      sock.setTimeout(2000, () => sock.destroy());
      sock.on('connect', () => sock.end('srvr'));
      sock.on('data', (d: Buffer) => (out += d.toString()));
      sock.on('error', () => {});
      sock.on('close', () => resolve(/^Mode: (\S+)/m.exec(out)?.[1]));
    });
  }

  /** zk://<connect string><chroot> */
  url(chroot: string): string {
    return `zk://${this.connectString}${chroot}`;
  }

  /** PID of member n (1-based), or undefined when it does not run. */
  pid(member = 1): number | undefined {
    try {
      const pid = Number(fs.readFileSync(path.join(this.dir, `node${member}`, 'pid'), 'utf8').trim());
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  async stopMember(member = 1): Promise<void> {
    await this.#script('stop', '--member', String(member));
  }

  /** Starts member n again (same data) and waits until it serves. */
  async startMember(member = 1): Promise<void> {
    await this.#script('start', '--member', String(member));
  }

  /** SIGSTOP: the process keeps its sockets but answers nothing (a hung or partitioned server). */
  pause(member = 1): void {
    const pid = this.pid(member);
    if (pid === undefined) throw new Error(`member ${member} does not run`);
    process.kill(pid, 'SIGSTOP');
  }

  resume(member = 1): void {
    const pid = this.pid(member);
    if (pid !== undefined) process.kill(pid, 'SIGCONT');
  }

  /** Stops every member this fixture started (by PID) and removes its dir. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (let m = 1; m <= this.nodes; m++) this.resume(m);
    try {
      await this.#script('stop');
    } finally {
      await fsp.rm(this.dir, { recursive: true, force: true });
    }
  }

  async #script(...args: string[]): Promise<{ stdout: string; stderr: string }> {
    try {
      return await run('bash', [ZOOKEEPER_SH, ...args, '--port', String(this.port), '--dir', this.dir], { timeout: 90_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`scripts/zookeeper.sh ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}`);
    }
  }
}

/** A free TCP port on 127.0.0.1 (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** `count` consecutive free ports; returns the first. */
export async function freePortRange(count: number): Promise<number> {
  if (count === 1) return freePort();
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    let ok = true;
    for (let p = base; p < base + count && ok; p++) ok = await canBind(p);
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free ports found`);
}
