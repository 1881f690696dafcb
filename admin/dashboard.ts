/**
 * The operator dashboard on the admin listener: one HTML page (inline CSS and JS, no build
 * step) that polls small JSON endpoints. Behind the admin token: a login form (or `?token=`
 * once) sets an HttpOnly, SameSite=Strict session cookie; the page never sees the token.
 *
 * Read-only. Its data endpoints re-enter the admin API's own GET routes (`/v1/hosts`,
 * `/v1/tenants`, `/v1/explain`) in process with the token, so the dashboard shows exactly
 * what the API answers.
 */
import { randomBytes } from 'node:crypto';
import type { Context, Hono } from 'hono';
import type { Registry } from '../discovery/registry.js';
import { SESSION_COOKIE, type TokenCheck } from '../ops/auth.js';
import type { Metrics } from '../ops/metrics.js';

export interface DashboardOptions {
  check: TokenCheck;
  token: string;
  metrics: Metrics;
  registry: Registry;
}

/** Hosts shown with their containers; beyond this the page says how many more there are. */
const MAX_HOSTS = 500;
const TENANT_PAGE = 50;

export function mountDashboard(app: Hono, opts: DashboardOptions): void {
  const { check } = opts;
  const authed = (c: Context) => check.cookie(c.req.header('cookie'));
  const cookie = (value: string, maxAge: number) =>
    `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}`;
  /** The admin API's own answer to a GET, with the token. */
  const api = async (path: string): Promise<unknown> => {
    const res = await app.request(path, { headers: { authorization: `Bearer ${opts.token}` } });
    const body: unknown = await res.json();
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  };
  const apiJson = async (c: Context, path: string) => {
    try {
      return c.json(await api(path));
    } catch (err) {
      if (err instanceof ApiError) return c.json(err.body as object, err.status as 400);
      throw err;
    }
  };

  app.get('/', (c) => c.redirect('/dashboard', 303));
  app.get('/favicon.ico', (c) => c.body(null, 204));

  app.get('/dashboard', (c) => {
    const given = c.req.query('token');
    if (given !== undefined) {
      // The token in the URL once: trade it for the cookie and drop it from the address bar.
      if (!check.matches(given)) return page(c, loginPage('That token is not the admin token.'), 401);
      c.header('set-cookie', cookie(check.session, 12 * 3600));
      return c.redirect('/dashboard', 303);
    }
    if (!authed(c)) return page(c, loginPage(undefined));
    return page(c, dashboardPage);
  });

  app.post('/dashboard/login', async (c) => {
    if (!sameOrigin(c)) return c.text('cross-origin login refused', 403);
    const form = await c.req.parseBody();
    const given = typeof form.token === 'string' ? form.token.trim() : '';
    if (!check.matches(given)) return page(c, loginPage('That token is not the admin token.'), 401);
    c.header('set-cookie', cookie(check.session, 12 * 3600));
    return c.redirect('/dashboard', 303);
  });

  app.post('/dashboard/logout', (c) => {
    if (!sameOrigin(c)) return c.text('cross-origin logout refused', 403);
    c.header('set-cookie', cookie('', 0));
    return c.redirect('/dashboard', 303);
  });

  app.use('/dashboard/api/*', async (c, next) => {
    if (!authed(c)) return c.json({ error: 'unauthorized', message: 'log in at /dashboard' }, 401);
    c.header('cache-control', 'no-store');
    await next();
  });

  app.get('/dashboard/api/stats', (c) => {
    const { registry } = opts;
    const st = registry.backend.status();
    return c.json({
      ...opts.metrics.snapshot(),
      registry: {
        ...st,
        staleMs: st.connected || st.syncedAt === null ? null : Date.now() - st.syncedAt,
        cacheEntries: registry.cacheSize(),
        ...registry.stats,
        gateways: registry.gateways().length,
      },
    });
  });

  app.get('/dashboard/api/hosts', async (c) => {
    const { hosts } = (await api('/v1/hosts')) as { hosts: { id: string; address: string }[] };
    const shown = [];
    for (const h of hosts.slice(0, MAX_HOSTS)) {
      const detail = (await api(`/v1/hosts/${encodeURIComponent(h.id)}`).catch(() => ({ containers: [] }))) as { containers: unknown[] };
      shown.push({ ...h, containers: detail.containers });
    }
    return c.json({ hosts: shown, total: hosts.length });
  });

  app.get('/dashboard/api/tenants', async (c) => {
    const after = c.req.query('after');
    const q = new URLSearchParams({ limit: String(TENANT_PAGE) });
    if (after) q.set('after', after);
    let page: { tenants: string[]; next: string | null };
    try {
      page = (await api(`/v1/tenants?${q}`)) as typeof page;
    } catch (err) {
      if (err instanceof ApiError) return c.json(err.body as object, err.status as 400);
      throw err;
    }
    const tenants = [];
    for (const name of page.tenants) {
      const rec = (await api(`/v1/tenants/${encodeURIComponent(name)}`).catch(() => ({ targets: [] }))) as { targets: unknown[] };
      tenants.push({ name, targets: rec.targets });
    }
    return c.json({ tenants, next: page.next });
  });

  app.get('/dashboard/api/explain', (c) => apiJson(c, `/v1/explain?${new URLSearchParams({ host: c.req.query('host') ?? '' })}`));
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {
    super(`admin API answered ${status}`);
  }
}

