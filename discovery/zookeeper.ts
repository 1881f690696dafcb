/**
 * The registry on ZooKeeper (node-zookeeper-client): many gateways, local proxies and DNS
 * servers share one live view. URL: zk://host:port[,host:port...]/chroot (default chroot
 * /tenant-gateway).
 *
 * Layout under the chroot (values are JSON):
 *   hosts/<hostId>                      ephemeral when a local proxy registers itself
 *   containers/<hostId>/<containerId>
 *   tenants/<bucket>/<name>             bucket = first 2 hex digits of md5(name): 256 shards, so
 *                                       no getChildren reply nears jute.maxbuffer (1 MB) even
 *                                       with millions of tenants
 *   gateways/<gatewayId>                ephemeral
 *   certificates/<name>                 a custom domain's PEM chain and key (protect the chroot: --zk-auth)
 *
 * Guarantees:
 * - Every call settles within `opTimeoutMs` (RegistryUnavailableError otherwise); calls are
 *   handed to the client only while connected, so nothing queues inside it forever.
 * - Reads set a watch (getData; exists for absent keys, so a later create fires). A watch
 *   fires once and emits {kind, key}; the next read re-arms it, and a key is only cached above
 *   after a read, so "cached" implies "watched". gateways/ also has a child watch, re-armed
 *   as soon as it fires, emitting {kind: 'gateways'}.
 * - Connection loss: calls wait (within their deadline) for a reconnect; the session and its
 *   watches survive a reconnect within the session timeout, and ZooKeeper replays what changed.
 *   status().connected is false meanwhile and syncedAt stays at the last moment we were in sync.
 * - Session expiry, also when the client never says so (ANCHORS #5: a paused or partitioned
 *   server gives no `expired`): no answer for longer than the session timeout means the
 *   session is gone. Then: a new client and session, our ephemeral records re-created (taking
 *   the znode over when an older session still owns it), and {kind} emitted for every kind so
 *   caches drop everything.
 * - Writes are versioned (create, or setData/multi against the version read), so concurrent
 *   registrations of one key each land whole; the last one wins.
 * - Data that is not JSON, or larger than MAX_RECORD_BYTES, is logged and read as absent.
 * - start() resolves only when a session is up; while ZooKeeper is unreachable it keeps trying
 *   and says so through `warn` (after 2 s, then every 10 s).
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import zookeeper from 'node-zookeeper-client';
import type { ACL, Client, Event as ZkEvent, State as ZkState, Stat } from 'node-zookeeper-client';
import {
  KINDS,
  RegistryUnavailableError,
  type BackendStatus,
  type ChangeEvent,
  type Kind,
  type ListOptions,
  type ListResult,
  type PutOptions,
  type RegistryBackend,
} from './backend.js';

export interface ZooKeeperBackendOptions {
  /** zk://host:port[,host:port...]/chroot */
  url: string;
  /** Session timeout asked for; the server clamps it to [2, 20] x its tickTime. Default 10 s. */
  sessionTimeoutMs?: number;
  /** Bound on every call (including waiting for a reconnect). Default 3 s. */
  opTimeoutMs?: number;
  /** Digest credentials "user:password": znodes we create get CREATOR_ALL_ACL for them. */
  zkAuth?: string | undefined;
  warn?: (msg: string) => void;
  /**
   * node-zookeeper-client re-registers every watch in one packet on reconnect, and ZooKeeper
   * drops a packet over jute.maxbuffer. With more watches than this, a reconnect drops them
   * all instead and emits {kind} for every kind (caches refill on demand). Default 10,000.
   */
  maxRestoredWatches?: number;
}

/** Records are small ({"targets":[...]} at most 64 targets); anything bigger is not ours. */
export const MAX_RECORD_BYTES = 64 * 1024;
const DEFAULT_CHROOT = '/tenant-gateway';
const NO_OWNER = '0000000000000000';

const { Exception, CreateMode, Permission } = zookeeper;

interface Session {
  client: Client;
  /** Hex session id; '' until the first connect. */
  id: string;
  /** Our view: the client is connected and answered recently. */
  connected: boolean;
  /** Base znodes exist, ephemerals re-created, gateways watch armed: calls may go. */
  initialized: boolean;
  initializing: boolean;
  initFailedAt: number;
  lastHeardAt: number;
  lastKickAt: number;
  heartbeatInFlight: boolean;
  gatewaysWatched: boolean;
  dropCachesOnReconnect: boolean;
  /** One function per session: the client de-duplicates watchers by identity. */
  watcher: (ev: ZkEvent) => void;
}

