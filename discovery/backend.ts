/**
 * The seam between routing and storage. Two implementations: the embedded file registry
 * (discovery/file.ts) and ZooKeeper. Both store the records of DESIGN.md's layout:
 *
 *   hosts/<hostId>                     {"address":"10.0.0.5:8090"}
 *   containers/<hostId>/<containerId>  {"app":"wordpress","port":3001}
 *   tenants/<name>                     {"targets":[{"host":"01","container":"c001"}]}
 *   gateways/<gatewayId>               {"ip":"203.0.113.7"}
 *   certificates/<name>                {"cert":"<PEM chain>","key":"<PEM key>"}
 *
 * Values are plain JSON objects; validation lives one level up (discovery/records.ts), so a
 * backend never has to trust what another writer stored: it hands back what it read.
 * Every call either settles or rejects within a bounded time (RegistryUnavailableError).
 */
export type Kind = 'hosts' | 'containers' | 'tenants' | 'gateways' | 'certificates';
export const KINDS: readonly Kind[] = ['hosts', 'containers', 'tenants', 'gateways', 'certificates'];

export interface PutOptions {
  /** Removed when the writing process (ZooKeeper: its session) goes away. */
  ephemeral?: boolean;
}

export interface ListOptions {
  /** containers only: the host whose containers to list. */
  parent?: string;
  /** Keys strictly after this one, in the backend's list order (ZooKeeper tenants: by shard, then name): for paging. */
  after?: string;
  /** At most this many keys. */
  limit?: number;
}

export interface ListResult {
  keys: string[];
  /** Set when more keys follow: pass it as `after` for the next page. */
  next?: string;
}

/** `key` undefined: anything of that kind may have changed (reload, new session). */
export interface ChangeEvent {
  kind: Kind;
  key?: string;
}

export interface BackendStatus {
  backend: string;
  connected: boolean;
  /** ms since epoch of the last moment the backend was known to be in sync; null before the first sync. */
  syncedAt: number | null;
  detail: string;
}

export interface RegistryBackend {
  /** "file:/abs/path" or "zk://host:port/chroot": for logs and explain. */
  readonly description: string;
  start(): Promise<void>;
  /** Removes this process's ephemeral records, then releases everything. */
  close(): Promise<void>;
  /** containers: key is "<hostId>/<containerId>". */
  get(kind: Kind, key: string): Promise<unknown>;
  put(kind: Kind, key: string, value: object, opts?: PutOptions): Promise<void>;
  /** true when something was deleted. */
  delete(kind: Kind, key: string): Promise<boolean>;
  list(kind: Kind, opts?: ListOptions): Promise<ListResult>;
  onChange(listener: (ev: ChangeEvent) => void): () => void;
  /** Catches up with the store now, where reads can lag it (a reader of the file registry); resolves when done. */
  sync?(): Promise<void>;
  status(): BackendStatus;
}

/** The registry cannot be reached or answered too late: maps to HTTP 503. */
export class RegistryUnavailableError extends Error {
  override readonly name = 'RegistryUnavailableError';
}

/** The stored state is unusable (corrupt file): start-up stops with this message. */
export class RegistryCorruptError extends Error {
  override readonly name = 'RegistryCorruptError';
}