/**
 * A POST from a page of another origin is refused (SameSite=Strict covers the cookie; this
 * covers login/logout). Browsers say where a request comes from in Sec-Fetch-Site, older ones
 * in Origin; clients that send neither (curl) are not browsers a page could drive.
 */
function sameOrigin(c: Context): boolean {
  const site = c.req.header('sec-fetch-site');
  if (site !== undefined) return site === 'same-origin' || site === 'none';
  const origin = c.req.header('origin');
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === c.req.header('host');
  } catch {
    return false;
  }
}

function page(c: Context, html: (nonce: string) => string, status: 200 | 401 = 200) {
  const nonce = randomBytes(16).toString('base64');
  return c.html(html(nonce), status, {
    'content-security-policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'same-origin',
    'cache-control': 'no-store',
  });
}

const STYLE = `
:root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#e3e6ec; --ok:#137a3f; --bad:#b3261e; --warn:#9a6700; --accent:#2f5bd3; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; align-items:center; gap:16px; padding:12px 24px; background:#1d2330; color:#fff; }
header h1 { font-size:17px; margin:0; font-weight:600; }
header .spacer { flex:1; }
header form { margin:0; }
main { display:grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap:16px; padding:16px 24px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; min-width:0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size:14px; margin:0 0 10px; text-transform:uppercase; letter-spacing:.04em; color:var(--mute); }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; color:var(--mute); font-size:12px; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12.5px; }
.pill { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.ok { color:var(--ok); } .bad { color:var(--bad); } .warn { color:var(--warn); }
.pill.ok { background:#e3f4ea; } .pill.bad { background:#fbe4e2; } .pill.warn { background:#fff3d6; } .pill.mute { background:#eef0f4; color:var(--mute); }
.kpis { display:flex; gap:24px; margin-bottom:10px; }
.kpi b { display:block; font-size:22px; font-variant-numeric: tabular-nums; }
.kpi span { color:var(--mute); font-size:12px; }
button, input[type=text], input[type=password] { font:inherit; padding:6px 10px; border:1px solid var(--line); border-radius:6px; }
button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; }
button.plain { background:#fff; color:var(--ink); border-color:var(--line); }
header button { background:transparent; border-color:#59617a; color:#fff; }
.row { display:flex; gap:8px; align-items:center; }
.mute { color:var(--mute); }
.explain { margin-top:10px; }
.explain dl { display:grid; grid-template-columns: 140px 1fr; gap:4px 12px; margin:0 0 8px; }
.explain dt { color:var(--mute); }
.explain dd { margin:0; }
.login { max-width:380px; margin:12vh auto; }
.login p.err { color:var(--bad); }
`;

