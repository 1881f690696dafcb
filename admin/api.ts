/**
 * The admin API (hono): registration of hosts, containers and tenants, lists, explain.
 * Separate listener from traffic, loopback by default, bearer token on every /v1 call.
 * Errors are JSON: {"error": code, "field"?: name, "message": what to do}.
 */
import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { getConnInfo } from '@hono/node-server/conninfo';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { LRUCache } from 'lru-cache';
import type { z } from 'zod';
import { RegistryUnavailableError } from '../discovery/backend.js';
import type { Registry } from '../discovery/registry.js';
import {
  certificateRecord,
  containerIdSchema,
  containerRecord,
  firstIssue,
  hostIdSchema,
  hostRecord,
  targetProblem,
  tenantRecord,
  type TargetRules,
} from '../discovery/records.js';
import { explainHost } from '../gateway/explain.js';
import { tenantNameProblem, type RouteNames } from '../gateway/host.js';
import type { Router } from '../gateway/proxy-server.js';
import { checkCertificate, summarize } from '../gateway/tls.js';

export interface AdminOptions {
  registry: Registry;
  names: RouteNames;
  /** The gateway's router, for explain. */
  router: Router;
  token: string;
  /** Largest accepted request body. */
  maxBodyBytes?: number;
  /**
   * What a registered host address may not be (this gateway's listeners, its ZooKeeper,
   * link-local); a function because listeners on port 0 learn their port after this app exists.
   */
  targetRules?: () => TargetRules;
  /** Failed authentications per client address within `windowMs` before every call gets 429; default 10 per minute. */
  authFailures?: { max: number; windowMs: number };
}

class BadRequest extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * Listener limits for the admin server (createAdaptorServer({fetch, serverOptions})): the same
 * slowloris and header bounds as the traffic listeners; node's defaults wait 60 s for headers.
 */
export const ADMIN_SERVER_OPTIONS = {
  headersTimeout: 10_000,
  requestTimeout: 30_000,
  keepAliveTimeout: 5_000,
  connectionsCheckingInterval: 1_000,
  maxHeaderSize: 16 * 1024,
} as const;
/** Open admin connections at once (set as server.maxConnections): the admin API is for operators. */
export const ADMIN_MAX_CONNECTIONS = 256;

