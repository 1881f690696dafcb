/**
 * A standalone ZooKeeper for the freshness section, started and stopped with the project's
 * scripts/zookeeper.sh (it installs Debian's package when missing and stops by PID). The JVM's
 * PID is adopted so an interrupted run still ends it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { adopt, disown, freePort, run, tempDir } from './proc.js';
import type { Env } from './stacks.js';

export interface ZooKeeper {
  /** zk://127.0.0.1:P/<chroot> */
  url(chroot: string): string;
  stop(): Promise<void>;
}

export async function startZooKeeper(env: Env): Promise<ZooKeeper> {
  const script = path.join(env.root, 'scripts/zookeeper.sh');
  if (!fs.existsSync(script)) throw new Error('scripts/zookeeper.sh is missing');
  const port = await freePort();
  const dir = tempDir('zk');
  const r = await run('bash', [script, 'start', '--port', String(port), '--dir', dir], 180_000);
  const pidFile = path.join(dir, 'node1/pid');
  const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) : NaN;
  if (Number.isInteger(pid)) adopt(pid);
  const stop = async (): Promise<void> => {
    await run('bash', [script, 'stop', '--port', String(port), '--dir', dir, '--keep'], 30_000);
    if (Number.isInteger(pid)) disown(pid);
  };
  if (r.code !== 0) {
    await stop();
    throw new Error(`scripts/zookeeper.sh start failed: ${r.stderr.trim().split('\n').slice(-3).join(' ')}`);
  }
  const connect = r.stdout.trim();
  return { url: (chroot) => `zk://${connect}/${chroot}`, stop };
}