function loginPage(error: string | undefined) {
  return (nonce: string) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>tenant-gateway: log in</title><style nonce="${nonce}">${STYLE}</style></head>
<body><section class="login">
<h2>tenant-gateway dashboard</h2>
<p>Enter the admin token (<code>data/admin-token</code> or <code>TGW_ADMIN_TOKEN</code>).</p>
${error ? `<p class="err" id="login-error">${error}</p>` : ''}
<form method="post" action="/dashboard/login" class="row">
<input type="password" name="token" id="token" placeholder="admin token" autocomplete="current-password" required autofocus>
<button type="submit" id="login">Log in</button>
</form></section></body></html>`;
}

function dashboardPage(nonce: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>tenant-gateway dashboard</title><style nonce="${nonce}">${STYLE}</style></head>
<body>
<header><h1>tenant-gateway</h1><span id="registry-pill" class="pill mute">registry …</span>
<span class="spacer"></span><span id="updated" class="mute"></span>
<form method="post" action="/dashboard/logout"><button type="submit">Log out</button></form></header>
<main>
<section class="wide"><h2>Traffic</h2>
<div class="kpis">
<div class="kpi"><b id="rate-total">–</b><span>requests/s</span></div>
<div class="kpi"><b id="rate-4xx">–</b><span>4xx/s</span></div>
<div class="kpi"><b id="rate-5xx">–</b><span>5xx/s</span></div>
<div class="kpi"><b id="count-total">–</b><span>requests since start</span></div>
</div>
<table id="top-tenants"><thead><tr><th>tenant (busiest first)</th><th class="num">req/s</th><th class="num">4xx/s</th><th class="num">5xx/s</th><th class="num">error rate</th><th class="num">requests</th></tr></thead><tbody></tbody></table>
<p class="mute" id="top-note"></p></section>

<section><h2>Explain a hostname</h2>
<form id="explain-form" class="row"><input type="text" id="explain-host" placeholder="acme.test.priv" size="32"><button type="submit" id="explain-go">Explain</button></form>
<div id="explain-out" class="explain"></div></section>

<section><h2>Registry</h2><table id="registry"><tbody></tbody></table></section>

<section><h2>Hosts and their local proxies</h2><table id="hosts"><thead><tr><th>host</th><th>local proxy</th><th>health</th><th>containers</th></tr></thead><tbody></tbody></table><p class="mute" id="hosts-note"></p></section>

<section><h2>Tenants</h2>
<div class="row"><input type="text" id="tenant-from" placeholder="jump to name" size="18"><button class="plain" id="tenant-jump">Go</button>
<span class="spacer"></span><button class="plain" id="tenant-prev">‹ Prev</button><button class="plain" id="tenant-next">Next ›</button></div>
<table id="tenants"><thead><tr><th>tenant</th><th>replicas (host/container)</th></tr></thead><tbody></tbody></table><p class="mute" id="tenants-note"></p></section>
</main>
<script nonce="${nonce}">
${CLIENT_JS}
</script></body></html>`;
}

