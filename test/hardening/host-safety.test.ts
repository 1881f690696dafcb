/**
 * Host safety: a huge Host costs one length check; the routing regexes cannot backtrack
 * catastrophically (recheck proves it; adversarial names confirm it); a Host naming an address,
 * the metadata service or the admin port reaches no backend.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { checkSync } from 'recheck';
import { ID_RE, parseAddress } from '../../discovery/records.js';
import { classifyHost, compileHostPattern, DEFAULT_HOST_PATTERN, normalizeHost, tenantNameProblem } from '../../gateway/host.js';
import { startCountingApp, type CountingApp } from './support/backends.js';
import { exchange } from './support/raw.js';
import { startStack, type Stack } from './support/stack.js';

describe('hardening: Host safety', () => {
  let stack: Stack;
  let app: CountingApp;

  before(async () => {
    stack = await startStack();
    app = await startCountingApp();
    await stack.route('acme', app.port);
  });
  after(async () => {
    await stack?.close();
    await app?.close();
  });

  it('a 10 KB Host is refused by the length check: well under a millisecond of CPU each', () => {
    const huge = `${'a'.repeat(10_240)}.test.priv`;
    const cpu = process.cpuUsage();
    for (let i = 0; i < 1_000; i++) assert.throws(() => normalizeHost(huge), /longer than 253/);
    const used = process.cpuUsage(cpu);
    const perCallUs = (used.user + used.system) / 1_000;
    assert.ok(perCallUs < 100, `${perCallUs} µs of CPU per call`);
  });

  it('recheck finds no catastrophic backtracking in the regexes that see client or API input', () => {
    const names = { domain: 'test.priv', hostPattern: compileHostPattern(DEFAULT_HOST_PATTERN, 'test.priv') };
    const patterns: [string, RegExp][] = [
      ['--host-pattern (default, compiled)', names.hostPattern],
      ['ID_RE (host, container, app ids)', ID_RE],
      ['tenant label', /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/],
      ['parseAddress', /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)|([a-zA-Z0-9](?:[a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?)):(\d{1,5})$/],
      ['DNS zone label', /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/],
      ['X-Request-Id', /^[A-Za-z0-9._:-]{1,128}$/],
    ];
    for (const [what, re] of patterns) {
      const r = checkSync(re.source, re.flags);
      const attack = r.status === 'vulnerable' ? r.attack.pattern : '';
      assert.equal(r.status, 'safe', `${what} (${re.source}): ${r.status} ${attack}`);
    }
  });

  // A guard against catastrophic backtracking (which takes seconds to forever on these names),
  // not a speed measurement: the bound has two orders of magnitude of slack for a loaded CI
  // machine, and a warm-up pass keeps regex compilation out of it. recheck above is the proof.
  it('adversarial names against the routing regex and name rules: none backtracks (each decided in under 100 ms)', () => {
    const names = { domain: 'test.priv', hostPattern: compileHostPattern(DEFAULT_HOST_PATTERN, 'test.priv') };
    const evil = [
      'a_'.repeat(120) + '!',
      'a'.repeat(63) + '_' + 'b'.repeat(63) + '_' + 'c'.repeat(63) + '.test.pri',
      ('a'.repeat(62) + '.').repeat(4).slice(0, 253),
      '_'.repeat(253),
      'a_b_c.'.repeat(42) + 'test.priv',
      'a-'.repeat(126),
      ('a1'.repeat(31) + '_').repeat(4),
    ];
    const decide = (name: string) => {
      classifyHost(name.toLowerCase(), names);
      tenantNameProblem(name, names);
      parseAddress(`${name}:80`);
    };
    for (const name of evil) decide(name);
    for (const name of evil) {
      const t0 = performance.now();
      decide(name);
      const ms = performance.now() - t0;
      assert.ok(ms < 100, `${name.slice(0, 30)}...: ${ms} ms`);
    }
  });

  it('Hosts naming addresses, the metadata service, the admin or local-proxy port, or other zones reach no backend', async () => {
    const hosts = [
      '127.0.0.1',
      `127.0.0.1:${stack.adminPort}`,
      `localhost:${stack.adminPort}`,
      `127.0.0.1:${stack.localPort}`,
      '169.254.169.254',
      'metadata.google.internal',
      '[::1]',
      `[::1]:${stack.adminPort}`,
      '0x7f000001',
      '2130706433',
      'example.com',
      'acme.test.priv.example.com',
      'test.priv',
      'app_c1_02.test.priv',
    ];
    for (const h of hosts) {
      for (const path of ['/', `/v1/hosts`, `http://${h}/v1/hosts`]) {
        const before = { app: app.requests, local: stack.counts.local, admin: stack.counts.admin };
        const r = await exchange(stack.gatewayPort, `GET ${path} HTTP/1.1\r\nHost: ${h}\r\nAuthorization: Bearer ${stack.token}\r\n\r\n`);
        assert.ok(r.status !== undefined && r.status >= 400 && r.status < 500, `${h} ${path}: ${r.text.slice(0, 200)}`);
        assert.deepEqual({ app: app.requests, local: stack.counts.local, admin: stack.counts.admin }, before, `${h} ${path} reached something`);
      }
    }
  });
});
