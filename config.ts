/**
 * Flags and their TGW_<NAME> environment variables -> a validated Config. Every flag is
 * listed once, here; `--help` is generated from this table.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { compileHostPattern, DEFAULT_HOST_PATTERN, normalizeDomain, type RouteNames } from './gateway/host.js';
import { hostIdSchema } from './discovery/records.js';
import { peerMatcher } from './gateway/proxy-server.js';
import { readConfigFile } from './ops/config-file.js';

export const COMMANDS = {
  up: 'all in one process: registry, gateway, admin API, DNS and a local proxy for this machine',
  gateway: 'the HTTP gateway with its admin API (registers itself under gateways/)',
  'local-proxy': "this container host's local proxy (registers itself under hosts/<host-id>)",
  dns: 'the wildcard DNS server, answering the live gateways',
} as const;
export type Command = keyof typeof COMMANDS;

interface FlagSpec {
  default: string;
  help: string;
}

const FLAGS = {
  domain: { default: 'test.priv', help: 'the zone: tenants are <name>.<domain>' },
  bind: { default: '127.0.0.1', help: 'address the HTTP, DNS and local proxy listeners bind (0.0.0.0 for all interfaces)' },
  'http-port': { default: '8080', help: 'gateway HTTP port' },
  'https-port': { default: '8443', help: 'gateway HTTPS port (HTTP/2 and HTTP/1.1); only with --tls-cert and --tls-key' },
  'tls-cert': { default: '', help: 'PEM file: the default certificate (chain) for *.<domain> and the apex' },
  'tls-key': { default: '', help: 'PEM file: the default certificate\'s private key' },
  'admin-host': { default: '127.0.0.1', help: 'admin API bind address (keep it private)' },
  'admin-port': { default: '8081', help: 'admin API port' },
  'dns-port': { default: '5353', help: 'DNS port, UDP and TCP' },
  'local-port': { default: '8090', help: "local proxy port" },
  'host-id': { default: '01', help: "the container host id this machine's local proxy registers" },
  advertise: { default: '', help: 'address gateways use to reach this local proxy (default 127.0.0.1:<local-port>)' },
  'container-host': { default: '127.0.0.1', help: "where this host's containers listen (the local proxy forwards to <container-host>:<port>)" },
  'gateway-ip': { default: '127.0.0.1', help: 'the address DNS answers for this gateway' },
  'gateway-id': { default: '', help: 'this gateway\'s id under gateways/ (default gw-<gateway-ip>-<http-port>)' },
  'data-dir': { default: './data', help: 'where the file registry and the admin token live' },
  registry: { default: '', help: 'file:<path> or zk://host:port[,host:port...]/chroot (default file:<data-dir>/registry.json)' },
  'host-pattern': { default: DEFAULT_HOST_PATTERN, help: 'regex for structured names, named groups app, container, host; {domain} = the escaped domain' },
  'trusted-proxies': { default: '', help: 'comma-separated peer IPs or CIDRs (10.0.0.0/8) whose X-Forwarded-* are kept (local proxies also trust loopback)' },
  'header-timeout': { default: '10', help: 'seconds a client has to send complete request headers (slowloris); 408 after' },
  'body-timeout': { default: '30', help: 'seconds a request body may pause between bytes; 408 (or a closed connection) after' },
  'keepalive-timeout': { default: '5', help: 'seconds an idle keep-alive client connection stays open' },
  'max-connections': { default: '20000', help: 'open client connections per HTTP listener; more are closed on accept (0 = no limit; keep it under the fd limit)' },
  'dns-rate-limit': { default: '1000', help: 'DNS queries per second per source address over UDP, beyond which queries are dropped (0 = off; loopback is exempt)' },
  'allow-targets': { default: '', help: 'comma-separated IPs or CIDRs the admin API accepts as host addresses although link-local (169.254.0.0/16, fe80::/10)' },
  'connect-timeout': { default: '5', help: 'seconds to connect upstream' },
  'upstream-timeout': { default: '60', help: 'seconds to wait for an upstream response head, and between body chunks' },
  'zk-auth': { default: '', help: 'ZooKeeper digest credentials user:password (ACL on created znodes)' },
  'zk-session-timeout': { default: '10', help: 'ZooKeeper session timeout in seconds' },
  config: { default: '', help: 'a JSON or YAML file of these flags ({"http-port": 8080}); flags and TGW_* variables override it' },
  'access-log': { default: 'off', help: 'one JSON line per request: off, stdout, or a file path (reloadable)' },
  'log-level': { default: 'info', help: 'info, warn or error (reloadable)' },
  'drain-timeout': { default: '30', help: 'seconds SIGTERM/SIGINT waits for in-flight requests before closing them (reloadable)' },
  'metrics-tenants': { default: '100', help: 'tenants with their own /metrics series (the busiest); the rest count as tenant="other" (reloadable)' },
  'metrics-auth': { default: 'token', help: 'token: GET /metrics needs the admin token (Bearer); none: open (reloadable)' },
} as const satisfies Record<string, FlagSpec>;
type Flag = keyof typeof FLAGS;

export interface Config {
  command: Command;
  names: RouteNames;
  bind: string;
  httpPort: number;
  httpsPort: number;
  /** Paths of the default certificate and key; both or neither. */
  tls: { cert: string; key: string } | undefined;
  adminHost: string;
  adminPort: number;
  dnsPort: number;
  localPort: number;
  hostId: string;
  advertise: string | undefined;
  containerHost: string;
  gatewayIp: string;
  gatewayId: string | undefined;
  dataDir: string;
  registry: string;
  trustedProxies: string[];
  connectTimeoutMs: number;
  upstreamTimeoutMs: number;
  zkAuth: string | undefined;
  zkSessionTimeoutMs: number;
  /** The --config file, absolute, when one was given. */
  configFile: string | undefined;
  /** "off", "stdout", or an absolute file path. */
  accessLog: string;
  logLevel: LogLevel;
  drainTimeoutMs: number;
  metricsTenants: number;
  metricsAuth: 'token' | 'none';
  headerTimeoutMs: number;
  bodyTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  dnsRateLimit: number;
  allowTargets: string[];
}