interface Ephemeral {
  kind: Kind;
  key: string;
  data: Buffer;
}

export class ZooKeeperBackend implements RegistryBackend {
  readonly description: string;
  readonly #hosts: string;
  readonly #root: string;
  readonly #sessionTimeoutMs: number;
  readonly #opTimeoutMs: number;
  readonly #auth: string | undefined;
  readonly #acl: ACL[];
  readonly #warn: (msg: string) => void;
  readonly #maxRestoredWatches: number;
  readonly #events = new EventEmitter();
  /** path -> what this process registered ephemerally; re-created on every new session. */
  readonly #ephemerals = new Map<string, Ephemeral>();
  /** Sessions this process had before: their leftover ephemerals are ours to replace quietly. */
  readonly #pastSessions = new Set<string>();
  readonly #readyWaiters = new Set<() => void>();
  #session: Session | undefined;
  #hadSession = false;
  #started = false;
  #closed = false;
  #timer: NodeJS.Timeout | undefined;
  #syncedAt: number | null = null;
  #disconnectedSince: number | null = null;
  #disconnectReason = 'not connected yet';

  constructor(opts: ZooKeeperBackendOptions) {
    const { hosts, chroot } = parseZkUrl(opts.url);
    this.#hosts = hosts;
    this.#root = chroot;
    this.description = `zk://${hosts}${chroot}`;
    this.#sessionTimeoutMs = opts.sessionTimeoutMs ?? 10_000;
    this.#opTimeoutMs = opts.opTimeoutMs ?? 3_000;
    this.#auth = opts.zkAuth;
    if (this.#auth !== undefined && !/^[^:]+:.+$/.test(this.#auth)) throw new Error('zkAuth must be user:password');
    this.#acl = [
      this.#auth !== undefined
        ? new zookeeper.ACL(Permission.ALL, new zookeeper.Id('auth', '')) // CREATOR_ALL_ACL
        : new zookeeper.ACL(Permission.ALL, new zookeeper.Id('world', 'anyone')), // OPEN_ACL_UNSAFE
    ];
    this.#warn = opts.warn ?? ((msg) => process.emitWarning(msg));
    this.#maxRestoredWatches = opts.maxRestoredWatches ?? 10_000;
    this.#events.setMaxListeners(0);
  }

  // ---- lifecycle ------------------------------------------------------------------------

