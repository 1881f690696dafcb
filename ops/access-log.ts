/**
 * Access logs: one JSON line per request (pino), to stdout or a file, or off.
 *
 * Never on the hot path synchronously: lines go to an asynchronous pino destination
 * (sonic-boom, `sync: false`) that batches writes while one is in flight. Its buffer is
 * bounded: past `maxBufferBytes` behind, lines are dropped and counted
 * (`tgw_access_log_dropped_total`) rather than growing memory or slowing traffic.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pino, type DestinationStream, type Logger as PinoLogger } from 'pino';
import type { RequestObserver } from '../gateway/proxy-server.js';
import type { AccessLogStats, ObservedRequest } from './metrics.js';

/** "off", "stdout", or a file path (absolute after parsing). */
export type AccessLogTarget = string;

export interface AccessLogOptions {
  warn?: (msg: string) => void;
  /** Most bytes waiting to be written before lines are dropped. */
  maxBufferBytes?: number;
}

type SonicBoom = DestinationStream & {
  end(): void;
  reopen(file?: string): void;
  flush(cb?: (err?: Error) => void): void;
  on(event: string, listener: (...args: unknown[]) => void): SonicBoom;
  once(event: string, listener: (...args: unknown[]) => void): SonicBoom;
};

interface Sink {
  target: AccessLogTarget;
  dest: SonicBoom;
  logger: PinoLogger;
}

export function parseAccessLogTarget(value: string): AccessLogTarget {
  if (value === 'off' || value === 'stdout') return value;
  if (value === '') throw new Error('--access-log must be off, stdout or a file path');
  return path.resolve(value);
}

export class AccessLog implements RequestObserver {
  readonly stats: AccessLogStats = { lines: 0, dropped: 0, errors: 0 };
  readonly #warn: (msg: string) => void;
  readonly #maxBuffer: number;
  #sink: Sink | undefined;
  #target: AccessLogTarget = 'off';

  constructor(target: AccessLogTarget, opts: AccessLogOptions = {}) {
    this.#warn = opts.warn ?? (() => {});
    this.#maxBuffer = opts.maxBufferBytes ?? 16 * 1024 * 1024;
    this.#open(target);
  }

  get target(): AccessLogTarget {
    return this.#target;
  }

  requestDone(rec: ObservedRequest): void {
    const sink = this.#sink;
    if (sink === undefined) return;
    this.stats.lines++;
    sink.logger.info({
      component: rec.component,
      requestId: rec.requestId,
      host: rec.host,
      method: rec.method,
      path: rec.path,
      status: rec.status,
      bytes: rec.bytes,
      durationMs: Math.round(rec.durationMs * 1000) / 1000,
      upstream: rec.upstream,
      retries: rec.retries ?? 0,
      error: rec.error,
      completed: rec.completed,
      remote: rec.remoteAddress,
    });
  }

  /**
   * Switches target without losing lines: the new destination takes lines from now on, the old
   * one is flushed and closed. The same file again is reopened (for logrotate).
   */
  async setTarget(target: AccessLogTarget): Promise<void> {
    if (target === this.#target) {
      if (this.#sink !== undefined && target !== 'stdout') this.#sink.dest.reopen();
      return;
    }
    const old = this.#sink;
    this.#open(target);
    if (old !== undefined) await endSink(old);
  }

  /** Flushes what is buffered and closes the file. */
  async close(): Promise<void> {
    const old = this.#sink;
    this.#sink = undefined;
    this.#target = 'off';
    if (old !== undefined) await endSink(old);
  }

  /** Throws (leaving the current sink in place) when a file target cannot be opened for appending. */
  #open(target: AccessLogTarget): void {
    if (target === 'off') {
      this.#target = target;
      this.#sink = undefined;
      return;
    }
    if (target !== 'stdout') {
      try {
        fs.mkdirSync(path.dirname(target), { recursive: true });
        fs.closeSync(fs.openSync(target, 'a'));
      } catch (err) {
        throw new Error(`access log ${target} cannot be opened for appending: ${(err as Error).message}`);
      }
    }
    const dest = pino.destination({
      dest: target === 'stdout' ? 1 : target,
      sync: false,
      mkdir: true,
      append: true,
      maxLength: this.#maxBuffer,
    }) as unknown as SonicBoom;
    let warned = false;
    dest.on('drop', () => this.stats.dropped++);
    dest.on('error', (err) => {
      this.stats.errors++;
      if (!warned) this.#warn(`access log ${target}: ${(err as Error).message}; lines may be lost until it is writable again`);
      warned = true;
    });
    const logger = pino(
      {
        base: null,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      dest,
    );
    this.#sink = { target, dest, logger };
    this.#target = target;
  }
}

function endSink(sink: Sink): Promise<void> {
  return new Promise((resolve) => {
    sink.dest.once('close', () => resolve());
    sink.dest.once('error', () => resolve());
    try {
      sink.dest.end();
    } catch {
      resolve();
    }
  });
}
