/**
 * Graceful drain of one HTTP listener: stop accepting, let in-flight requests finish, close
 * keep-alive connections as they go idle, and close whatever is left at the deadline.
 */
import type http from 'node:http';

export interface DrainResult {
  /** Connections still busy at the deadline, closed mid-request. */
  forced: number;
}

/** How often connections that went idle during the drain are closed. */
const IDLE_SWEEP_MS = 50;

/**
 * Guarantees: no new connection is accepted once this is called; a request already being
 * answered gets until `deadline` (ms since epoch) to finish; every response sent from now on
 * carries `Connection: close`, so clients do not reuse a connection that is about to close.
 */
export function drainServer(server: http.Server, deadline: number): Promise<DrainResult> {
  server.prependListener('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.shouldKeepAlive = false;
  });
  return new Promise((resolve) => {
    let done = false;
    const finish = (forced: number) => {
      if (done) return;
      done = true;
      clearInterval(sweep);
      clearTimeout(timer);
      resolve({ forced });
    };
    const sweep = setInterval(() => server.closeIdleConnections(), IDLE_SWEEP_MS);
    const timer = setTimeout(
      () => {
        server.getConnections((_err, count) => {
          server.closeAllConnections();
          finish(count ?? 0);
        });
      },
      Math.max(0, deadline - Date.now()),
    );
    server.close(() => finish(0));
    server.closeIdleConnections();
  });
}