  async start(): Promise<void> {
    if (this.#started) throw new Error('ZooKeeperBackend.start() called twice');
    this.#started = true;
    this.#disconnectedSince = Date.now();
    this.#openSession();
    const tick = Math.min(500, Math.max(50, Math.floor(this.#sessionTimeoutMs / 10)));
    this.#timer = setInterval(() => this.#watchdog(), tick);
    this.#timer.unref();
    const since = Date.now();
    let wait = 2_000;
    while (!this.#isReady()) {
      if (this.#closed) throw new RegistryUnavailableError(`closed before ZooKeeper at ${this.#hosts} answered`);
      const ready = await this.#waitReady(Date.now() + wait);
      if (!ready && !this.#closed) {
        this.#warn(
          `waiting for ZooKeeper at ${this.#hosts} (chroot ${this.#root}) for ${secs(Date.now() - since)}: ${this.#disconnectReason}; ` +
            'routes cannot be loaded until it answers (start it, or check --registry)',
        );
        wait = 10_000;
      }
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    const s = this.#session;
    if (s && this.#isReady()) {
      // Our ephemerals go now, not when the server notices the session closed.
      const deadline = Date.now() + Math.min(this.#opTimeoutMs, 2_000);
      await Promise.all(
        [...this.#ephemerals.keys()].map(async (path) => {
          const stat = await this.#on<Stat | null>(s, deadline, (c, cb) => c.exists(path, cb)).catch(() => null);
          if (stat && ownerOf(stat) === s.id) await this.#on(s, deadline, (c, cb) => c.remove(path, stat.version, cb)).catch(() => {});
        }),
      );
    }
    this.#ephemerals.clear();
    for (const wake of this.#readyWaiters) wake();
    if (s) await disposeClient(s.client, true);
    this.#session = undefined;
  }

  // ---- reads ----------------------------------------------------------------------------

  async get(kind: Kind, key: string): Promise<unknown> {
    const path = this.#pathOf(kind, key);
    const deadline = Date.now() + this.#opTimeoutMs;
    for (let attempt = 0; attempt < 5; attempt++) {
      let data: Buffer | null;
      try {
        data = await this.#call<Buffer | null>('read', path, deadline, (c, cb, s) => c.getData(path, s.watcher, cb));
      } catch (err) {
        if (zkCode(err) !== Exception.NO_NODE) throw this.#failure(err, 'read', path);
        // Absent: watch for its creation. Created meanwhile: read it again.
        const stat = await this.#call<Stat | null>('read', path, deadline, (c, cb, s) => c.exists(path, s.watcher, cb)).catch((e: unknown) => {
          throw this.#failure(e, 'read', path);
        });
        if (stat === null) return undefined;
        continue;
      }
      return this.#decode(kind, key, data);
    }
    throw new RegistryUnavailableError(`registry read of ${kind}/${key} gave up: it kept appearing and disappearing`);
  }

  async list(kind: Kind, opts: ListOptions = {}): Promise<ListResult> {
    const deadline = Date.now() + this.#opTimeoutMs;
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 0)) throw new RangeError('limit must be >= 0');
    const after = opts.after;
    const keys: string[] = [];
    let more = false;
    /** Adds candidates (in list order); false once the page is full and one more key was seen. */
    const take = (candidates: string[], skipUpToAfter = true): boolean => {
      for (const k of candidates) {
        if (skipUpToAfter && after !== undefined && k <= after) continue;
        if (keys.length === limit) {
          more = true;
          return false;
        }
        keys.push(k);
      }
      return true;
    };

    if (kind === 'tenants') {
      // Order: by bucket, then name (a global sort would read every bucket for every page).
      const startBucket = after !== undefined ? bucketOf(after) : '';
      const buckets = (await this.#children(`${this.#root}/tenants`, deadline)).filter((b) => b >= startBucket).sort();
      for (const b of buckets) {
        const names = (await this.#children(`${this.#root}/tenants/${b}`, deadline)).sort();
        if (!take(names, b === startBucket)) break;
      }
    } else if (kind === 'containers' && opts.parent !== undefined) {
      take((await this.#children(`${this.#root}/containers/${segment(opts.parent, 'host id')}`, deadline)).sort());
    } else if (kind === 'containers') {
      // "<host>/<container>" keys in string order: hosts ordered by "<host>/" (ids hold no '/').
      const slash = after?.indexOf('/') ?? -1;
      const afterHost = after !== undefined && slash >= 0 ? after.slice(0, slash + 1) : '';
      const hosts = (await this.#children(`${this.#root}/containers`, deadline))
        .map((h) => `${h}/`)
        .filter((h) => h >= afterHost)
        .sort();
      for (const h of hosts) {
        const ids = (await this.#children(`${this.#root}/containers/${h.slice(0, -1)}`, deadline)).sort();
        if (!take(ids.map((c) => h + c))) break;
      }
    } else {
      const path = `${this.#root}/${kind}`;
      const children = await this.#children(path, deadline, kind === 'gateways');
      take(children.sort());
    }
    return more ? { keys, next: keys[keys.length - 1] } : { keys };
  }

  // ---- writes ---------------------------------------------------------------------------

  async put(kind: Kind, key: string, value: object, opts: PutOptions = {}): Promise<void> {
    const path = this.#pathOf(kind, key);
    const data = Buffer.from(JSON.stringify(value));
    if (data.length > MAX_RECORD_BYTES) {
      throw new RangeError(`${kind}/${key} is ${data.length} bytes as JSON; a registry record holds at most ${MAX_RECORD_BYTES}`);
    }
    const ephemeral = opts.ephemeral === true;
    await this.#write(undefined, path, data, ephemeral, Date.now() + this.#opTimeoutMs).catch((err: unknown) => {
      throw this.#failure(err, 'write', path);
    });
    if (ephemeral) this.#ephemerals.set(path, { kind, key, data });
    else this.#ephemerals.delete(path);
    this.#emit({ kind, key });
  }

  async delete(kind: Kind, key: string): Promise<boolean> {
    const path = this.#pathOf(kind, key);
    this.#ephemerals.delete(path);
    try {
      await this.#call('delete', path, Date.now() + this.#opTimeoutMs, (c, cb) => c.remove(path, -1, cb));
    } catch (err) {
      if (zkCode(err) === Exception.NO_NODE) return false;
      throw this.#failure(err, 'delete', path);
    }
    this.#emit({ kind, key });
    return true;
  }

  onChange(listener: (ev: ChangeEvent) => void): () => void {
    this.#events.on('change', listener);
    return () => this.#events.off('change', listener);
  }

  status(): BackendStatus {
    const s = this.#session;
    const ready = this.#isReady();
    const detail = ready
      ? `session 0x${s?.id} (timeout ${s?.client.getSessionTimeout()}ms), ${this.#ephemerals.size} ephemeral record(s) of ours`
      : this.#closed
        ? 'closed'
        : `no ZooKeeper session for ${secs(Date.now() - (this.#disconnectedSince ?? Date.now()))} (${this.#disconnectReason}); ` +
          `serving the last known routes${this.#syncedAt !== null ? `, last in sync ${secs(Date.now() - this.#syncedAt)} ago` : ''}`;
    return { backend: this.description, connected: ready, syncedAt: ready ? Date.now() : this.#syncedAt, detail };
  }

  // ---- sessions -------------------------------------------------------------------------

  #openSession(): void {
    const client = zookeeper.createClient(this.#hosts, { sessionTimeout: this.#sessionTimeoutMs, spinDelay: 200, retries: 0 });
    if (this.#auth !== undefined) client.addAuthInfo('digest', Buffer.from(this.#auth));
    const now = Date.now();
    const s: Session = {
      client,
      id: '',
      connected: false,
      initialized: false,
      initializing: false,
      initFailedAt: 0,
      lastHeardAt: now,
      lastKickAt: now,
      heartbeatInFlight: false,
      gatewaysWatched: false,
      dropCachesOnReconnect: false,
      watcher: (ev) => this.#onWatch(s, ev),
    };
    this.#session = s;
    client.on('state', (state: ZkState) => this.#onState(s, state));
    client.connect();
  }

  #onState(s: Session, state: ZkState): void {
    if (s !== this.#session || this.#closed) return;
    const now = Date.now();
    if (state === zookeeper.State.SYNC_CONNECTED) {
      const id = s.client.getSessionId().toString('hex');
      s.lastHeardAt = now;
      if (s.id !== '' && s.id !== id) {
        this.#renew(`ZooKeeper answered with a new session (0x${id}, was 0x${s.id})`);
        return;
      }
      const first = s.id === '';
      s.id = id;
      s.connected = true;
      if (first || !s.initialized) {
        void this.#initSession(s);
      } else {
        this.#warn(`reconnected to ZooKeeper at ${this.#hosts}: session 0x${id} kept, watches restored`);
        this.#markConnected();
        if (s.dropCachesOnReconnect) {
          s.dropCachesOnReconnect = false;
          s.gatewaysWatched = false;
          void this.#armGatewaysWatch(s);
          this.#emitAll();
        }
      }
    } else if (state === zookeeper.State.DISCONNECTED) {
      s.connected = false;
      this.#markDisconnected(`connection to ${this.#hosts} lost`);
      this.#limitRestoredWatches(s);
    } else if (state === zookeeper.State.EXPIRED) {
      s.connected = false;
      this.#renew(`ZooKeeper expired session 0x${s.id}`);
    } else if (state === zookeeper.State.AUTH_FAILED) {
      s.connected = false;
      this.#markDisconnected('ZooKeeper rejected the credentials (--zk-auth)');
    }
  }

  /** A new (or not yet prepared) session: base znodes, our ephemerals, the gateways watch. */
  async #initSession(s: Session): Promise<void> {
    if (s.initializing) return;
    s.initializing = true;
    try {
      const deadline = Date.now() + this.#opTimeoutMs;
      let path = '';
      for (const part of this.#root.split('/').filter(Boolean)) {
        path += `/${part}`;
        await this.#ensure(s, path, deadline);
      }
      for (const kind of KINDS) await this.#ensure(s, `${this.#root}/${kind}`, deadline);
      for (const [p, e] of this.#ephemerals) {
        await this.#write(s, p, e.data, true, Date.now() + this.#opTimeoutMs);
      }
      await this.#armGatewaysWatch(s);
      if (s !== this.#session) return;
      s.initialized = true;
      this.#markConnected();
      if (this.#hadSession) {
        this.#warn(
          `new ZooKeeper session 0x${s.id}: ${this.#ephemerals.size} ephemeral record(s) re-created, caches dropped`,
        );
        this.#emitAll();
      }
      this.#hadSession = true;
    } catch (err) {
      s.initFailedAt = Date.now();
      this.#disconnectReason = `preparing session 0x${s.id} failed: ${describe(err)}`;
      if (s === this.#session) this.#warn(`ZooKeeper session 0x${s.id} not usable yet (retrying): ${describe(err)}`);
    } finally {
      s.initializing = false;
    }
  }

  /** Creates `path` (empty, persistent) unless it exists (also when the parent's ACL forbids creating). */
  async #ensure(s: Session | undefined, path: string, deadline: number): Promise<void> {
    await this.#on(s, deadline, (c, cb) => c.create(path, this.#acl, CreateMode.PERSISTENT, cb)).catch(async (err: unknown) => {
      const code = zkCode(err);
      if (code === Exception.NODE_EXISTS) return;
      if (code === Exception.NO_AUTH && (await this.#on<Stat | null>(s, deadline, (c, cb) => c.exists(path, cb))) !== null) return;
      throw err;
    });
  }

  /** The session is gone (or presumed gone): drop the client, open a new session. */
  #renew(reason: string): void {
    if (this.#closed) return;
    const old = this.#session;
    this.#markDisconnected(reason);
    this.#warn(`${reason}; opening a new session (ephemeral records will be re-created, caches dropped)`);
    if (old) {
      if (old.id !== '') this.#pastSessions.add(old.id);
      void disposeClient(old.client, false);
    }
    this.#openSession();
  }

  /**
   * Runs every tick: the liveness checks node-zookeeper-client does not do itself.
   * - connected but silent for 2/3 of the session timeout (paused or partitioned server):
   *   disconnected; drop the socket so the client tries the next member with the same session.
   * - not connected for longer than the session timeout: the session is gone; renew it.
   * - a connect attempt that hangs (a paused server still accepts TCP): drop and retry.
   */
  #watchdog(): void {
    const s = this.#session;
    if (!s || this.#closed) return;
    const now = Date.now();
    const timeout = s.id !== '' ? s.client.getSessionTimeout() : this.#sessionTimeoutMs;
    const silent = now - s.lastHeardAt;
    if (s.connected) {
      if (silent > (timeout * 2) / 3) {
        s.connected = false;
        this.#markDisconnected(`no answer from ZooKeeper for ${silent} ms`);
        this.#limitRestoredWatches(s);
        kick(s);
        s.lastKickAt = now;
      } else if (!s.heartbeatInFlight && silent >= timeout / 4) {
        s.heartbeatInFlight = true;
        this.#on(s, now + timeout, (c, cb) => c.exists(this.#root, cb))
          .catch(() => {})
          .finally(() => (s.heartbeatInFlight = false));
      }
      if (!s.initialized && !s.initializing && now - s.initFailedAt > 1_000) void this.#initSession(s);
      if (s.initialized && !s.gatewaysWatched) void this.#armGatewaysWatch(s);
      return;
    }
    if (s.id !== '' && silent > timeout) {
      this.#renew(`no contact with ZooKeeper for ${silent} ms, longer than the session timeout (${timeout} ms): session 0x${s.id} is gone`);
      return;
    }
    if (now - s.lastKickAt > Math.max(1_000, timeout / 3)) {
      kick(s);
      s.lastKickAt = now;
    }
  }

  /** See maxRestoredWatches: called while disconnected, before the client reconnects. */
  #limitRestoredWatches(s: Session): void {
    const wm = (s.client as unknown as { connectionManager?: { watcherManager?: Record<string, unknown> } }).connectionManager
      ?.watcherManager;
    if (!wm) return;
    const maps = ['dataWatchers', 'existenceWatchers', 'childWatchers'] as const;
    let count = 0;
    for (const m of maps) {
      const v = wm[m];
      if (typeof v === 'object' && v !== null) count += Object.keys(v).length;
    }
    if (count <= this.#maxRestoredWatches) return;
    for (const m of maps) wm[m] = {};
    s.dropCachesOnReconnect = true;
    this.#warn(`${count} watches are too many to restore in one packet: dropping them; caches are emptied on reconnect`);
  }

  #markConnected(): void {
    this.#disconnectedSince = null;
    this.#disconnectReason = 'connected';
    this.#syncedAt = Date.now();
    for (const wake of this.#readyWaiters) wake();
  }

  #markDisconnected(reason: string): void {
    this.#disconnectReason = reason;
    if (this.#disconnectedSince !== null) return;
    this.#disconnectedSince = Date.now();
    if (this.#syncedAt !== null) this.#syncedAt = Math.max(this.#syncedAt, this.#session?.lastHeardAt ?? 0);
    this.#warn(`registry unreachable (zk ${this.#hosts}): ${reason}; keeping the last known routes until it is back`);
  }

  #isReady(): boolean {
    const s = this.#session;
    return !this.#closed && s !== undefined && s.connected && s.initialized;
  }

  /** true once ready; false at the deadline or on close. */
  #waitReady(deadline: number): Promise<boolean> {
    if (this.#isReady()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        if (!this.#isReady() && !this.#closed && Date.now() < deadline) return; // not yet
        clearTimeout(timer);
        this.#readyWaiters.delete(done);
        resolve(this.#isReady());
      };
      const timer = setTimeout(() => {
        this.#readyWaiters.delete(done);
        resolve(this.#isReady());
      }, Math.max(0, deadline - Date.now()));
      this.#readyWaiters.add(done);
    });
  }

  // ---- watches --------------------------------------------------------------------------

  /** Never throws: it runs inside the client's event dispatch. */
  #onWatch(s: Session, ev: ZkEvent): void {
    try {
      if (s !== this.#session || this.#closed) return;
      const path = ev.getPath();
      if (path === `${this.#root}/gateways`) {
        s.gatewaysWatched = false;
        void this.#armGatewaysWatch(s);
        this.#emit({ kind: 'gateways' });
        return;
      }
      if (ev.getType() === zookeeper.Event.NODE_CHILDREN_CHANGED) return;
      const ref = this.#refOf(path);
      if (ref) this.#emit(ref);
    } catch (err) {
      this.#warn(`ZooKeeper watch handling failed (ignored): ${describe(err)}`);
    }
  }

  async #armGatewaysWatch(s: Session): Promise<void> {
    if (s.gatewaysWatched) return;
    const path = `${this.#root}/gateways`;
    try {
      await this.#on(s, Date.now() + this.#opTimeoutMs, (c, cb) => c.getChildren(path, s.watcher, cb));
      s.gatewaysWatched = true;
    } catch (err) {
      if (s === this.#session && s.connected) this.#warn(`could not watch ${path} (retrying): ${describe(err)}`);
    }
  }

  #emit(ev: ChangeEvent): void {
    try {
      this.#events.emit('change', ev);
    } catch (err) {
      this.#warn(`a registry change listener failed: ${describe(err)}`);
    }
  }

  #emitAll(): void {
    for (const kind of KINDS) this.#emit({ kind });
  }

  // ---- calls ----------------------------------------------------------------------------

  /**
   * One ZooKeeper call on the current session, once it is ready: waits for a reconnect until
   * the deadline (fails at once when the outage is already older than opTimeoutMs), and tries
   * again after a connection loss while time is left.
   */
  async #call<T>(
    what: string,
    path: string,
    deadline: number,
    op: (client: Client, cb: (err: unknown, result?: T) => void, s: Session) => void,
  ): Promise<T> {
    for (;;) {
      if (!this.#isReady()) {
        if (this.#closed) throw new RegistryUnavailableError(`registry ${this.description} is closed (shutting down)`);
        const down = this.#disconnectedSince !== null ? Date.now() - this.#disconnectedSince : 0;
        const ready = down > this.#opTimeoutMs ? false : await this.#waitReady(deadline);
        if (!ready) throw this.#unavailable(what, path, 'no connection');
      }
      const s = this.#session as Session;
      try {
        return await this.#on<T>(s, deadline, op);
      } catch (err) {
        const code = zkCode(err);
        if ((code === Exception.CONNECTION_LOSS || code === Exception.SESSION_EXPIRED) && Date.now() < deadline) {
          await new Promise((r) => setImmediate(r)); // let the state change land first
          continue;
        }
        throw err;
      }
    }
  }

  /** One call on session `s` (undefined: the current one) with a deadline, not waiting for readiness. */
  #on<T>(
    s: Session | undefined,
    deadline: number,
    op: (client: Client, cb: (err: unknown, result?: T) => void, s: Session) => void,
  ): Promise<T> {
    const session = s ?? this.#session;
    if (!session) return Promise.reject(new RegistryUnavailableError('registry not started'));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new CallTimeout()), Math.max(0, deadline - Date.now()));
      try {
        op(
          session.client,
          (err, result) => {
            clearTimeout(timer);
            const code = zkCode(err);
            if (code !== Exception.CONNECTION_LOSS && code !== Exception.SESSION_EXPIRED) session.lastHeardAt = Date.now();
            if (err) reject(err);
            else resolve(result as T);
          },
          session,
        );
      } catch (err) {
        clearTimeout(timer);
        reject(err);
      }
    });
  }

  /**
   * Versioned write of `path`: create, or setData against the version read, or (when the
   * node's ephemeral-ness or owner must change) one multi of remove(version) + create.
   * Retries when another writer got in between; `s` set: on that session, ready or not.
   */
  async #write(s: Session | undefined, path: string, data: Buffer, ephemeral: boolean, deadline: number): Promise<void> {
    const call = <T>(op: (client: Client, cb: (err: unknown, result?: T) => void, s: Session) => void) =>
      s ? this.#on<T>(s, deadline, op) : this.#call<T>('write', path, deadline, op);
    const mode = ephemeral ? CreateMode.EPHEMERAL : CreateMode.PERSISTENT;
    for (let attempt = 0; attempt < 100 && Date.now() < deadline; attempt++) {
      // Lost a race: back off a random moment so a crowd of writers spreads out.
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.random() * Math.min(100, 2 ** attempt)));
      try {
        await call((c, cb) => c.create(path, data, this.#acl, mode, cb));
        return;
      } catch (err) {
        const code = zkCode(err);
        if (code === Exception.NO_NODE) {
          await this.#ensure(s, path.slice(0, path.lastIndexOf('/')), deadline);
          continue;
        }
        if (code !== Exception.NODE_EXISTS) throw err;
      }
      const stat = await call<Stat | null>((c, cb) => c.exists(path, cb));
      if (stat === null) continue;
      const owner = ownerOf(stat);
      const sessionId = (s ?? this.#session)?.id;
      try {
        if (ephemeral ? owner === sessionId : owner === NO_OWNER) {
          await call((c, cb) => c.setData(path, data, stat.version, cb));
        } else {
          if (ephemeral && owner !== NO_OWNER && !this.#pastSessions.has(owner)) {
            this.#warn(`${path} was registered by another ZooKeeper session (0x${owner}); taking it over (the latest registration wins)`);
          }
          await call((c, cb) =>
            c.transaction().remove(path, stat.version).create(path, data, this.#acl, mode).commit((e) => cb(e)),
          );
        }
        return;
      } catch (err) {
        const code = zkCode(err);
        if (code !== Exception.BAD_VERSION && code !== Exception.NO_NODE && code !== Exception.NODE_EXISTS) throw err;
      }
    }
    throw new RegistryUnavailableError(`write of ${path} gave up: other writers kept changing it; try again`);
  }

  async #children(path: string, deadline: number, watch = false): Promise<string[]> {
    try {
      return (
        (await this.#call<string[]>('list', path, deadline, (c, cb, s) =>
          watch ? c.getChildren(path, s.watcher, (e, ch) => cb(e, ch)) : c.getChildren(path, (e, ch) => cb(e, ch)),
        )) ?? []
      );
    } catch (err) {
      if (zkCode(err) === Exception.NO_NODE) return [];
      throw this.#failure(err, 'list', path);
    }
  }

  #decode(kind: Kind, key: string, data: Buffer | null): unknown {
    if (data === null || data.length === 0) {
      this.#warn(`registry record ${kind}/${key} is empty; ignored`);
      return undefined;
    }
    if (data.length > MAX_RECORD_BYTES) {
      this.#warn(`registry record ${kind}/${key} is ${data.length} bytes (at most ${MAX_RECORD_BYTES}); ignored`);
      return undefined;
    }
    try {
      return JSON.parse(data.toString('utf8')) as unknown;
    } catch {
      this.#warn(`registry record ${kind}/${key} is not JSON; ignored`);
      return undefined;
    }
  }

