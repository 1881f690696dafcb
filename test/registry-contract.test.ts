/**
 * One contract, every backend: the file registry (temp dir) and ZooKeeper (a real server
 * started for this suite on a free port). What the gateway, DNS and admin API rely on.
 *
 * "Another instance" is a second backend on the same store: for ZooKeeper a second session,
 * for the file registry a read-only follower of the owner's file. Change events name the key,
 * or only the kind ("anything of that kind may have changed"); both satisfy the contract.
 */
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import zookeeper from 'node-zookeeper-client';
import type { ChangeEvent, Kind, RegistryBackend } from '../discovery/backend.js';
import { FileBackend } from '../discovery/file.js';
import { Registry } from '../discovery/registry.js';
import { bucketOf, ZooKeeperBackend } from '../discovery/zookeeper.js';
import { waitFor } from './support/util.js';
import { ZooKeeperServer } from './support/zookeeper.js';

interface Store {
  /** The owner: reads and writes. */
  a: RegistryBackend;
  /** Another instance on the same store (reads; writes too where the backend allows); started unless told. */
  other(start?: boolean): Promise<RegistryBackend>;
  /** Stores a record another writer corrupted: not parseable, or not a record at all. */
  corrupt(kind: Kind, key: string): Promise<void>;
  /** Whether instances other than the owner can write (ZooKeeper: yes; file: only the owner). */
  sharedWrites: boolean;
  warnings: string[];
}

interface Harness {
  name: string;
  setup(): Promise<void>;
  teardown(): Promise<void>;
  /** A fresh, started store; everything it opened is closed by the returned cleanup. */
  open(): Promise<{ store: Store; cleanup: () => Promise<void> }>;
}

const fileHarness = (): Harness => {
  let root = '';
  let n = 0;
  return {
    name: 'file',
    async setup() {
      root = await fsp.mkdtemp(path.join(os.tmpdir(), 'tgw-contract-'));
    },
    async teardown() {
      await fsp.rm(root, { recursive: true, force: true });
    },
    async open() {
      const file = path.join(root, `r${n++}`, 'registry.json');
      const opened: RegistryBackend[] = [];
      const warnings: string[] = [];
      const a = new FileBackend({ path: file });
      opened.push(a);
      await a.start();
      const store: Store = {
        a,
        sharedWrites: false,
        warnings,
        async other(start = true) {
          const b = new FileBackend({ path: file, writable: false });
          opened.push(b);
          if (start) await b.start();
          return b;
        },
        async corrupt(kind, key) {
          // Another writer stored something that is JSON but no record: readers must shrug.
          const change = { op: 'put', kind, key, value: { targets: 'not a list', junk: [1, 2, 3] } };
          await fsp.appendFile(`${file}.journal`, `${JSON.stringify(change)}\n`);
        },
      };
      return { store, cleanup: async () => void (await Promise.all(opened.map((b) => b.close()))) };
    },
  };
};

const zkHarness = (): Harness => {
  let zk: ZooKeeperServer | undefined;
  let n = 0;
  return {
    name: 'zookeeper',
    async setup() {
      zk = await ZooKeeperServer.start();
    },
    async teardown() {
      await zk?.stop();
    },
    async open() {
      if (!zk) throw new Error('ZooKeeper not started');
      const url = zk.url(`/contract/t${n++}`);
      const opened: RegistryBackend[] = [];
      const warnings: string[] = [];
      const make = async (start = true) => {
        const b = new ZooKeeperBackend({ url, sessionTimeoutMs: 4000, warn: (m) => warnings.push(m) });
        opened.push(b);
        if (start) await b.start();
        return b;
      };
      const a = await make();
      const connect = zk.connectString;
      const store: Store = {
        a,
        sharedWrites: true,
        warnings,
        other: make,
        async corrupt(kind, key) {
          const rel = kind === 'tenants' ? `tenants/${bucketOf(key)}/${key}` : `${kind}/${key}`;
          await rawSet(connect, `${new URL(url).pathname}/${rel}`, Buffer.from('{"targets": [ not json'));
        },
      };
      return { store, cleanup: async () => void (await Promise.all(opened.map((b) => b.close()))) };
    },
  };
};

/** Writes bytes at a path with a plain client, as a foreign writer would. */
async function rawSet(connect: string, p: string, data: Buffer): Promise<void> {
  const c = zookeeper.createClient(connect, { sessionTimeout: 4000 });
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('raw ZooKeeper client did not connect')), 5000);
      c.once('connected', () => {
        clearTimeout(t);
        resolve();
      });
      c.connect();
    });
    await new Promise<void>((resolve, reject) =>
      c.mkdirp(p, (err) => (err ? reject(err) : c.setData(p, data, -1, (e) => (e ? reject(e) : resolve())))),
    );
  } finally {
    c.close();
  }
}

