import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BadHostError, classifyHost, compileHostPattern, DEFAULT_HOST_PATTERN, normalizeHost, tenantNameProblem } from '../gateway/host.js';

const names = { domain: 'test.priv', hostPattern: compileHostPattern(DEFAULT_HOST_PATTERN, 'test.priv') };

describe('normalizeHost', () => {
  const ok: [string, string][] = [
    ['acme.test.priv', 'acme.test.priv'],
    ['ACME.Test.Priv', 'acme.test.priv'],
    ['acme.test.priv.', 'acme.test.priv'],
    ['acme.test.priv:8080', 'acme.test.priv'],
    ['acme.test.priv.:8080', 'acme.test.priv'],
    ['wordpress_c001_01.test.priv', 'wordpress_c001_01.test.priv'],
    ['shop.example.com', 'shop.example.com'],
    ['127.0.0.1', '127.0.0.1'],
    [`${'a'.repeat(63)}.test.priv`, `${'a'.repeat(63)}.test.priv`],
  ];
  for (const [input, want] of ok) it(`accepts ${JSON.stringify(input)}`, () => assert.equal(normalizeHost(input), want));

  const bad: [string | undefined, RegExp][] = [
    [undefined, /no Host/],
    ['', /no Host/],
    [':8080', /empty/],
    ['acme.test.priv:80a', /port/],
    ['acme..test.priv', /empty label/],
    ['.acme.test.priv', /empty label/],
    ['acme/evil.test.priv', /only letters/],
    ['acme?x.test.priv', /only letters/],
    ['user@acme.test.priv', /only letters/],
    ['acme test.priv', /only letters/],
    ['[::1]:8080', /only letters/],
    [`${'a'.repeat(64)}.test.priv`, /label longer/],
    [`${'a.'.repeat(127)}aa`, /longer than 253/],
    ['x'.repeat(10_000), /longer than 253/],
  ];
  for (const [input, re] of bad) {
    it(`rejects ${JSON.stringify(input?.slice(0, 30))}`, () => assert.throws(() => normalizeHost(input), (e) => e instanceof BadHostError && re.test(e.message)));
  }
});

describe('classifyHost', () => {
  const table: [string, ReturnType<typeof classifyHost>][] = [
    ['wordpress_c001_01.test.priv', { kind: 'structured', app: 'wordpress', container: 'c001', host: '01' }],
    ['acme.test.priv', { kind: 'tenant', name: 'acme' }],
    ['test.priv', { kind: 'apex' }],
    ['shop.example.com', { kind: 'tenant', name: 'shop.example.com' }],
    ['a.b.test.priv', { kind: 'tenant', name: 'a.b.test.priv' }],
    ['wordpress_c001.test.priv', { kind: 'tenant', name: 'wordpress_c001' }],
    ['wordpress_c001_01.other.priv', { kind: 'tenant', name: 'wordpress_c001_01.other.priv' }],
    ['wordpress_c001_01.test.priv.evil.com', { kind: 'tenant', name: 'wordpress_c001_01.test.priv.evil.com' }],
  ];
  for (const [host, want] of table) it(host, () => assert.deepEqual(classifyHost(host, names), want));

  it('uses a custom --host-pattern (hostname-safe separators)', () => {
    const custom = { domain: 'saas.example', hostPattern: compileHostPattern('^(?<app>[a-z0-9]+)--(?<container>[a-z0-9]+)--(?<host>[a-z0-9]+)\\.{domain}$', 'saas.example') };
    assert.deepEqual(classifyHost('wp--c1--02.saas.example', custom), { kind: 'structured', app: 'wp', container: 'c1', host: '02' });
    assert.deepEqual(classifyHost('wp--c1--02.saasxexample', custom), { kind: 'tenant', name: 'wp--c1--02.saasxexample' });
  });
});

describe('compileHostPattern', () => {
  it('rejects a pattern without the named groups', () => assert.throws(() => compileHostPattern('^(?<app>[a-z]+)$', 'x'), /\(\?<container>/));
  it('rejects an invalid regex', () => assert.throws(() => compileHostPattern('^(?<app>[a-z]+', 'x'), /not a valid regular expression/));
});

describe('tenantNameProblem', () => {
  const table: [string, RegExp | null][] = [
    ['acme', null],
    ['shop.example.com', null],
    ['a-b', null],
    ['Acme', /lowercase/],
    ['my_shop', /"_" is not allowed/],
    ['-acme', /DNS label/],
    ['test.priv', /apex/],
    ['acme.test.priv', /register "acme" instead/],
    ['wordpress_c001_01', /"_"/],
    [`${'a'.repeat(64)}`, /DNS label/],
  ];
  for (const [name, re] of table) {
    it(JSON.stringify(name), () => {
      const p = tenantNameProblem(name, names);
      if (re === null) assert.equal(p, null);
      else assert.match(p ?? '', re);
    });
  }
});