  /** Errors leaving the backend: unreachable -> RegistryUnavailableError, with what to do. */
  #failure(err: unknown, what: string, path: string): Error {
    if (err instanceof RegistryUnavailableError) return err;
    if (err instanceof CallTimeout) return this.#unavailable(what, path, 'no answer');
    const code = zkCode(err);
    if (code === Exception.CONNECTION_LOSS || code === Exception.SESSION_EXPIRED || code === Exception.OPERATION_TIMEOUT) {
      return this.#unavailable(what, path, 'connection lost');
    }
    if (code === Exception.NO_AUTH || code === Exception.AUTH_FAILED) {
      return new RegistryUnavailableError(
        `ZooKeeper refused the ${what} of ${path}: not authorized; the registry's znodes have an ACL: pass its credentials (--zk-auth user:password)`,
      );
    }
    return err instanceof Error ? err : new Error(String(err));
  }

  #unavailable(what: string, path: string, why: string): RegistryUnavailableError {
    const down = this.#disconnectedSince !== null ? ` for ${secs(Date.now() - this.#disconnectedSince)}` : '';
    const synced = this.#syncedAt !== null ? `keeping routes from ${secs(Date.now() - this.#syncedAt)} ago` : 'no routes loaded yet';
    const maybe = what === 'write' || what === 'delete' ? '; it may still be applied when ZooKeeper answers, and retrying is safe' : '';
    return new RegistryUnavailableError(
      `registry unreachable (zk ${this.#hosts}): ${why}${down} (${this.#disconnectReason}); the ${what} of ${path} ` +
        `did not complete within ${this.#opTimeoutMs} ms${maybe}; ${synced}`,
    );
  }

  // ---- layout ---------------------------------------------------------------------------

  #pathOf(kind: Kind, key: string): string {
    switch (kind) {
      case 'containers': {
        const slash = key.indexOf('/');
        if (slash < 0) throw new RangeError(`container key must be "<hostId>/<containerId>"; got ${JSON.stringify(key)}`);
        return `${this.#root}/containers/${segment(key.slice(0, slash), 'host id')}/${segment(key.slice(slash + 1), 'container id')}`;
      }
      case 'tenants':
        return `${this.#root}/tenants/${bucketOf(segment(key, 'tenant name'))}/${key}`;
      default:
        return `${this.#root}/${kind}/${segment(key, `${kind} key`)}`;
    }
  }

  #refOf(path: string): ChangeEvent | undefined {
    if (!path.startsWith(`${this.#root}/`)) return undefined;
    const parts = path.slice(this.#root.length + 1).split('/');
    const [kind, a, b] = parts;
    if (parts.length === 2 && (kind === 'hosts' || kind === 'gateways' || kind === 'certificates') && a) return { kind, key: a };
    if (parts.length === 3 && kind === 'containers' && a && b) return { kind, key: `${a}/${b}` };
    if (parts.length === 3 && kind === 'tenants' && b) return { kind, key: b };
    return undefined;
  }
}

