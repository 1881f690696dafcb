/**
 * Host header -> what it names. Pure functions, table-tested (test/host.test.ts).
 *
 * The backend address never comes from this text: these functions only produce registry
 * keys (a tenant name, or host/container/app ids) that the registry then resolves.
 */

/** RFC 1035 §2.3.4: a name is at most 253 characters written without the trailing dot. */
const MAX_NAME = 253;
const MAX_LABEL = 63;

export type NameKind =
  | { kind: 'structured'; app: string; container: string; host: string }
  | { kind: 'tenant'; name: string }
  | { kind: 'apex' };

export interface RouteNames {
  /** The zone, lowercase, no trailing dot: "test.priv". */
  domain: string;
  /** Matches a whole normalized hostname; named groups app, container, host. */
  hostPattern: RegExp;
}

export class BadHostError extends Error {
  override readonly name = 'BadHostError';
}

/**
 * "Acme.Test.Priv.:8080" -> "acme.test.priv". Length is checked before anything else, so a
 * 10 KB Host costs one comparison. Labels: letters, digits, '-' and '_' (structured names
 * use '_'), 1-63 characters each.
 */
export function normalizeHost(raw: string | undefined): string {
  if (raw === undefined || raw.length === 0) throw new BadHostError('the request has no Host header');
  if (raw.length > MAX_NAME + 7) throw new BadHostError(`Host is longer than ${MAX_NAME} characters`);
  let end = raw.length;
  const colon = raw.lastIndexOf(':');
  if (colon !== -1) {
    const port = raw.slice(colon + 1);
    if (!/^\d{1,5}$/.test(port)) throw new BadHostError('Host has a malformed port');
    end = colon;
  }
  if (end > 0 && raw.charCodeAt(end - 1) === 0x2e /* . */) end--;
  if (end === 0) throw new BadHostError('Host is empty');
  if (end > MAX_NAME) throw new BadHostError(`Host is longer than ${MAX_NAME} characters`);
  let label = 0;
  for (let i = 0; i < end; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0x2e) {
      if (label === 0) throw new BadHostError('Host has an empty label');
      label = 0;
      continue;
    }
    const ok =
      (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
    if (!ok) throw new BadHostError('Host may contain only letters, digits, "-", "_" and "."');
    if (++label > MAX_LABEL) throw new BadHostError(`Host has a label longer than ${MAX_LABEL} characters`);
  }
  if (label === 0) throw new BadHostError('Host has an empty label');
  return raw.slice(0, end).toLowerCase();
}

/** What a normalized hostname names. Structured names win over tenant names. */
export function classifyHost(host: string, names: RouteNames): NameKind {
  const m = names.hostPattern.exec(host);
  const g = m?.groups;
  if (g?.app !== undefined && g.container !== undefined && g.host !== undefined) {
    return { kind: 'structured', app: g.app, container: g.container, host: g.host };
  }
  if (host === names.domain) return { kind: 'apex' };
  const suffix = `.${names.domain}`;
  if (host.endsWith(suffix)) {
    const sub = host.slice(0, -suffix.length);
    if (!sub.includes('.')) return { kind: 'tenant', name: sub };
  }
  return { kind: 'tenant', name: host };
}

export const DEFAULT_HOST_PATTERN = '^(?<app>[a-z0-9]+)_(?<container>[a-z0-9]+)_(?<host>[a-z0-9]+)\\.{domain}$';

/**
 * Compiles --host-pattern. `{domain}` stands for the escaped domain. The pattern must name
 * the groups app, container and host, and is matched against the whole normalized name.
 */
export function compileHostPattern(source: string, domain: string): RegExp {
  const escaped = domain.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  let re: RegExp;
  try {
    re = new RegExp(source.replaceAll('{domain}', escaped));
  } catch (err) {
    throw new Error(`--host-pattern is not a valid regular expression: ${(err as Error).message}`);
  }
  for (const group of ['app', 'container', 'host']) {
    if (!source.includes(`(?<${group}>`)) {
      throw new Error(`--host-pattern must have a named group (?<${group}>...); got ${source}`);
    }
  }
  return re;
}

/** A valid domain for --domain: labels of letters, digits and '-', lowercase. */
export function normalizeDomain(raw: string): string {
  const d = raw.toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/.test(d) || d.length > MAX_NAME) {
    throw new Error(`--domain must be a DNS name such as test.priv; got ${JSON.stringify(raw)}`);
  }
  return d;
}

const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Tenant names: one label ("acme", routed as acme.<domain>) or a customer's full domain
 * ("shop.example.com"). No '_' (public CAs refuse it, CA/B Forum SC12), and nothing that a
 * structured name or another spelling of a tenant would shadow. Returns the problem, or null.
 */
export function tenantNameProblem(name: string, names: RouteNames): string | null {
  if (name.length > MAX_NAME) return `tenant name is longer than ${MAX_NAME} characters`;
  if (name !== name.toLowerCase()) return 'tenant name must be lowercase';
  const labels = name.split('.');
  if (!labels.every((l) => LABEL_RE.test(l))) {
    return 'tenant name must be a DNS label (a-z, 0-9, "-"; 1-63 characters) or a domain made of such labels; "_" is not allowed because public CAs cannot issue certificates for it';
  }
  if (name === names.domain) return `the apex ${names.domain} cannot be a tenant`;
  if (names.hostPattern.test(name) || names.hostPattern.test(`${name}.${names.domain}`)) {
    return 'tenant name has the form of a structured name (app_container_host) and would be shadowed by it';
  }
  const suffix = `.${names.domain}`;
  if (name.endsWith(suffix) && !name.slice(0, -suffix.length).includes('.')) {
    return `register "${name.slice(0, -suffix.length)}" instead: it routes ${name}`;
  }
  return null;
}
