/**
 * `tenant-gateway <command> [flags]`: parse, start; SIGTERM/SIGINT drain and exit 0 (a second
 * one exits at once), SIGHUP reloads the runtime-changeable settings.
 */
import { start } from './compose.js';
import { parseConfig, usage, UsageError, type Config } from './config.js';
import { jsonLogger as log } from './log.js';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let config;
  try {
    config = parseConfig(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`tenant-gateway: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (config === 'help') {
    process.stdout.write(`${usage()}\n`);
    return;
  }
  const reloadConfig = (): Config => {
    const next = parseConfig(argv);
    if (next === 'help') throw new UsageError('no command');
    return next;
  };
  const running = await start(config, log, { reloadConfig });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log('warn', 'stopping now, without waiting for in-flight requests', { signal });
      process.exit(1);
    }
    stopping = true;
    log('info', 'draining', { signal });
    running.close().then(
      () => {
        log('info', 'stopped', { signal });
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    running.reload().catch((err: Error) => log('error', `reload failed, nothing was changed: ${err.message}`));
  });
}

main().catch((err: Error) => {
  log('error', err.message, { error: err.name });
  process.exit(1);
});