const HOST = { address: '127.0.0.1:8090' };
const CONTAINER = { app: 'wordpress', port: 3001 };
const TENANT = { targets: [{ host: '01', container: 'c001' }] };
const GATEWAY = { ip: '203.0.113.7' };

/** Collects every change event of `b` until the returned stop(). */
function recorder(b: RegistryBackend): { events: ChangeEvent[]; stop: () => void } {
  const events: ChangeEvent[] = [];
  return { events, stop: b.onChange((ev) => events.push(ev)) };
}

const saw = (events: ChangeEvent[], kind: Kind, key: string) => events.some((e) => e.kind === kind && (e.key === key || e.key === undefined));

async function walk(b: RegistryBackend, kind: Kind, limit: number, parent?: string): Promise<{ keys: string[]; pages: number }> {
  const keys: string[] = [];
  let after: string | undefined;
  let pages = 0;
  do {
    const page = await b.list(kind, { limit, after, ...(parent !== undefined && { parent }) });
    assert.ok(page.keys.length <= limit, `page of ${page.keys.length} > limit ${limit}`);
    keys.push(...page.keys);
    after = page.next;
    pages++;
    assert.ok(pages < 10_000, 'paging does not end');
  } while (after !== undefined);
  return { keys, pages };
}

for (const h of [fileHarness(), zkHarness()]) {
  describe(`registry contract: ${h.name}`, { timeout: 120_000 }, () => {
    before(() => h.setup());
    after(() => h.teardown());

    const withStore = (fn: (s: Store) => Promise<void>) => async () => {
      const { store, cleanup } = await h.open();
      try {
        await fn(store);
      } finally {
        await cleanup();
      }
    };

    it(
      'put, get and delete every kind; absent keys read as undefined',
      withStore(async ({ a }) => {
        const records: [Kind, string, object][] = [
          ['hosts', '01', HOST],
          ['containers', '01/c001', CONTAINER],
          ['tenants', 'acme.test.priv', TENANT],
          ['gateways', 'gw-a', GATEWAY],
        ];
        for (const [kind, key, value] of records) {
          assert.equal(await a.get(kind, key), undefined);
          await a.put(kind, key, value);
          assert.deepEqual(await a.get(kind, key), value);
          const changed = { ...value, changed: true };
          await a.put(kind, key, changed);
          assert.deepEqual(await a.get(kind, key), changed);
          assert.equal(await a.delete(kind, key), true);
          assert.equal(await a.get(kind, key), undefined);
          assert.equal(await a.delete(kind, key), false);
        }
        assert.equal(a.status().connected, true);
        assert.equal(typeof a.status().syncedAt, 'number');
      }),
    );

    it(
      'list pages through every key once, with parent for containers',
      withStore(async ({ a }) => {
        const hosts = ['01', '02', '03', '10', 'a-b', 'a'];
        for (const id of hosts) await a.put('hosts', id, HOST);
        const all = await a.list('hosts');
        assert.deepEqual(all.keys, [...hosts].sort());
        assert.equal(all.next, undefined);
        const paged = await walk(a, 'hosts', 4);
        assert.deepEqual(paged.keys, [...hosts].sort());
        assert.equal(paged.pages, 2);
        assert.deepEqual((await a.list('hosts', { after: '03', limit: 2 })).keys, ['10', 'a']);
        assert.deepEqual(await a.list('hosts', { after: 'zzz' }), { keys: [] });

        const containers = ['a/c1', 'a/c2', 'a-b/c1', '01/x', '01/y', '01/z'];
        for (const k of containers) await a.put('containers', k, CONTAINER);
        assert.deepEqual((await a.list('containers', { parent: '01' })).keys, ['x', 'y', 'z']);
        assert.deepEqual((await walk(a, 'containers', 2, '01')).keys, ['x', 'y', 'z']);
        assert.deepEqual((await a.list('containers', { parent: 'none' })).keys, []);
        assert.deepEqual((await walk(a, 'containers', 4)).keys, [...containers].sort());
        assert.deepEqual((await walk(a, 'containers', 1)).keys, [...containers].sort());

        // Tenants: every key exactly once; the order is the backend's own (ZooKeeper: by shard).
        const tenants = Array.from({ length: 57 }, (_, i) => `t${i}.test.priv`);
        for (const k of tenants) await a.put('tenants', k, TENANT);
        const walked = await walk(a, 'tenants', 10);
        assert.equal(walked.pages, 6);
        assert.deepEqual([...walked.keys].sort(), [...tenants].sort());
        assert.equal(new Set(walked.keys).size, tenants.length);
        assert.deepEqual((await a.list('tenants')).keys.length, tenants.length);
        assert.deepEqual((await a.list('tenants', { limit: 0 })).keys, []);
      }),
    );

    it(
      'ephemeral records disappear when their owner closes; persistent ones stay',
      withStore(async (s) => {
        await s.a.put('hosts', '07', HOST, { ephemeral: true });
        await s.a.put('gateways', 'gw-e', GATEWAY, { ephemeral: true });
        await s.a.put('hosts', '08', HOST);
        await s.a.close();
        const b = await s.other();
        await waitFor(async () => (await b.get('hosts', '07')) === undefined, 'ephemeral host gone');
        assert.equal(await b.get('gateways', 'gw-e'), undefined);
        assert.deepEqual(await b.get('hosts', '08'), HOST);
        // Putting a key persistently makes it survive its writer.
        if (s.sharedWrites) {
          await b.put('hosts', '09', HOST, { ephemeral: true });
          await b.put('hosts', '09', { address: '127.0.0.1:9' });
          const c = await s.other();
          await b.close();
          assert.deepEqual(await c.get('hosts', '09'), { address: '127.0.0.1:9' });
        }
      }),
    );

    it(
      'change events reach other instances for puts and deletes',
      withStore(async (s) => {
        const b = await s.other();
        const writer = s.sharedWrites ? await s.other() : s.a;
        for (const [kind, key, value] of [
          ['tenants', 'acme.test.priv', TENANT],
          ['hosts', '01', HOST],
          ['containers', '01/c001', CONTAINER],
        ] as [Kind, string, object][]) {
          assert.equal(await b.get(kind, key), undefined); // read (and watch) before it exists
          const rec = recorder(b);
          await writer.put(kind, key, value);
          await waitFor(() => saw(rec.events, kind, key), `${kind}/${key} create event`);
          await waitFor(async () => JSON.stringify(await b.get(kind, key)) === JSON.stringify(value), `${kind}/${key} visible`);
          rec.events.length = 0;
          await writer.put(kind, key, { ...value, v: 2 });
          await waitFor(() => saw(rec.events, kind, key), `${kind}/${key} update event`);
          assert.equal(((await b.get(kind, key)) as { v?: number }).v, 2);
          rec.events.length = 0;
          await writer.delete(kind, key);
          await waitFor(() => saw(rec.events, kind, key), `${kind}/${key} delete event`);
          assert.equal(await b.get(kind, key), undefined);
          rec.stop();
        }
        // gateways: listing is enough to hear about gateways joining and leaving.
        await b.list('gateways');
        const rec = recorder(b);
        await writer.put('gateways', 'gw-new', GATEWAY, { ephemeral: true });
        await waitFor(() => rec.events.some((e) => e.kind === 'gateways'), 'gateways event on join');
        assert.deepEqual((await b.list('gateways')).keys, ['gw-new']);
        rec.events.length = 0;
        await writer.delete('gateways', 'gw-new');
        await waitFor(() => rec.events.some((e) => e.kind === 'gateways'), 'gateways event on leave');
        assert.deepEqual((await b.list('gateways')).keys, []);
        rec.stop();
      }),
    );

    it(
      'a registry over another instance sees registrations through its cache within milliseconds',
      withStore(async (s) => {
        const registry = new Registry(await s.other(false), { warn: (m) => s.warnings.push(m) });
        await registry.start();
        assert.equal(await registry.tenant('shop.test.priv'), null); // negative entry cached
        await s.a.put('tenants', 'shop.test.priv', TENANT);
        await waitFor(async () => (await registry.tenant('shop.test.priv')) !== null, 'cached miss invalidated');
        assert.deepEqual(await registry.tenant('shop.test.priv'), TENANT);
        await s.a.put('tenants', 'shop.test.priv', { targets: [{ host: '02', container: 'c9' }] });
        await waitFor(async () => (await registry.tenant('shop.test.priv'))?.targets[0]?.host === '02', 'cached hit invalidated');
      }),
    );

    it(
      'garbage in a record is ignored with a warning, never thrown',
      withStore(async (s) => {
        await s.a.put('tenants', 'good.test.priv', TENANT);
        await s.a.put('tenants', 'bad.test.priv', TENANT);
        const registry = new Registry(await s.other(false), { warn: (m) => s.warnings.push(m) });
        await registry.start();
        assert.deepEqual(await registry.tenant('bad.test.priv'), TENANT); // cached, and watched
        await s.corrupt('tenants', 'bad.test.priv');
        await waitFor(async () => (await registry.tenant('bad.test.priv')) === null, 'corrupt record read as absent');
        assert.deepEqual(await registry.tenant('good.test.priv'), TENANT);
        assert.ok(
          s.warnings.some((w) => w.includes('bad.test.priv')),
          `a warning names the record; got ${JSON.stringify(s.warnings)}`,
        );
      }),
    );
  });
}
