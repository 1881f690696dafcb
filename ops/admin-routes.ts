/**
 * Operator endpoints on the admin listener: `GET /metrics` (Prometheus text), `POST /v1/reload`
 * (the /v1 token middleware of admin/api.ts guards it), and the dashboard.
 */
import type { Hono } from 'hono';
import { mountDashboard } from '../admin/dashboard.js';
import type { Registry } from '../discovery/registry.js';
import { TokenCheck } from './auth.js';
import type { Metrics } from './metrics.js';
import type { ReloadResult } from './runtime.js';

export interface OpsRoutesOptions {
  metrics: Metrics;
  registry: Registry;
  token: string;
  /** Read per scrape, so a reload can change it. */
  metricsAuth: () => 'token' | 'none';
  /** Re-reads the config (file, env, flags) and applies what can change at runtime. */
  reload: () => Promise<ReloadResult>;
}

export function mountOps(app: Hono, opts: OpsRoutesOptions): void {
  const check = new TokenCheck(opts.token);

  app.get('/metrics', async (c) => {
    const h = c.req.header();
    if (opts.metricsAuth() === 'token' && !check.bearer(h.authorization) && !check.cookie(h.cookie)) {
      c.header('www-authenticate', 'Bearer realm="tenant-gateway metrics"');
      return c.text('send the admin token as "Authorization: Bearer <token>" (Prometheus: authorization.credentials_file), or start with --metrics-auth none\n', 401);
    }
    const { contentType, body } = await opts.metrics.render();
    return c.body(body, 200, { 'content-type': contentType, 'cache-control': 'no-store' });
  });

  // A config that does not parse changes nothing: the running settings stay.
  app.post('/v1/reload', async (c) => {
    try {
      return c.json(await opts.reload());
    } catch (err) {
      return c.json({ error: 'invalid_config', message: `${(err as Error).message}; nothing was changed` }, 400);
    }
  });

  mountDashboard(app, { check, token: opts.token, metrics: opts.metrics, registry: opts.registry });
}