/** zk://h1:2181,h2:2181/chroot -> {hosts: "h1:2181,h2:2181", chroot: "/chroot"}. */
export function parseZkUrl(url: string): { hosts: string; chroot: string } {
  const m = /^zk:\/\/([^/]+)(\/.*)?$/.exec(url);
  if (!m?.[1]) throw new Error(`--registry zk:// needs host:port[,host:port...][/chroot]; got ${JSON.stringify(url)}`);
  const hosts = m[1].split(',').map((h) => {
    const hp = /^([A-Za-z0-9.-]+|\[[0-9a-fA-F:.]+\])(?::(\d{1,5}))?$/.exec(h);
    if (!hp?.[1]) throw new Error(`--registry ${url}: ${JSON.stringify(h)} is not host:port`);
    const port = Number(hp[2] ?? 2181);
    if (port < 1 || port > 65535) throw new Error(`--registry ${url}: port must be 1-65535`);
    return `${hp[1]}:${port}`;
  });
  let chroot = (m[2] ?? '').replace(/\/+$/, '');
  if (chroot === '') chroot = DEFAULT_CHROOT;
  for (const part of chroot.slice(1).split('/')) segment(part, 'chroot component');
  if (chroot.slice(1).split('/')[0] === 'zookeeper') throw new Error(`--registry ${url}: /zookeeper is ZooKeeper's own tree`);
  return { hosts: hosts.join(','), chroot };
}

