/** The CLI as users run it: separate processes, start-up log, signals, the file lock. */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { tempDir } from './support/node.js';
import { request, startApp, waitFor } from './support/util.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/tenant-gateway.js');

interface Proc {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  stderr: () => string;
}

function run(args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ text: line });
      }
    }
  });
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  return { child, lines, stderr: () => err };
}

const bound = (p: Proc, role: string) => {
  const line = p.lines.find((l) => l.msg === 'listening' && l.role === role);
  return line ? Number(String(line.address).split(':').pop()) : undefined;
};

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
