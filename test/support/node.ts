/** Starts tenant-gateway roles in this process, on 127.0.0.1 port 0, with a temp data dir. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { start, type Running } from '../../compose.js';
import { parseConfig, type Config } from '../../config.js';
import { silentLogger } from '../../log.js';
import { request, type Reply } from './util.js';

export interface TestNode extends Running {
  dataDir: string;
  config: Config;
  httpPort: number;
  adminPort: number;
  /** Admin API call with the token. */
  admin(method: string, urlPath: string, body?: unknown, headers?: Record<string, string>): Promise<Reply>;
  /** A request through the gateway with this Host. */
  get(host: string, opts?: { path?: string; headers?: Record<string, string>; method?: string; body?: string | Buffer }): Promise<Reply>;
}

export function tempDir(prefix = 'tgw-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function startNode(args: string[] = [], dataDir = tempDir()): Promise<TestNode> {
  const defaults = ['--http-port', '0', '--admin-port', '0', '--dns-port', '0', '--local-port', '0', '--data-dir', dataDir];
  const hasCommand = args[0] !== undefined && !args[0].startsWith('-');
  // Later flags win: the test's own args override the port-0 defaults.
  const cfg = parseConfig([...(hasCommand ? [] : ['up']), ...defaults, ...args], {});
  if (cfg === 'help') throw new Error('unexpected help');
  const running = await start(cfg, silentLogger);
  const httpPort = running.addresses.http?.port ?? 0;
  const adminPort = running.addresses.admin?.port ?? 0;
  return {
    ...running,
    dataDir,
    config: cfg,
    httpPort,
    adminPort,
    admin: (method, urlPath, body, headers) =>
      request(adminPort, {
        method,
        path: urlPath,
        headers: { authorization: `Bearer ${running.token}`, 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      }),
    get: (host, opts = {}) => request(httpPort, { method: opts.method, path: opts.path, headers: { host, ...opts.headers }, body: opts.body }),
  };
}
