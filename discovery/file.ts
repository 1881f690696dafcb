/**
 * The embedded registry: one JSON file, owned (written) by one process, readable by others.
 *
 * Guarantees:
 * - A write is acknowledged only after the new file is on disk (write temp, fsync, rename,
 *   fsync the directory), so an acknowledged registration survives a crash or restart.
 * - Concurrent writes are coalesced into one file write; order is the order of the calls.
 * - A file that does not parse stops start-up with a message naming it; it is never emptied.
 * - Ephemeral records (a running local proxy's host, a gateway) are written too, so readers
 *   see them, and dropped by the next owner at start: their writer is gone.
 * - One owner at a time: `<file>.lock` holds the owner's pid.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  KINDS,
  RegistryCorruptError,
  RegistryUnavailableError,
  type BackendStatus,
  type ChangeEvent,
  type Kind,
  type ListOptions,
  type ListResult,
  type PutOptions,
  type RegistryBackend,
} from './backend.js';

interface FileState {
  version: 1;
  hosts: Record<string, object>;
  containers: Record<string, object>;
  tenants: Record<string, object>;
  gateways: Record<string, object>;
  certificates: Record<string, object>;
  /** "kind/key" of records that belong to the running owner only. */
  ephemeral: string[];
}

type Maps = Record<Kind, Map<string, object>>;

/** Registry files this process holds the lock of (a pid check cannot tell two owners in one process apart). */
const ownedHere = new Set<string>();

export interface FileBackendOptions {
  path: string;
  /** false: read the file and follow its changes, never write (other processes on one machine). */
  writable?: boolean;
}

export class FileBackend implements RegistryBackend {
  readonly description: string;
  readonly #path: string;
  readonly #writable: boolean;
  readonly #events = new EventEmitter();
  #maps: Maps = emptyMaps();
  /** Ephemeral records written by this process ("kind/key"). */
  readonly #ephemeral = new Set<string>();
  #syncedAt: number | null = null;
  #lockHeld = false;
  #watcher: fs.FSWatcher | undefined;
  /** Coalesced flush: the write in progress, and whether another is needed after it. */
  #flushing: Promise<void> | undefined;
  #flushAgain: Promise<void> | undefined;
  #closed = false;

  constructor(opts: FileBackendOptions) {
    this.#path = path.resolve(opts.path);
    this.#writable = opts.writable ?? true;
    this.description = `file:${this.#path}`;
    this.#events.setMaxListeners(0);
  }