export const LOG_LEVELS = ['info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export function usage(): string {
  const lines = ['Usage: tenant-gateway <command> [flags]', '', 'Commands:'];
  for (const [name, help] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(12)} ${help}`);
  lines.push('', 'Flags (each also an environment variable TGW_<NAME>, e.g. TGW_HTTP_PORT):');
  for (const [name, spec] of Object.entries(FLAGS) as [Flag, FlagSpec][]) {
    lines.push(`  --${name.padEnd(20)} ${spec.help}${spec.default ? ` [${spec.default}]` : ''}`);
  }
  lines.push('', 'Port 0 picks a free port; the start-up log prints every bound address.');
  lines.push('Admin token: TGW_ADMIN_TOKEN, else generated into <data-dir>/admin-token (mode 0600).');
  return lines.join('\n');
}

const envName = (flag: string) => `TGW_${flag.toUpperCase().replaceAll('-', '_')}`;

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config | 'help' {
  const options = Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: 'string' as const }]));
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage()}`);
  }
  if (parsed.values.help || parsed.positionals.length === 0) return 'help';
  const [command, ...extra] = parsed.positionals;
  if (!(command! in COMMANDS)) throw new UsageError(`unknown command ${JSON.stringify(command)}\n\n${usage()}`);
  if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);

  // Precedence: flag, then TGW_<NAME>, then the --config file, then the default.
  const values = parsed.values as Record<string, string | undefined>;
  const configPath = values.config ?? env[envName('config')] ?? '';
  const configFile = configPath === '' ? undefined : path.resolve(configPath);
  let fromFile: Record<string, string> = {};
  if (configFile !== undefined) {
    try {
      fromFile = readConfigFile(configFile, Object.keys(FLAGS).filter((f) => f !== 'config'));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  const get = (flag: Flag): string => values[flag] ?? env[envName(flag)] ?? fromFile[flag] ?? FLAGS[flag].default;
  /** Where a value came from, for error messages: "--http-port", "TGW_HTTP_PORT" or "http-port in gw.yaml". */
  const source = (flag: Flag): string =>
    values[flag] === undefined && env[envName(flag)] === undefined && fromFile[flag] !== undefined && configFile !== undefined
      ? `"${flag}" in ${path.basename(configFile)}`
      : values[flag] === undefined && env[envName(flag)] !== undefined
        ? envName(flag)
        : `--${flag}`;
  const port = (flag: Flag): number => {
    const v = get(flag);
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 65535) throw new UsageError(`${source(flag)} must be a port number 0-65535; got ${JSON.stringify(v)}`);
    return n;
  };
  const seconds = (flag: Flag): number => {
    const v = get(flag);
    const n = Number(v);
    if (!(n > 0) || n > 86_400) throw new UsageError(`${source(flag)} must be a number of seconds (0-86400]; got ${JSON.stringify(v)}`);
    return Math.round(n * 1000);
  };
  const oneOf = <T extends string>(flag: Flag, allowed: readonly T[]): T => {
    const v = get(flag);
    if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`${source(flag)} must be one of ${allowed.join(', ')}; got ${JSON.stringify(v)}`);
    return v as T;
  };
  const count = (flag: Flag, max: number): number => {
    const v = get(flag);
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > max) throw new UsageError(`${source(flag)} must be a whole number 0-${max}; got ${JSON.stringify(v)}`);
    return n;
  };
  const wrap = <T>(flag: Flag, f: () => T): T => {
    try {
      return f();
    } catch (err) {
      // host.ts messages name the flag; name the file or variable when the value came from one.
      const from = source(flag);
      throw new UsageError(from === `--${flag}` ? (err as Error).message : `${from}: ${(err as Error).message}`);
    }
  };

  /** Comma-separated IPs/CIDRs, checked here so a typo stops start-up rather than trusting nobody. */
  const peerList = (flag: Flag): string[] => {
    const list = get(flag).split(',').map((s) => s.trim()).filter((s) => s !== '');
    wrap(flag, () => peerMatcher(list, `--${flag}`));
    return list;
  };

  const accessLog = get('access-log');
  if (accessLog === '') throw new UsageError(`${source('access-log')} must be off, stdout or a file path`);

  const domain = wrap('domain', () => normalizeDomain(get('domain')));
  const hostPattern = wrap('host-pattern', () => compileHostPattern(get('host-pattern'), domain));
  const hostId = get('host-id');
  if (!hostIdSchema.safeParse(hostId).success) throw new UsageError(`${source('host-id')} must be one DNS label of a-z, 0-9 and '-'; got ${JSON.stringify(hostId)}`);
  const dataDir = path.resolve(get('data-dir'));
  const zkAuth = get('zk-auth');
  if (zkAuth !== '' && !/^[^:]+:.+$/.test(zkAuth)) throw new UsageError(`${source('zk-auth')} must be user:password`);

  return {
    command: command as Command,
    names: { domain, hostPattern },
    bind: get('bind'),
    httpPort: port('http-port'),
    httpsPort: port('https-port'),
    tls: tlsFiles(get('tls-cert'), get('tls-key')),
    adminHost: get('admin-host'),
    adminPort: port('admin-port'),
    dnsPort: port('dns-port'),
    localPort: port('local-port'),
    hostId,
    advertise: get('advertise') || undefined,
    containerHost: get('container-host'),
    gatewayIp: get('gateway-ip'),
    gatewayId: get('gateway-id') || undefined,
    dataDir,
    registry: get('registry') || `file:${path.join(dataDir, 'registry.json')}`,
    trustedProxies: peerList('trusted-proxies'),
    connectTimeoutMs: seconds('connect-timeout'),
    upstreamTimeoutMs: seconds('upstream-timeout'),
    zkAuth: zkAuth || undefined,
    zkSessionTimeoutMs: seconds('zk-session-timeout'),
    configFile,
    accessLog: accessLog === 'off' || accessLog === 'stdout' ? accessLog : path.resolve(accessLog),
    logLevel: oneOf('log-level', LOG_LEVELS),
    drainTimeoutMs: seconds('drain-timeout'),
    metricsTenants: count('metrics-tenants', 10_000),
    metricsAuth: oneOf('metrics-auth', ['token', 'none'] as const),
    headerTimeoutMs: seconds('header-timeout'),
    bodyTimeoutMs: seconds('body-timeout'),
    keepAliveTimeoutMs: seconds('keepalive-timeout'),
    maxConnections: count('max-connections', 1_000_000),
    dnsRateLimit: count('dns-rate-limit', 1_000_000),
    allowTargets: peerList('allow-targets'),
  };
}

/** --tls-cert and --tls-key come together; paths are resolved now (the files are read at start). */
function tlsFiles(cert: string, key: string): { cert: string; key: string } | undefined {
  if (cert === '' && key === '') return undefined;
  if (cert === '' || key === '') throw new UsageError('--tls-cert and --tls-key go together: give both PEM files (scripts/dev-ca.sh makes a pair for trying it)');
  return { cert: path.resolve(cert), key: path.resolve(key) };
}
