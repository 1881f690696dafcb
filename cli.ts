/** `tenant-gateway <command> [flags]`: parse, start, stop cleanly on SIGTERM/SIGINT. */
import { start } from './compose.js';
import { parseConfig, usage, UsageError } from './config.js';
import { jsonLogger as log } from './log.js';

async function main(): Promise<void> {
  let config;
  try {
    config = parseConfig(process.argv.slice(2));
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
  const running = await start(config, log);
  const stop = (signal: string) => {
    log('info', 'stopping', { signal });
    running.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

main().catch((err: Error) => {
  log('error', err.message, { error: err.name });
  process.exit(1);
});
