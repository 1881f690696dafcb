/**
 * Record shapes and name rules, shared by the admin API (which rejects bad input with 400)
 * and the registry (which ignores bad stored data instead of crashing on it).
 */
import { z } from 'zod';

/** Host, container and app ids: one lowercase DNS label, so they fit a structured hostname. */
export const ID_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const id = (what: string) =>
  z.string().regex(ID_RE, `${what} must be 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit`);

export const hostIdSchema = id('host id');
export const containerIdSchema = id('container id');

const MAX_PORT = 65535;
const port = z.number().int().min(1, 'port must be 1-65535').max(MAX_PORT, 'port must be 1-65535');

/** "ip:port", "[v6]:port" or "name:port"; parsed again by parseAddress where it is used. */
const address = z.string().max(300).refine((s) => parseAddress(s) !== undefined, {
  message: 'address must be host:port (IPv4, [IPv6] or a hostname) with a port of 1-65535',
});

export const hostRecord = z.strictObject({ address });
export const containerRecord = z.strictObject({ app: id('app'), port });
export const targetSchema = z.strictObject({
  host: hostIdSchema,
  container: containerIdSchema,
  /** Relative share of new requests (round robin, least connections, hashing). */
  weight: z.number().int().min(1, 'weight must be 1-100').max(100, 'weight must be 1-100').optional(),
});

const seconds = (what: string, max: number) =>
  z.number().min(0, `${what} must be 0-${max} seconds`).max(max, `${what} must be 0-${max} seconds`);
const count = (what: string, min: number, max: number) =>
  z.number().int().min(min, `${what} must be an integer ${min}-${max}`).max(max, `${what} must be an integer ${min}-${max}`);

/** Per-tenant traffic settings; every field optional, defaults in gateway/tenants.ts (TENANT_DEFAULTS). */
export const tenantSettings = {
  /** round-robin (default), least-conn, ip-hash, or hash (consistent, on `hashKey`). */
  balance: z.enum(['round-robin', 'least-conn', 'ip-hash', 'hash']).optional(),
  /** For balance "hash": "header:<name>", "cookie:<name>" or "path". */
  hashKey: z
    .string()
    .regex(/^(?:header:[A-Za-z0-9-]{1,64}|cookie:[A-Za-z0-9_.-]{1,64}|path)$/, 'hashKey must be "header:<name>", "cookie:<name>" or "path"')
    .optional(),
  /** Cookie stickiness: a client keeps its replica while it is healthy. */
  sticky: z
    .strictObject({
      cookie: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'sticky.cookie must be a cookie name (letters, digits, _ . -)').optional(),
      maxAge: seconds('sticky.maxAge', 31_536_000).optional(),
    })
    .optional(),
  /** Active health checks, run by the gateway through the local proxy to each replica. */
  healthCheck: z
    .strictObject({
      path: z.string().regex(/^\/[\x21-\x7e]{0,255}$/, 'healthCheck.path must start with "/" (visible ASCII, at most 256)').optional(),
      interval: seconds('healthCheck.interval', 3600).refine((v) => v >= 0.1, 'healthCheck.interval must be at least 0.1 seconds').optional(),
      timeout: seconds('healthCheck.timeout', 60).refine((v) => v >= 0.05, 'healthCheck.timeout must be at least 0.05 seconds').optional(),
      rise: count('healthCheck.rise', 1, 100).optional(),
      fall: count('healthCheck.fall', 1, 100).optional(),
    })
    .optional(),
  /** Passive checks: this many consecutive failures (connect errors, 5xx) eject a replica for `cooldown`; 0 = off. */
  passive: z.strictObject({ failures: count('passive.failures', 0, 1000).optional(), cooldown: seconds('passive.cooldown', 3600).optional() }).optional(),
  /** Retries on another replica: at most `attempts` more tries, all within `deadline`. */
  retries: z.strictObject({ attempts: count('retries.attempts', 0, 10).optional(), deadline: seconds('retries.deadline', 300).optional() }).optional(),
  /** While no replica can take a request: hold up to `queue` requests for up to `timeout`; then 503. */
  hold: z.strictObject({ timeout: seconds('hold.timeout', 60).optional(), queue: count('hold.queue', 0, 10_000).optional() }).optional(),
  /** Most requests in flight per replica (0 = no limit); more wait in a queue of `maxQueue`. */
  maxConn: count('maxConn', 0, 100_000).optional(),
  maxQueue: count('maxQueue', 0, 10_000).optional(),
  /** Plain HTTP requests answered with 308 to https://; HSTS on HTTPS answers. */
  https: z
    .strictObject({
      redirect: z.boolean().optional(),
      hsts: z
        .strictObject({
          maxAge: count('https.hsts.maxAge', 0, 63_072_000),
          includeSubDomains: z.boolean().optional(),
          preload: z.boolean().optional(),
        })
        .optional(),
    })
    .optional(),
};

export const tenantRecord = z
  .strictObject({
    targets: z.array(targetSchema).min(1, 'targets needs at least one {"host","container"}').max(64, 'at most 64 targets'),
    ...tenantSettings,
  })
  .refine((t) => t.balance !== 'hash' || t.hashKey !== undefined, { message: 'balance "hash" needs hashKey ("header:<name>", "cookie:<name>" or "path")', path: ['hashKey'] })
  .refine((t) => new Set(t.targets.map((x) => `${x.host}/${x.container}`)).size === t.targets.length, {
    message: 'targets has the same host and container twice',
    path: ['targets'],
  });