export function createAdminApp(opts: AdminOptions): Hono {
  const { registry, names } = opts;
  const app = new Hono();
  const tokenDigest = digest(opts.token);

  app.onError((err, c) => {
    if (err instanceof BadRequest) return c.json({ error: 'invalid_request', field: err.field, message: err.message }, 400);
    if (err instanceof RegistryUnavailableError) {
      c.header('retry-after', '1');
      return c.json({ error: 'registry_unavailable', message: err.message }, 503);
    }
    console.error(err);
    return c.json({ error: 'internal', message: 'internal error; see the gateway log' }, 500);
  });
  app.notFound((c) => c.json({ error: 'not_found', message: `no such endpoint: ${c.req.method} ${c.req.path}` }, 404));

  app.get('/healthz', (c) => c.json({ ok: true, registry: registry.backend.status() }));

  // Per client address: a guesser gets `max` tries per window, then 429 until the window ends,
  // even for the right token (so a lockout reveals nothing). Bounded: the oldest clients go first.
  const limit = opts.authFailures ?? { max: 10, windowMs: 60_000 };
  const failures = new LRUCache<string, { count: number; resetAt: number }>({ max: 10_000 });

  // Constant-time compare of digests: the token's length does not leak either.
  app.use('/v1/*', async (c, next) => {
    const client = clientAddress(c);
    const now = Date.now();
    let f = failures.get(client);
    if (f !== undefined && now >= f.resetAt) {
      failures.delete(client);
      f = undefined;
    }
    if (f !== undefined && f.count >= limit.max) {
      c.header('retry-after', String(Math.max(1, Math.ceil((f.resetAt - now) / 1000))));
      return c.json({ error: 'too_many_requests', message: `too many failed authentications from ${client}; retry after the Retry-After seconds` }, 429);
    }
    const header = c.req.header('authorization') ?? '';
    const given = header.startsWith('Bearer ') ? header.slice(7) : '';
    if (!timingSafeEqual(digest(given), tokenDigest)) {
      if (f === undefined) failures.set(client, { count: 1, resetAt: now + limit.windowMs });
      else f.count++;
      c.header('www-authenticate', 'Bearer realm="tenant-gateway admin"');
      return c.json({ error: 'unauthorized', message: 'send the admin token as "Authorization: Bearer <token>" (see data/admin-token or TGW_ADMIN_TOKEN)' }, 401);
    }
    await next();
  });
  app.use(
    '/v1/*',
    bodyLimit({
      maxSize: opts.maxBodyBytes ?? 64 * 1024,
      onError: (c) => c.json({ error: 'invalid_request', field: '', message: `body is larger than ${opts.maxBodyBytes ?? 64 * 1024} bytes` }, 400),
    }),
  );

  // ---- hosts ----------------------------------------------------------------------------
  app.get('/v1/hosts', async (c) => {
    const { keys } = await registry.list('hosts');
    const hosts = [];
    for (const id of keys) hosts.push({ id, ...(await registry.read('hosts', id)) });
    return c.json({ hosts });
  });
  app.put('/v1/hosts/:hostId', async (c) => {
    const id = param(c, 'hostId', hostIdSchema);
    const rec = await body(c, hostRecord);
    const problem = opts.targetRules === undefined ? null : targetProblem(rec.address, opts.targetRules());
    if (problem !== null) throw new BadRequest('address', problem);
    await registry.put('hosts', id, rec);
    return c.json({ id, ...rec });
  });
  app.get('/v1/hosts/:hostId', async (c) => {
    const id = param(c, 'hostId', hostIdSchema);
    const rec = await registry.read('hosts', id);
    const { keys } = await registry.list('containers', { parent: id });
    if (rec === null && keys.length === 0) return notFound(c, `host ${id}`);
    const containers = [];
    for (const cid of keys) containers.push({ id: cid, ...(await registry.read('containers', `${id}/${cid}`)) });
    return c.json({ id, ...(rec ?? { address: null }), containers });
  });
  app.delete('/v1/hosts/:hostId', async (c) => {
    const id = param(c, 'hostId', hostIdSchema);
    return (await registry.delete('hosts', id)) ? c.body(null, 204) : notFound(c, `host ${id}`);
  });

  // ---- containers -----------------------------------------------------------------------
  app.get('/v1/hosts/:hostId/containers', async (c) => {
    const id = param(c, 'hostId', hostIdSchema);
    const { keys } = await registry.list('containers', { parent: id });
    const containers = [];
    for (const cid of keys) containers.push({ id: cid, ...(await registry.read('containers', `${id}/${cid}`)) });
    return c.json({ host: id, containers });
  });
  app.put('/v1/hosts/:hostId/containers/:containerId', async (c) => {
    const hostId = param(c, 'hostId', hostIdSchema);
    const id = param(c, 'containerId', containerIdSchema);
    const rec = await body(c, containerRecord);
    await registry.put('containers', `${hostId}/${id}`, rec);
    return c.json({ host: hostId, id, ...rec });
  });
  app.get('/v1/hosts/:hostId/containers/:containerId', async (c) => {
    const hostId = param(c, 'hostId', hostIdSchema);
    const id = param(c, 'containerId', containerIdSchema);
    const rec = await registry.read('containers', `${hostId}/${id}`);
    return rec === null ? notFound(c, `container ${id} on host ${hostId}`) : c.json({ host: hostId, id, ...rec });
  });
  app.delete('/v1/hosts/:hostId/containers/:containerId', async (c) => {
    const hostId = param(c, 'hostId', hostIdSchema);
    const id = param(c, 'containerId', containerIdSchema);
    return (await registry.delete('containers', `${hostId}/${id}`)) ? c.body(null, 204) : notFound(c, `container ${id} on host ${hostId}`);
  });

  // ---- tenants --------------------------------------------------------------------------
  app.get('/v1/tenants', async (c) => {
    const limitText = c.req.query('limit') ?? '1000';
    const limit = Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new BadRequest('limit', 'limit must be an integer from 1 to 10000');
    const after = c.req.query('after');
    const page = await registry.list('tenants', { after, limit });
    return c.json({ tenants: page.keys, next: page.next ?? null });
  });
  app.put('/v1/tenants/:name', async (c) => {
    const name = tenantName(c);
    const rec = await body(c, tenantRecord);
    await registry.put('tenants', name, rec);
    return c.json({ name, ...rec });
  });
  app.get('/v1/tenants/:name', async (c) => {
    const name = tenantName(c);
    const rec = await registry.read('tenants', name);
    // Replica health and balancing state, once the tenant has seen traffic at this gateway.
    return rec === null ? notFound(c, `tenant ${name}`) : c.json({ name, ...rec, state: opts.router.describeTenant?.(name) ?? null });
  });
  app.delete('/v1/tenants/:name', async (c) => {
    const name = tenantName(c);
    return (await registry.delete('tenants', name)) ? c.body(null, 204) : notFound(c, `tenant ${name}`);
  });

  // ---- certificates (custom domains' TLS; the key is never sent back) --------------------
  app.get('/v1/certificates', async (c) => {
    const page = await registry.list('certificates', { after: c.req.query('after'), limit: 1000 });
    return c.json({ certificates: page.keys, next: page.next ?? null });
  });
  app.put('/v1/certificates/:name', async (c) => {
    const name = certificateName(c);
    const rec = await body(c, certificateRecord);
    const checked = checkCertificate(name, rec);
    if ('problem' in checked) throw new BadRequest(checked.field, checked.problem);
    await registry.put('certificates', name, rec);
    return c.json(checked);
  });
  app.get('/v1/certificates/:name', async (c) => {
    const name = certificateName(c);
    const rec = await registry.read('certificates', name);
    if (rec === null) return notFound(c, `certificate ${name}`);
    try {
      return c.json(summarize(name, new X509Certificate(rec.cert)));
    } catch {
      return c.json({ name, error: 'the stored certificate does not parse' });
    }
  });
  app.delete('/v1/certificates/:name', async (c) => {
    const name = certificateName(c);
    return (await registry.delete('certificates', name)) ? c.body(null, 204) : notFound(c, `certificate ${name}`);
  });

  function certificateName(c: Context): string {
    const name = c.req.param('name') ?? '';
    if (!name.includes('.') || tenantNameProblem(name, names) !== null || name.endsWith(`.${names.domain}`)) {
      throw new BadRequest(
        'name',
        `certificates are for customers' own domains (e.g. shop.example.com); names in ${names.domain} use the default certificate (--tls-cert)`,
      );
    }
    return name;
  }

  // ---- explain --------------------------------------------------------------------------
  app.get('/v1/explain', async (c) => {
    const host = c.req.query('host');
    if (host === undefined || host === '') throw new BadRequest('host', 'give the hostname to explain: /v1/explain?host=acme.test.priv');
    return c.json(await explainHost(host, registry, names, opts.router));
  });

  function tenantName(c: Context): string {
    const name = c.req.param('name') ?? '';
    const problem = tenantNameProblem(name, names);
    if (problem !== null) throw new BadRequest('name', problem);
    return name;
  }

  return app;
}

/** The peer's address; "unknown" outside a node server (app.request in tests). */
function clientAddress(c: Context): string {
  try {
    return getConnInfo(c).remote.address ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function param(c: Context, name: string, schema: z.ZodString): string {
  const value = c.req.param(name) ?? '';
  const r = schema.safeParse(value);
  if (!r.success) throw new BadRequest(name, r.error.issues[0]?.message ?? 'invalid');
  return r.data;
}

async function body<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    raw = JSON.parse(await c.req.text());
  } catch {
    throw new BadRequest('', 'body is not valid JSON');
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const { field, message } = firstIssue(r.error);
    throw new BadRequest(field, message);
  }
  return r.data;
}

function notFound(c: Context, what: string) {
  return c.json({ error: 'not_found', message: `${what} is not registered` }, 404);
}
