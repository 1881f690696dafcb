/**
 * Settings that change without a restart (SIGHUP or POST /v1/reload), and a logger whose
 * level is one of them. Everything else in a reloaded config is reported as needing a restart.
 */
import type { Config, LogLevel } from '../config.js';
import type { Level, Logger } from '../log.js';

const RANK: Record<Level, number> = { info: 0, warn: 1, error: 2 };

export interface LeveledLogger {
  log: Logger;
  setLevel(level: LogLevel): void;
}

export function leveledLogger(inner: Logger, level: LogLevel): LeveledLogger {
  let min = RANK[level];
  return {
    log: (lvl, msg, fields) => {
      if (RANK[lvl] >= min) inner(lvl, msg, fields);
    },
    setLevel: (l) => {
      min = RANK[l];
    },
  };
}

/** Config fields applied at runtime. */
export const RELOADABLE = ['accessLog', 'logLevel', 'drainTimeoutMs', 'metricsTenants', 'metricsAuth', 'trustedProxies'] as const satisfies readonly (keyof Config)[];

export interface ReloadResult {
  /** Reloadable settings that changed and were applied. */
  applied: string[];
  /** Settings that changed but only take effect at the next start. */
  restartRequired: string[];
}

/** The Config fields whose values differ (RegExp compared by source). */
export function changedSettings(a: Config, b: Config): (keyof Config)[] {
  const text = (v: unknown) => JSON.stringify(v, (_k, x: unknown) => (x instanceof RegExp ? x.source : x));
  return (Object.keys(a) as (keyof Config)[]).filter((k) => k !== 'command' && text(a[k]) !== text(b[k]));
}

/** What a reload changes. */
export interface RuntimeTargets {
  setAccessLog(target: string): Promise<void>;
  setLogLevel(level: LogLevel): void;
  setMetricsTenants(n: number): void;
  setTrustedProxies(ips: string[]): void;
}

/**
 * Applies `next`'s reloadable settings and returns the settings now in force: `current` with
 * those fields replaced. A file access log is reopened even when unchanged (logrotate).
 */
export async function applyReload(current: Config, next: Config, targets: RuntimeTargets): Promise<{ config: Config; result: ReloadResult }> {
  const changed = changedSettings(current, next);
  await targets.setAccessLog(next.accessLog);
  targets.setLogLevel(next.logLevel);
  targets.setMetricsTenants(next.metricsTenants);
  targets.setTrustedProxies(next.trustedProxies);
  const reloadable = new Set<string>(RELOADABLE);
  const config: Config = { ...current };
  for (const k of RELOADABLE) (config as unknown as Record<string, unknown>)[k] = next[k];
  return {
    config,
    result: {
      applied: changed.filter((k) => reloadable.has(k)),
      restartRequired: changed.filter((k) => !reloadable.has(k) && k !== 'configFile'),
    },
  };
}
