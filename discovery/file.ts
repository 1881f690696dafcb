/**
 * The embedded registry: a snapshot file and a journal beside it, owned (written) by one
 * process, readable by others.
 *
 *   <file>            the snapshot: every record, as JSON (written temp + fsync + rename)
 *   <file>.journal    the changes since, one JSON line each (appended + fsync)
 *
 * Guarantees:
 * - A write is acknowledged only after its journal line is on disk (fsync), so an
 *   acknowledged registration survives a crash or restart. Concurrent writes share one append
 *   and one fsync; order is the order of the calls. A write costs its own bytes, not the
 *   registry's: 100,000 tenants do not make each registration rewrite 100,000 records.
 * - When the journal outgrows the snapshot (and 4 MiB), a new snapshot is written
 *   (write-then-rename, atomic) and the journal emptied. A crash between the two only replays
 *   lines the snapshot already holds: puts and deletes in order give the same state.
 * - A snapshot that does not parse, or a journal line that does not parse before its last
 *   line, stops start-up with a message naming the file; nothing is emptied. A torn last
 *   journal line (a crash mid-append: never acknowledged) is dropped with a warning.
 * - Ephemeral records (a running local proxy's host, a gateway) are written too, so readers
 *   see them, and dropped by the next owner at start: their writer is gone.
 * - Readers apply the owner's journal lines as they are appended (per-key change events) and
 *   reload when a new snapshot is renamed into place.
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
  warn?: (msg: string) => void;
  /** The journal is folded into a new snapshot past this size (or the snapshot's, if larger). Default 4 MiB. */
  compactAtBytes?: number;
  /** false: read the file and follow its changes, never write (other processes on one machine). */
  writable?: boolean;
}

/** Journal line. */
interface Change {
  op: 'put' | 'delete';
  kind: Kind;
  key: string;
  value?: object;
  ephemeral?: boolean;
}

/** The journal may grow to this before a new snapshot is written, or to the snapshot's size if larger. */
const MIN_COMPACT_BYTES = 4 * 1024 * 1024;

export class FileBackend implements RegistryBackend {
  readonly description: string;
  readonly #path: string;
  readonly #journalPath: string;
  readonly #writable: boolean;
  readonly #events = new EventEmitter();
  readonly #warn: (msg: string) => void;
  readonly #compactAt: number;
  #maps: Maps = emptyMaps();
  /** Ephemeral records ("kind/key"): this process's when owner, the owner's when reader. */
  #ephemeral = new Set<string>();
  #syncedAt: number | null = null;
  #lockHeld = false;
  #watcher: fs.FSWatcher | undefined;
  #closed = false;
  // Owner: journal lines waiting for the next append, the open journal, sizes.
  #pending: string[] = [];
  #journal: fsp.FileHandle | undefined;
  #journalBytes = 0;
  #snapshotBytes = 0;
  /** Coalesced flush: the write in progress, and whether another is needed after it. */
  #flushing: Promise<void> | undefined;
  #flushAgain: Promise<void> | undefined;
  // Reader: which snapshot is loaded, and how far into the journal.
  #snapshotIno: number | undefined;
  #journalIno: number | undefined;
  #journalOffset = 0;
  #catchingUp: Promise<void> | undefined;

  constructor(opts: FileBackendOptions) {
    this.#path = path.resolve(opts.path);
    this.#journalPath = `${this.#path}.journal`;
    this.#writable = opts.writable ?? true;
    this.#warn = opts.warn ?? ((msg) => process.emitWarning(msg));
    this.#compactAt = opts.compactAtBytes ?? MIN_COMPACT_BYTES;
    this.description = `file:${this.#path}`;
    this.#events.setMaxListeners(0);
  }