export const gatewayRecord = z.strictObject({ ip: z.string().refine((s) => isIP(s) !== 0, 'ip must be an IPv4 or IPv6 address') });

/** A TLS certificate chain and its private key, PEM; validated in gateway/tls.ts before it is stored. */
export const certificateRecord = z.strictObject({
  cert: z.string().min(1, 'cert must be a PEM certificate chain').max(32_768, 'cert must be at most 32 KB of PEM'),
  key: z.string().min(1, 'key must be a PEM private key').max(16_384, 'key must be at most 16 KB of PEM'),
});
export type CertificateRecord = z.infer<typeof certificateRecord>;

export type HostRecord = z.infer<typeof hostRecord>;
export type ContainerRecord = z.infer<typeof containerRecord>;
export type Target = z.infer<typeof targetSchema>;
export type TenantRecord = z.infer<typeof tenantRecord>;
export type GatewayRecord = z.infer<typeof gatewayRecord>;

import { BlockList, isIP } from 'node:net';
import os from 'node:os';

export interface Address {
  host: string;
  port: number;
}

/** "127.0.0.1:8090" -> {host, port}; undefined when it is not a usable address. */
export function parseAddress(s: string): Address | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)|([a-zA-Z0-9](?:[a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?)):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const host = m[1] ?? m[2] ?? m[3];
  const p = Number(m[4]);
  if (host === undefined || p < 1 || p > MAX_PORT) return undefined;
  if (m[1] !== undefined && isIP(m[1]) !== 6) return undefined;
  if (m[2] !== undefined && isIP(m[2]) !== 4) return undefined;
  return { host, port: p };
}

/** The first problem in a zod error, as {field, message} for a 400 body. */
export function firstIssue(err: z.ZodError): { field: string; message: string } {
  const issue = err.issues[0];
  if (!issue) return { field: '', message: 'invalid' };
  const field = issue.path.map(String).join('.');
  let message = issue.message;
  if (issue.code === 'unrecognized_keys') message = `unknown field(s): ${issue.keys.join(', ')}`;
  return { field, message };
}

/** A listener this gateway owns (admin API, DNS, its own HTTP port) or depends on (ZooKeeper). */
export interface ForbiddenTarget {
  host: string;
  port: number;
  /** "admin API", "DNS server", "ZooKeeper"... named in the 400. */
  what: string;
}

export interface TargetRules {
  /** Never a target: forwarding there would loop or open a way in. */
  forbidden: readonly ForbiddenTarget[];
  /** Link-local addresses accepted anyway (--allow-targets). */
  allow?: (ip: string) => boolean;
}

/** RFC 3927 and RFC 4291 §2.5.6: link-local, where cloud metadata services (169.254.169.254) live. */
const LINK_LOCAL = new BlockList();
LINK_LOCAL.addSubnet('169.254.0.0', 16, 'ipv4');
LINK_LOCAL.addSubnet('fe80::', 10, 'ipv6');

const v4Of = (ip: string): string => (ip.toLowerCase().startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip);

function isLinkLocal(ip: string): boolean {
  const plain = v4Of(ip);
  const family = isIP(plain);
  return family !== 0 && LINK_LOCAL.check(plain, family === 4 ? 'ipv4' : 'ipv6');
}

let localAddresses: Set<string> | undefined;
/** Loopback, unspecified, "localhost" and this machine's interface addresses: all reach our own ports. */
function isThisMachine(host: string): boolean {
  const h = v4Of(host.toLowerCase());
  if (h === 'localhost' || h.startsWith('127.') || h === '::1' || h === '0.0.0.0' || h === '::') return true;
  localAddresses ??= new Set(
    Object.values(os.networkInterfaces())
      .flat()
      .map((i) => (i?.address ?? '').toLowerCase()),
  );
  return localAddresses.has(h);
}

/**
 * Why a host address given to the admin API must not become a forwarding target, or null.
 * Loopback stays allowed (one-machine setups run the local proxy there); link-local needs an
 * explicit --allow-targets; this gateway's own listeners and its ZooKeeper never pass.
 * Hostnames are checked as text ("localhost" counts as loopback); they are resolved only when used.
 */
export function targetProblem(address: string, rules: TargetRules): string | null {
  const a = parseAddress(address);
  if (a === undefined) return 'address must be host:port';
  const host = v4Of(a.host.toLowerCase());
  if (host === '0.0.0.0' || host === '::') return `address ${address} is the unspecified address: give the address the local proxy listens on`;
  for (const f of rules.forbidden) {
    if (f.port !== a.port) continue;
    const fh = v4Of(f.host.toLowerCase());
    if (fh === host || (isThisMachine(host) && isThisMachine(fh))) {
      return `address ${address} is this gateway's ${f.what} (${f.host}:${f.port}); a host address must be a local proxy`;
    }
  }
  if (isLinkLocal(host) && !(rules.allow?.(host) ?? false)) {
    return `address ${address} is link-local (169.254.0.0/16, fe80::/10), where cloud metadata services answer; allow it with --allow-targets if it really is a local proxy`;
  }
  return null;
}
