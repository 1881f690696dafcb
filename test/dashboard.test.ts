/**
 * The dashboard in a real browser: Debian's chromium, headless, driven by playwright-core.
 * Logs in with the token, sees a tenant registered through the API, explains its hostname,
 * and takes a screenshot (docs/dashboard.png, the README's, with TGW_UPDATE_SCREENSHOT=1).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { startNode } from './support/node.js';
import { startApp } from './support/util.js';

const CHROMIUM = '/usr/bin/chromium';
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

describe('dashboard in chromium', () => {
  it('log in, see a tenant registered through the API, explain its route', async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)`);
    const apps = [await startApp('shop'), await startApp('blog')];
    const node = await startNode();
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      // A small platform: two containers on host 01, a few tenants, some traffic and a 404.
      assert.equal((await node.admin('PUT', '/v1/hosts/01/containers/c001', { app: 'shop', port: apps[0]!.port })).status, 200);
      assert.equal((await node.admin('PUT', '/v1/hosts/01/containers/c002', { app: 'blog', port: apps[1]!.port })).status, 200);
      for (const [name, containers] of [['acme', ['c001']], ['globex', ['c001', 'c002']], ['initech', ['c002']], ['shop.example.com', ['c001']]] as const) {
        const r = await node.admin('PUT', `/v1/tenants/${name}`, { targets: containers.map((container) => ({ host: '01', container })) });
        assert.equal(r.status, 200, r.body);
      }
      const traffic = async () => {
        for (let i = 0; i < 12; i++) await node.get('acme.test.priv');
        for (let i = 0; i < 5; i++) await node.get('globex.test.priv');
        await node.get('initech.test.priv');
        await node.get('unknown.test.priv');
      };
      await traffic();

      const context = await browser.newContext({ viewport: { width: 1360, height: 1000 } });
      const page = await context.newPage();
      const base = `http://127.0.0.1:${node.adminPort}`;
      await page.goto(`${base}/dashboard`);
      await page.fill('#token', 'not the token');
      await page.click('#login');
      await page.locator('#login-error').waitFor();

      await page.fill('#token', node.token ?? '');
      await page.click('#login');
      await page.locator('h1', { hasText: 'tenant-gateway' }).waitFor();
      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === 'tgw_session');
      assert.ok(session?.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));

      // A tenant registered through the API appears, with its replicas.
      const row = page.locator('#tenants tbody tr', { hasText: 'globex' });
      await row.waitFor();
      assert.match(await row.innerText(), /01\/c001.*01\/c002/s);
      await page.locator('#hosts tbody tr', { hasText: 'c002 (blog:' }).waitFor();
      await page.locator('#registry-pill', { hasText: 'registry connected' }).waitFor();

      // Live rates: more traffic between two polls shows up in the top tenants table.
      await traffic();
      await page.locator('#top-tenants tbody tr', { hasText: 'acme.test.priv' }).waitFor();

      // Explain shows the route.
      await page.fill('#explain-host', 'acme.test.priv');
      await page.click('#explain-go');
      const out = page.locator('#explain-out');
      await out.locator('text=forwards to').waitFor();
      const text = await out.innerText();
      assert.match(text, /host 01's local proxy at 127\.0\.0\.1:\d+/);
      assert.match(text, /tenants\/acme/);

      // Steady traffic while the screenshot is taken, so the rates are live.
      let busy = true;
      const background = (async () => {
        for (let i = 0; busy && i < 2000; i++) await traffic();
      })();
      try {
        await page.waitForFunction(() => Number(document.getElementById('rate-total')?.textContent) > 0);
        await page.locator('#top-tenants tbody tr', { hasText: 'globex.test.priv' }).waitFor();
        // The README's screenshot is refreshed on request (TGW_UPDATE_SCREENSHOT=1); a plain test
        // run writes it to a temp dir, so `npm test` leaves the work tree as it found it.
        const dir = process.env.TGW_UPDATE_SCREENSHOT === '1' ? path.join(ROOT, 'docs') : fs.mkdtempSync(path.join(os.tmpdir(), 'tgw-shot-'));
        fs.mkdirSync(dir, { recursive: true });
        const shot = path.join(dir, 'dashboard.png');
        await page.screenshot({ path: shot, fullPage: true });
        assert.ok(fs.statSync(shot).size > 10_000, 'the screenshot has content');
      } finally {
        busy = false;
        await background;
      }

      // Logging out ends the session.
      await page.click('text=Log out');
      await page.locator('#token').waitFor();
    } finally {
      await browser.close();
      await node.close();
      for (const a of apps) await a.close();
    }
  });

});