  async start(): Promise<void> {
    await fsp.mkdir(path.dirname(this.#path), { recursive: true });
    if (this.#writable) {
      await this.#lock();
      try {
        await this.#openAsOwner();
      } catch (err) {
        await this.#journal?.close().catch(() => {});
        await fsp.rm(this.#lockPath, { force: true });
        ownedHere.delete(this.#path);
        this.#lockHeld = false;
        throw err;
      }
    } else {
      await this.#load();
      this.#follow();
    }
    this.#syncedAt = Date.now();
  }

  async #openAsOwner(): Promise<void> {
    const loaded = await this.#load();
    // Ephemeral records were the previous owner's; it is gone (we hold the lock).
    for (const ref of this.#ephemeral) {
      const slash = ref.indexOf('/');
      this.#maps[ref.slice(0, slash) as Kind]?.delete(ref.slice(slash + 1));
    }
    const droppedEphemeral = this.#ephemeral.size > 0;
    this.#ephemeral.clear();
    this.#journal = await fsp.open(this.#journalPath, 'a', 0o600);
    // Start from a clean snapshot and an empty journal (also drops a torn last line).
    if (!loaded.snapshot || loaded.journalLines > 0 || loaded.torn || droppedEphemeral) await this.#compact();
    else this.#snapshotBytes = loaded.snapshotBytes;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher?.close();
    if (this.#writable) {
      for (const ref of this.#ephemeral) {
        const slash = ref.indexOf('/');
        const kind = ref.slice(0, slash) as Kind;
        const key = ref.slice(slash + 1);
        this.#maps[kind].delete(key);
        this.#pending.push(line({ op: 'delete', kind, key }));
      }
      this.#ephemeral.clear();
      await this.#flush().catch(() => {});
      await this.#journal?.close().catch(() => {});
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
    this.#pending.push(line({ op: 'put', kind, key, value, ...(opts.ephemeral ? { ephemeral: true } : {}) }));
    this.#emit({ kind, key });
    await this.#flush();
  }

  async delete(kind: Kind, key: string): Promise<boolean> {
    this.#assertWritable();
    const existed = this.#maps[kind].delete(key);
    this.#ephemeral.delete(`${kind}/${key}`);
    if (!existed) return false;
    this.#pending.push(line({ op: 'delete', kind, key }));
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
      detail: this.#writable ? 'owner (read-write)' : "reader (follows the owner's writes)",
    };
  }

  /** Readers: catch up with the owner's journal and snapshot now. */
  async sync(): Promise<void> {
    if (this.#writable || this.#closed) return;
    await this.#catchUp();
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

  /**
   * Snapshot, then journal, into memory. Throws RegistryCorruptError naming the file when
   * either cannot be used; a torn last journal line is dropped (reported in `torn`).
   */
  async #load(): Promise<{ snapshot: boolean; snapshotBytes: number; journalLines: number; torn: boolean }> {
    const maps = emptyMaps();
    const ephemeral = new Set<string>();
    let snapshot = false;
    let snapshotBytes = 0;
    let snapshotIno: number | undefined;
    const snap = await readWithIno(this.#path);
    if (snap !== undefined) {
      const state = parseState(snap.text, this.#path);
      for (const kind of KINDS) maps[kind] = new Map(Object.entries(state[kind]));
      for (const ref of state.ephemeral) ephemeral.add(ref);
      snapshot = true;
      snapshotBytes = Buffer.byteLength(snap.text);
      snapshotIno = snap.ino;
    }
    const journal = await readWithIno(this.#journalPath);
    let lines = 0;
    let torn = false;
    let offset = 0;
    if (journal !== undefined) {
      // A reader may look while the owner appends: an unterminated last line is simply not there yet.
      const { changes, consumed, tornTail } = parseJournal(journal.text, this.#journalPath, !this.#writable);
      for (const c of changes) applyChange(maps, ephemeral, c);
      lines = changes.length;
      offset = consumed;
      if (tornTail) {
        torn = true;
        this.#warn(`registry journal ${this.#journalPath} ends in a partial line (a write that was never acknowledged); it is dropped`);
      }
    }
    this.#maps = maps;
    this.#ephemeral = ephemeral;
    this.#snapshotIno = snapshotIno;
    this.#journalIno = journal?.ino;
    this.#journalOffset = offset;
    return { snapshot, snapshotBytes, journalLines: lines, torn };
  }

  /** Readers: follow the owner's appends and snapshot renames. */
  #follow(): void {
    const base = path.basename(this.#path);
    const journalBase = path.basename(this.#journalPath);
    let pending = false;
    this.#watcher = fs.watch(path.dirname(this.#path), (_event, file) => {
      if ((file !== base && file !== journalBase) || pending) return;
      pending = true;
      // Events of one write arrive together: one catch-up for them, as soon as possible.
      setImmediate(() => {
        pending = false;
        void this.#catchUp();
      });
    });
    this.#watcher.unref();
  }

  /**
   * Readers: a new snapshot (or a journal that was emptied) -> reload everything; otherwise
   * apply the journal lines appended since the last look, each as a per-key change. Never rejects.
   */
  #catchUp(): Promise<void> {
    this.#catchingUp ??= this.#doCatchUp()
      .catch((err: Error) => this.#warn(`file registry reload failed, keeping the last good state: ${err.message}`))
      .finally(() => (this.#catchingUp = undefined));
    return this.#catchingUp;
  }

  async #doCatchUp(): Promise<void> {
    const snapIno = await fsp.stat(this.#path).then((st) => st.ino, () => undefined);
    const jst = await fsp.stat(this.#journalPath).catch(() => undefined);
    if (snapIno !== this.#snapshotIno || jst === undefined || jst.ino !== this.#journalIno || jst.size < this.#journalOffset) {
      await this.#load();
      this.#syncedAt = Date.now();
      for (const kind of KINDS) this.#emit({ kind });
      return;
    }
    if (jst.size === this.#journalOffset) return;
    const fh = await fsp.open(this.#journalPath, 'r');
    let text: string;
    try {
      const buf = Buffer.alloc(jst.size - this.#journalOffset);
      const { bytesRead } = await fh.read(buf, 0, buf.length, this.#journalOffset);
      text = buf.toString('utf8', 0, bytesRead);
    } finally {
      await fh.close();
    }
    const { changes, consumed } = parseJournal(text, this.#journalPath, true);
    this.#journalOffset += consumed;
    for (const c of changes) {
      applyChange(this.#maps, this.#ephemeral, c);
      this.#emit({ kind: c.kind, key: c.key });
    }
    this.#syncedAt = Date.now();
  }

  /** Resolves once the changes made before this call are on disk. */
  #flush(): Promise<void> {
    if (!this.#flushing) {
      this.#flushing = this.#write().finally(() => (this.#flushing = undefined));
      return this.#flushing;
    }
    // A write is in progress: queue exactly one more behind it, for everything since.
    this.#flushAgain ??= this.#flushing
      .catch(() => {})
      .then(() => {
        this.#flushAgain = undefined;
        return this.#flush();
      });
    return this.#flushAgain;
  }

  /** Appends the pending lines (one write, one fsync), or writes a new snapshot when the journal has grown enough. */
  async #write(): Promise<void> {
    const lines = this.#pending;
    this.#pending = [];
    if (lines.length === 0) return;
    if (this.#journalBytes > Math.max(this.#compactAt, this.#snapshotBytes)) return this.#compact();
    const text = lines.join('');
    const journal = this.#journal as fsp.FileHandle;
    await journal.write(text);
    await journal.datasync();
    this.#journalBytes += Buffer.byteLength(text);
    this.#syncedAt = Date.now();
  }

  /** A new snapshot of everything (temp, fsync, rename, fsync dir), then an empty journal. */
  async #compact(): Promise<void> {
    this.#pending = [];
    const state: FileState = {
      version: 1,
      hosts: Object.fromEntries(this.#maps.hosts),
      containers: Object.fromEntries(this.#maps.containers),
      tenants: Object.fromEntries(this.#maps.tenants),
      gateways: Object.fromEntries(this.#maps.gateways),
      certificates: Object.fromEntries(this.#maps.certificates),
      ephemeral: [...this.#ephemeral],
    };
    const text = JSON.stringify(state);
    const tmp = `${this.#path}.${process.pid}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(text);
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
    const journal = this.#journal as fsp.FileHandle;
    await journal.truncate(0);
    await journal.sync();
    this.#snapshotBytes = Buffer.byteLength(text);
    this.#journalBytes = 0;
    this.#syncedAt = Date.now();
  }
}

function line(c: Change): string {
  return `${JSON.stringify(c)}\n`;
}

function applyChange(maps: Maps, ephemeral: Set<string>, c: Change): void {
  const ref = `${c.kind}/${c.key}`;
  if (c.op === 'put' && c.value !== undefined) {
    maps[c.kind].set(c.key, c.value);
    if (c.ephemeral === true) ephemeral.add(ref);
    else ephemeral.delete(ref);
  } else {
    maps[c.kind].delete(c.key);
    ephemeral.delete(ref);
  }
}

/**
 * Journal text -> changes. Only complete lines count (`consumed`: their bytes). A line that
 * does not parse is corruption, unless it is the last and unterminated (`tornTail`), or
 * `partialOk` (a reader racing an append) and unterminated.
 */
function parseJournal(text: string, file: string, partialOk = false): { changes: Change[]; consumed: number; tornTail: boolean } {
  const changes: Change[] = [];
  let pos = 0;
  let consumed = 0;
  let lineNo = 0;
  while (pos < text.length) {
    const nl = text.indexOf('\n', pos);
    if (nl === -1) return { changes, consumed, tornTail: !partialOk };
    lineNo++;
    const raw = text.slice(pos, nl);
    pos = nl + 1;
    let c: Change;
    try {
      c = JSON.parse(raw) as Change;
    } catch {
      throw new RegistryCorruptError(`registry journal ${file} line ${lineNo} is not valid JSON; fix or move it away (it is left untouched)`);
    }
    if ((c.op !== 'put' && c.op !== 'delete') || !KINDS.includes(c.kind) || typeof c.key !== 'string' || (c.op === 'put' && (typeof c.value !== 'object' || c.value === null))) {
      throw new RegistryCorruptError(`registry journal ${file} line ${lineNo} is not a registry change; fix or move it away (it is left untouched)`);
    }
    changes.push(c);
    consumed += Buffer.byteLength(raw) + 1;
  }
  return { changes, consumed, tornTail: false };
}

async function readWithIno(file: string): Promise<{ text: string; ino: number } | undefined> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const ino = (await fh.stat()).ino;
    return { text: await fh.readFile('utf8'), ino };
  } finally {
    await fh.close();
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
