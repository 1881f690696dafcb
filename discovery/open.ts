/**
 * `--registry` URL -> backend. The one place that knows which backends exist.
 *   file:<path>                         embedded file registry (default: file:<data-dir>/registry.json)
 *   zk://host:port[,host:port...]/chroot  ZooKeeper
 */
import type { RegistryBackend } from './backend.js';
import { FileBackend } from './file.js';

export interface OpenOptions {
  /** The file registry is written by one process; others open it read-only. */
  writable?: boolean;
  warn?: (msg: string) => void;
}

export async function openBackend(url: string, opts: OpenOptions = {}): Promise<RegistryBackend> {
  if (url.startsWith('file:')) {
    const path = url.slice('file:'.length);
    if (path === '') throw new Error('--registry file: needs a path, e.g. file:./data/registry.json');
    return new FileBackend({ path, writable: opts.writable ?? true });
  }
  if (url.startsWith('zk://')) {
    throw new Error('--registry zk:// is not available yet');
  }
  throw new Error(`--registry must start with file: or zk://; got ${JSON.stringify(url)}`);
}
