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
export const targetSchema = z.strictObject({ host: hostIdSchema, container: containerIdSchema });
export const tenantRecord = z.strictObject({
  targets: z.array(targetSchema).min(1, 'targets needs at least one {"host","container"}').max(64, 'at most 64 targets'),
});
export const gatewayRecord = z.strictObject({ ip: z.string().refine((s) => isIP(s) !== 0, 'ip must be an IPv4 or IPv6 address') });

export type HostRecord = z.infer<typeof hostRecord>;
export type ContainerRecord = z.infer<typeof containerRecord>;
export type Target = z.infer<typeof targetSchema>;
export type TenantRecord = z.infer<typeof tenantRecord>;
export type GatewayRecord = z.infer<typeof gatewayRecord>;

import { isIP } from 'node:net';

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