/** The tenant shard: the first byte of md5(name) as two hex digits (part of the stored layout). */
export function bucketOf(name: string): string {
  return createHash('md5').update(name).digest('hex').slice(0, 2);
}

/** One znode name: non-empty, no '/', not "." or "..", no control characters. */
function segment(s: string, what: string): string {
  // eslint-disable-next-line no-control-regex
  if (s === '' || s === '.' || s === '..' || s.length > 255 || /[/\u0000-\u001f\u007f]/.test(s)) {
    throw new RangeError(`${what} ${JSON.stringify(s)} cannot be stored: it must be 1-255 characters without '/' or control characters`);
  }
  return s;
}

class CallTimeout extends Error {}

function zkCode(err: unknown): number | undefined {
  return err instanceof Exception ? err.getCode() : undefined;
}

function ownerOf(stat: Stat): string {
  return Buffer.from(stat.ephemeralOwner).toString('hex');
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/** Drops the client's socket so it reconnects (the client has no read timeout of its own). */
function kick(s: Session): void {
  const sock = (s.client as unknown as { connectionManager?: { socket?: { destroyed?: boolean; destroy(): void } } }).connectionManager?.socket;
  if (sock && !sock.destroyed) sock.destroy();
}

/** Closes a client for good. graceful: give the close-session request a moment to go out. */
async function disposeClient(client: Client, graceful: boolean): Promise<void> {
  client.removeAllListeners('state');
  const cm = (client as unknown as { connectionManager?: { socket?: { destroyed?: boolean; destroy(): void; once(ev: string, f: () => void): void } } })
    .connectionManager;
  try {
    client.close();
  } catch {
    // already closed
  }
  const sock = cm?.socket;
  if (graceful && sock && !sock.destroyed) {
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 1_000);
      sock.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }
  // A connect attempt may still be scheduled: make sure whatever socket it opens goes too.
  const finish = () => {
    const s = cm?.socket;
    if (s && !s.destroyed) s.destroy();
  };
  finish();
  setTimeout(finish, 1_500).unref();
}