/** Browser side: builds every cell with textContent (never HTML from data). */
const CLIENT_JS = String.raw`
'use strict';
const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); if (cls) e.className = cls; return e; };
const row = (cells) => { const tr = el('tr'); for (const c of cells) { if (c instanceof Node) { const td = el('td'); td.append(c); tr.append(td); } else tr.append(el('td', c)); } return tr; };
const num = (v) => { const td = el('td', v, 'num'); return td; };
const rowN = (cells) => { const tr = el('tr'); for (const c of cells) tr.append(c instanceof HTMLTableCellElement ? c : (c instanceof Node ? (() => { const td = el('td'); td.append(c); return td; })() : el('td', c))); return tr; };
const fmt = (r) => r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
const age = (ms) => ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms / 1000).toFixed(1) + ' s' : Math.round(ms / 60000) + ' min';
async function get(path) {
  const res = await fetch(path, { credentials: 'same-origin' });
  if (res.status === 401) { location.href = '/dashboard'; throw new Error('logged out'); }
  const body = await res.json();
  if (!res.ok) throw Object.assign(new Error(body.message || res.statusText), { body });
  return body;
}
const sum = (a, from, to) => { let s = 0; for (let i = from; i <= to; i++) s += a[i] || 0; return s; };
// Classes: 0 aborted, 1 1xx, 2 2xx, 3 3xx, 4 4xx, 5 5xx.
const counts = (c) => ({ all: sum(c, 0, 5), c4: c[4] || 0, c5: c[5] || 0 });

let prev;
let health = { replicas: new Map(), localProxies: {} };
async function refreshStats() {
  const s = await get('/dashboard/api/stats');
  // Count each request once: at the gateway when it serves traffic, else at the local proxy.
  const comp = sum(s.totals.gateway, 0, 5) > 0 ? 'gateway' : 'localProxy';
  const tot = counts(s.totals[comp]);
  const tenants = new Map(s.tenants.map((t) => [t.tenant, counts(t[comp])]));
  $('count-total').textContent = tot.all;
  const dt = prev ? (s.now - prev.now) / 1000 : 0;
  const rate = (a, b) => (dt > 0 && b !== undefined ? Math.max(0, a - b) / dt : 0);
  $('rate-total').textContent = fmt(rate(tot.all, prev && prev.tot.all));
  $('rate-4xx').textContent = fmt(rate(tot.c4, prev && prev.tot.c4));
  $('rate-5xx').textContent = fmt(rate(tot.c5, prev && prev.tot.c5));
  const rows = [];
  for (const [name, c] of tenants) {
    const p = prev && prev.tenants.get(name);
    const r = rate(c.all, p ? p.all : (prev ? 0 : undefined));
    const r4 = rate(c.c4, p ? p.c4 : (prev ? 0 : undefined));
    const r5 = rate(c.c5, p ? p.c5 : (prev ? 0 : undefined));
    rows.push({ name, c, r, r4, r5 });
  }
  rows.sort((a, b) => b.r - a.r || b.c.all - a.c.all);
  const tb = $('top-tenants').tBodies[0];
  tb.replaceChildren(...rows.slice(0, 15).map((x) => {
    const errRate = x.r > 0 ? (x.r5 / x.r) * 100 : 0;
    return rowN([el('span', x.name, 'mono'), num(fmt(x.r)), num(fmt(x.r4)), num(fmt(x.r5)), el('td', errRate.toFixed(1) + ' %', 'num' + (errRate >= 5 ? ' bad' : '')), num(x.c.all)]);
  }));
  const other = counts(s.other[comp]);
  $('top-note').textContent = (tenants.size === 0 ? 'No routed requests yet. ' : '') + 'Per-tenant counts cover the busiest ' + tenants.size + ' tenants (--metrics-tenants); ' + other.all + ' requests of other tenants. Counted at the ' + (comp === 'gateway' ? 'gateway' : 'local proxy') + '.';
  prev = { now: s.now, tot, tenants };

  const reg = s.registry;
  const pill = $('registry-pill');
  pill.textContent = reg.connected ? 'registry connected' : 'registry disconnected' + (reg.staleMs !== null ? ', routes ' + age(reg.staleMs) + ' old' : '');
  pill.className = 'pill ' + (reg.connected ? 'ok' : 'bad');
  const lookups = reg.hits + reg.misses;
  $('registry').tBodies[0].replaceChildren(
    row(['backend', el('code', reg.backend + ' ' + reg.detail)]),
    row(['connected', el('span', reg.connected ? 'yes' : 'no', reg.connected ? 'ok' : 'bad')]),
    row(['last in sync', reg.syncedAt === null ? 'never' : age(Math.max(0, s.now - reg.syncedAt)) + ' ago']),
    row(['cache', reg.cacheEntries + ' entries, ' + (lookups ? ((reg.hits / lookups) * 100).toFixed(1) : '0') + ' % hits of ' + lookups + ' lookups']),
    row(['change events', reg.changes]),
    row(['gateways registered', reg.gateways]),
  );
  health = { replicas: new Map(s.replicas.map((r) => [r.tenant + '/' + r.replica, r.up])), localProxies: s.localProxies };
  $('updated').textContent = 'updated ' + new Date(s.now).toLocaleTimeString();
}

const healthPill = (up) => up === undefined ? el('span', 'not checked', 'pill mute') : el('span', up ? 'up' : 'down', 'pill ' + (up ? 'ok' : 'bad'));
async function refreshHosts() {
  const h = await get('/dashboard/api/hosts');
  $('hosts').tBodies[0].replaceChildren(...h.hosts.map((x) =>
    row([el('code', x.id), el('code', x.address || '(no local proxy)'), healthPill(health.localProxies[x.id]),
      x.containers.map((c) => c.id + ' (' + c.app + ':' + c.port + ')').join(', ') || '–'])));
  $('hosts-note').textContent = h.total === 0 ? 'No hosts registered.' : h.total > h.hosts.length ? 'Showing ' + h.hosts.length + ' of ' + h.total + ' hosts.' : '';
}

const pages = [undefined];
let pageIndex = 0;
let nextAfter = null;
async function refreshTenants() {
  const after = pages[pageIndex];
  const t = await get('/dashboard/api/tenants' + (after ? '?after=' + encodeURIComponent(after) : ''));
  nextAfter = t.next;
  $('tenants').tBodies[0].replaceChildren(...t.tenants.map((x) => {
    const reps = el('span');
    x.targets.forEach((g, i) => {
      if (i) reps.append(', ');
      const up = health.replicas.get(x.name + '/' + g.host + '/' + g.container);
      reps.append(el('code', g.host + '/' + g.container, up === false ? 'bad' : ''));
    });
    return row([el('code', x.name), reps]);
  }));
  $('tenant-prev').disabled = pageIndex === 0;
  $('tenant-next').disabled = !nextAfter;
  $('tenants-note').textContent = t.tenants.length === 0 ? 'No tenants on this page.' : 'Page ' + (pageIndex + 1) + ', ' + t.tenants.length + ' tenants' + (nextAfter ? ', more follow.' : '.');
}
$('tenant-next').onclick = () => { if (nextAfter) { pages[++pageIndex] = nextAfter; pages.length = pageIndex + 1; void refreshTenants().catch(show); } };
$('tenant-prev').onclick = () => { if (pageIndex > 0) { pageIndex--; void refreshTenants().catch(show); } };
$('tenant-jump').onclick = () => { const v = $('tenant-from').value.trim(); pages.length = 1; pageIndex = 0; if (v) { pages[1] = v.slice(0, -1) + String.fromCharCode(v.charCodeAt(v.length - 1) - 1) + '\uffff'; pageIndex = 1; } void refreshTenants().catch(show); };

$('explain-form').onsubmit = async (ev) => {
  ev.preventDefault();
  const host = $('explain-host').value.trim();
  const out = $('explain-out');
  if (!host) return;
  out.replaceChildren(el('p', 'explaining…', 'mute'));
  try {
    const x = await get('/dashboard/api/explain?host=' + encodeURIComponent(host));
    const dl = el('dl');
    const add = (k, v) => { dl.append(el('dt', k)); const dd = el('dd'); dd.append(v instanceof Node ? v : document.createTextNode(String(v))); dl.append(dd); };
    add('routes', el('span', x.routes ? 'yes' : 'no (' + x.status + ')', 'pill ' + (x.routes ? 'ok' : 'bad')));
    if (x.forwardTo) add('forwards to', el('code', x.forwardTo));
    if (x.reason) add('reason', x.reason);
    add('normalized', x.normalized ?? '–');
    add('kind', (x.kind ?? '–') + (x.parts ? ' ' + JSON.stringify(x.parts) : ''));
    const t = el('table');
    t.append(rowN([el('th', 'record'), el('th', 'value'), el('th', 'cache age')]));
    for (const r of x.records) t.append(row([el('code', r.path), el('code', r.record === null ? 'not registered' : JSON.stringify(r.record)), r.cacheAgeMs === null ? 'read now' : age(r.cacheAgeMs)]));
    out.replaceChildren(dl, t);
  } catch (err) { out.replaceChildren(el('p', err.message, 'bad')); }
};

function show(err) { $('updated').textContent = 'update failed: ' + err.message; }
async function tick() { await refreshStats().catch(show); }
async function slowTick() { await refreshHosts().catch(show); await refreshTenants().catch(show); }
void tick().then(slowTick);
setInterval(tick, 2000);
setInterval(slowTick, 5000);
`;