  async start(): Promise<void> {
    await fsp.mkdir(path.dirname(this.#path), { recursive: true });
    if (this.#writable) {
      await this.#lock();
      const state = await this.#read();
      // Ephemeral records were the previous owner's; it is gone (we hold the lock).
      for (const ref of state?.ephemeral ?? []) {
        const slash = ref.indexOf('/');
        this.#maps[ref.slice(0, slash) as Kind]?.delete(ref.slice(slash + 1));
      }
      if (state === undefined || state.ephemeral.length > 0) await this.#flush();
    } else {
      await this.#read();
      this.#follow();
    }
    this.#syncedAt = Date.now();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher?.close();
    if (this.#writable) {
      for (const ref of this.#ephemeral) {
        const slash = ref.indexOf('/');
        this.#maps[ref.slice(0, slash) as Kind].delete(ref.slice(slash + 1));
      }
      this.#ephemeral.clear();
      await this.#flush().catch(() => {});
      if (this.#lockHeld) {
        await fsp.rm(this.#lockPath, { force: true });
        ownedHere.delete(this.#path);
      }
    }
  }

  async get(kind: Kind, key: string): Promise<unknown> {
    return this.#maps[kind].get(key);
  }

  async put(kind: Kind, key: string, value: object, opts: PutOptions = {}): Promise<void> {
    this.#assertWritable();
    this.#maps[kind].set(key, value);
    const ref = `${kind}/${key}`;
    if (opts.ephemeral) this.#ephemeral.add(ref);
    else this.#ephemeral.delete(ref);
    this.#emit({ kind, key });
    await this.#flush();
  }

  async delete(kind: Kind, key: string): Promise<boolean> {
    this.#assertWritable();
    const existed = this.#maps[kind].delete(key);
    this.#ephemeral.delete(`${kind}/${key}`);
    if (!existed) return false;
    this.#emit({ kind, key });
    await this.#flush();
    return true;
  }

  async list(kind: Kind, opts: ListOptions = {}): Promise<ListResult> {
    let keys = [...this.#maps[kind].keys()];
    if (kind === 'containers' && opts.parent !== undefined) {
      const prefix = `${opts.parent}/`;
      keys = keys.filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
    }
    keys.sort();
    if (opts.after !== undefined) {
      const after = opts.after;
      keys = keys.filter((k) => k > after);
    }
    const limit = opts.limit ?? Infinity;
    if (keys.length <= limit) return { keys };
    keys = keys.slice(0, limit);
    return { keys, next: keys[keys.length - 1] };
  }

  onChange(listener: (ev: ChangeEvent) => void): () => void {
    this.#events.on('change', listener);
    return () => this.#events.off('change', listener);
  }

  status(): BackendStatus {
    return {
      backend: this.description,
      connected: !this.#closed,
      syncedAt: this.#syncedAt,
      detail: this.#writable ? 'owner (read-write)' : 'reader (follows the owner\'s writes)',
    };
  }

  get #lockPath(): string {
    return `${this.#path}.lock`;
  }

  #emit(ev: ChangeEvent): void {
    this.#events.emit('change', ev);
  }

  #assertWritable(): void {
    if (!this.#writable) {
      throw new RegistryUnavailableError(
        `the file registry ${this.#path} is read-only in this process: register through the process that owns it (tenant-gateway up), or use --registry zk://...`,
      );
    }
    if (this.#closed) throw new RegistryUnavailableError('registry is closed (shutting down)');
  }

  async #lock(): Promise<void> {
    if (ownedHere.has(this.#path)) {
      throw new RegistryUnavailableError(`the file registry ${this.#path} is already open for writing in this process`);
    }
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await fsp.writeFile(this.#lockPath, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
        this.#lockHeld = true;
        ownedHere.add(this.#path);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = Number((await fsp.readFile(this.#lockPath, 'utf8').catch(() => '')).trim());
        if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
          throw new RegistryUnavailableError(
            `the file registry ${this.#path} is owned by process ${pid}; stop it first, or run this process as a reader`,
          );
        }
        await fsp.rm(this.#lockPath, { force: true }); // stale: its owner is gone
      }
    }
    throw new RegistryUnavailableError(`could not lock ${this.#lockPath}`);
  }

  /** Readers: the file version in memory (the owner renames a new inode into place per write). */
  #loadedIno: number | undefined;
  #reloading: Promise<void> | undefined;

  /** Loads the file into memory; undefined when it does not exist yet. */
  async #read(): Promise<FileState | undefined> {
    let text: string;
    let ino: number;
    try {
      const fh = await fsp.open(this.#path, 'r');
      try {
        ino = (await fh.stat()).ino;
        text = await fh.readFile('utf8');
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const state = parseState(text, this.#path);
    this.#loadedIno = ino;
    this.#maps = {
      hosts: new Map(Object.entries(state.hosts)),
      containers: new Map(Object.entries(state.containers)),
      tenants: new Map(Object.entries(state.tenants)),
      gateways: new Map(Object.entries(state.gateways)),
      certificates: new Map(Object.entries(state.certificates)),
    };
    return state;
  }

  /** Readers: reload when the owner renames a new file into place. */
  #follow(): void {
    const base = path.basename(this.#path);
    let pending = false;
    this.#watcher = fs.watch(path.dirname(this.#path), (_event, file) => {
      if (file !== base || pending) return;
      pending = true;
      // Events of one rename arrive together: one reload for them, as soon as possible.
      setImmediate(() => {
        pending = false;
        void this.#reload();
      });
    });
    this.#watcher.unref();
  }

  /** Re-reads the file, once at a time; every kind may have changed. Never rejects. */
  #reload(): Promise<void> {
    this.#reloading ??= this.#read()
      .then(() => {
        this.#syncedAt = Date.now();
        for (const kind of KINDS) this.#emit({ kind });
      })
      .catch((err: Error) => process.emitWarning(`file registry reload failed, keeping the last good state: ${err.message}`))
      .finally(() => (this.#reloading = undefined));
    return this.#reloading;
  }

  /** Readers: reload now when the owner has written a newer file than the one in memory. */
  async sync(): Promise<void> {
    if (this.#writable || this.#closed) return;
    if (this.#reloading !== undefined) return this.#reloading;
    const ino = await fsp.stat(this.#path).then((st) => st.ino, () => undefined);
    if (ino !== undefined && ino !== this.#loadedIno) await this.#reload();
  }

  /** Resolves once a file write that started after this call has completed. */
  #flush(): Promise<void> {
    if (!this.#flushing) {
      this.#flushing = this.#write().finally(() => (this.#flushing = undefined));
      return this.#flushing;
    }
    // A write is in progress with older state: queue exactly one more behind it.
    this.#flushAgain ??= this.#flushing
      .catch(() => {})
      .then(() => {
        this.#flushAgain = undefined;
        return this.#flush();
      });
    return this.#flushAgain;
  }

  async #write(): Promise<void> {
    const state: FileState = {
      version: 1,
      hosts: Object.fromEntries(this.#maps.hosts),
      containers: Object.fromEntries(this.#maps.containers),
      tenants: Object.fromEntries(this.#maps.tenants),
      gateways: Object.fromEntries(this.#maps.gateways),
      certificates: Object.fromEntries(this.#maps.certificates),
      ephemeral: [...this.#ephemeral],
    };
    const tmp = `${this.#path}.${process.pid}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(state, null, 1));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, this.#path);
    const dir = await fsp.open(path.dirname(this.#path), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.#syncedAt = Date.now();
  }
}

function emptyMaps(): Maps {
  return { hosts: new Map(), containers: new Map(), tenants: new Map(), gateways: new Map(), certificates: new Map() };
}

function parseState(text: string, file: string): FileState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new RegistryCorruptError(
      `registry file ${file} is not valid JSON (${(err as Error).message}); fix or move it away (it is left untouched)`,
    );
  }
  const bad = (why: string) =>
    new RegistryCorruptError(`registry file ${file} is not a tenant-gateway registry: ${why}; fix or move it away (it is left untouched)`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('top level is not an object');
  const o = raw as Record<string, unknown>;
  if (o.version !== 1) throw bad(`unsupported version ${JSON.stringify(o.version)}`);
  // Kinds added after a file was written start empty (certificates came after version 1).
  o.certificates ??= {};
  for (const kind of KINDS) {
    const v = o[kind];
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`"${kind}" is not an object`);
  }
  const eph = o.ephemeral ?? [];
  if (!Array.isArray(eph) || !eph.every((e) => typeof e === 'string')) throw bad('"ephemeral" is not a list of strings');
  return { ...(o as unknown as FileState), ephemeral: eph as string[] };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
