/**
 * `--registry` URL -> backend. The one place that knows which backends exist.
 *   file:<path>                         embedded file registry (default: file:<data-dir>/registry.json)
 *   zk://host:port[,host:port...]/chroot  ZooKeeper
 */
import type { RegistryBackend } from './backend.js';
import { FileBackend } from './file.js';
import { ZooKeeperBackend } from './zookeeper.js';

export interface OpenOptions {
  /** The file registry is written by one process; others open it read-only. */
  writable?: boolean;
  warn?: (msg: string) => void;
  /** ZooKeeper: digest credentials "user:password"; created znodes get an ACL for them. */
  zkAuth?: string | undefined;
  /** ZooKeeper: session timeout asked for (the server clamps it to 2-20 ticks). Default 10 s. */
  sessionTimeoutMs?: number | undefined;
  /** ZooKeeper: bound on every registry call, waiting for a reconnect included. Default 3 s. */
  opTimeoutMs?: number | undefined;
}

export async function openBackend(url: string, opts: OpenOptions = {}): Promise<RegistryBackend> {
  if (url.startsWith('file:')) {
    const path = url.slice('file:'.length);
    if (path === '') throw new Error('--registry file: needs a path, e.g. file:./data/registry.json');
    return new FileBackend({ path, writable: opts.writable ?? true, warn: opts.warn });
  }
  if (url.startsWith('zk://')) {
    return new ZooKeeperBackend({
      url,
      zkAuth: opts.zkAuth,
      ...(opts.sessionTimeoutMs !== undefined && { sessionTimeoutMs: opts.sessionTimeoutMs }),
      ...(opts.opTimeoutMs !== undefined && { opTimeoutMs: opts.opTimeoutMs }),
      ...(opts.warn !== undefined && { warn: opts.warn }),
    });
  }
  throw new Error(`--registry must start with file: or zk://; got ${JSON.stringify(url)}`);
}
