/** The CLI as users run it: separate processes, start-up log, signals, the file lock. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import path from 'node:path';
import { describe, it } from 'node:test';
import { boundPort, runCli } from './support/cli.js';
import { tempDir } from './support/node.js';
import { request, startApp, waitFor } from './support/util.js';

const run = runCli;
const bound = boundPort;

describe('tenant-gateway CLI', () => {
  it('--help lists the commands and flags', async () => {
    const p = run(['--help']);
    const [code] = (await once(p.child, 'exit')) as [number];
    assert.equal(code, 0);
    const text = p.lines.map((l) => l.text).join('\n');
    for (const word of ['up', 'gateway', 'local-proxy', 'dns', '--domain', '--http-port', '--registry', 'TGW_']) assert.ok(text.includes(word), word);
  });

  it('a bad flag exits 2 with a message naming it', async () => {
    const p = run(['up', '--http-port', 'eighty']);
    const [code] = (await once(p.child, 'exit')) as [number];
    assert.equal(code, 2);
    assert.match(p.stderr(), /--http-port must be a port number/);
  });

  it('up logs every bound address, serves, and exits 0 on SIGTERM; a second owner is refused', async () => {
    const dir = tempDir();
    const app = await startApp('cli');
    const args = ['up', '--http-port', '0', '--admin-port', '0', '--dns-port', '0', '--local-port', '0', '--data-dir', dir];
    const p = run(args, { TGW_ADMIN_TOKEN: 'secret-token' });
    try {
      await waitFor(() => bound(p, 'dns'), 'start-up log', 15_000);
      const http = bound(p, 'gateway') ?? 0;
      const admin = bound(p, 'admin') ?? 0;
      assert.ok(bound(p, 'local-proxy'));
      const put = await request(admin, {
        method: 'PUT',
        path: '/v1/hosts/01/containers/c001',
        headers: { authorization: 'Bearer secret-token' },
        body: JSON.stringify({ app: 'wordpress', port: app.port }),
      });
      assert.equal(put.status, 200, put.body);
      const r = await request(http, { headers: { host: 'wordpress_c001_01.test.priv' } });
      assert.equal(r.status, 200);
      assert.equal((JSON.parse(r.body) as { app: string }).app, 'cli');

      const second = run(args);
      const [code2] = (await once(second.child, 'exit')) as [number];
      assert.equal(code2, 1);
      assert.ok(second.lines.some((l) => /owned by process \d+/.test(String(l.msg))), JSON.stringify(second.lines));
    } finally {
      p.child.kill('SIGTERM');
      const [code] = (await once(p.child, 'exit')) as [number];
      await app.close();
      assert.equal(code, 0);
    }
  });

  it('generates an admin token file with mode 0600 when TGW_ADMIN_TOKEN is unset', async () => {
    const dir = tempDir();
    const env = { TGW_ADMIN_TOKEN: '' };
    const p = run(['gateway', '--http-port', '0', '--admin-port', '0', '--data-dir', dir], env);
    try {
      await waitFor(() => bound(p, 'admin'), 'admin listening', 15_000);
      const fs = await import('node:fs');
      const file = path.join(dir, 'admin-token');
      assert.equal(fs.statSync(file).mode & 0o777, 0o600);
      const token = fs.readFileSync(file, 'utf8').trim();
      assert.ok(token.length >= 32);
      const r = await request(bound(p, 'admin') ?? 0, { path: '/v1/hosts', headers: { authorization: `Bearer ${token}` } });
      assert.equal(r.status, 200);
    } finally {
      p.child.kill('SIGTERM');
      await once(p.child, 'exit');
    }
  });
});
