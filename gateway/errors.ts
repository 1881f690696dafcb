/**
 * Errors the gateway and local proxies answer themselves, mapped to HTTP status in one place.
 * The body says what went wrong and carries the request id: HTML for browsers, JSON otherwise.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

export type ProxyErrorCode =
  | 'https_redirect' // 308
  | 'bad_host' // 400
  | 'unknown_tenant' // 404
  | 'unknown_host'
  | 'unknown_container'
  | 'upstream_refused' // 502
  | 'upstream_broken'
  | 'local_proxy_unreachable' // 503
  | 'registry_unavailable'
  | 'no_healthy_replica'
  | 'upstream_timeout'; // 504

const STATUS: Record<ProxyErrorCode, number> = {
  https_redirect: 308,
  bad_host: 400,
  unknown_tenant: 404,
  unknown_host: 404,
  unknown_container: 404,
  upstream_refused: 502,
  upstream_broken: 502,
  local_proxy_unreachable: 503,
  registry_unavailable: 503,
  no_healthy_replica: 503,
  upstream_timeout: 504,
};

export class ProxyError extends Error {
  override readonly name = 'ProxyError';
  readonly status: number;
  constructor(
    readonly code: ProxyErrorCode,
    message: string,
    /** Extra response headers (e.g. Location for a redirect). */
    readonly headers?: Record<string, string>,
  ) {
    super(message);
    this.status = STATUS[code];
  }
}

export type Component = 'gateway' | 'local-proxy';

interface ErrorBody {
  status: number;
  error: ProxyErrorCode;
  message: string;
  requestId: string;
  component: Component;
}

function body(err: ProxyError, requestId: string, component: Component): ErrorBody {
  return { status: err.status, error: err.code, message: err.message, requestId, component };
}

function wantsHtml(req: IncomingMessage): boolean {
  const accept = req.headers.accept;
  return accept !== undefined && accept.includes('text/html');
}

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

function render(req: IncomingMessage, b: ErrorBody): { type: string; text: string } {
  if (!wantsHtml(req)) return { type: 'application/json', text: `${JSON.stringify(b)}\n` };
  const text = `<!doctype html><html><head><meta charset="utf-8"><title>${b.status} ${escapeHtml(b.error)}</title></head>
<body><h1>${b.status}</h1><p>${escapeHtml(b.message)}</p><p><small>request id ${escapeHtml(b.requestId)} &middot; tenant-gateway ${b.component}</small></p></body></html>\n`;
  return { type: 'text/html; charset=utf-8', text };
}

export function sendError(req: IncomingMessage, res: ServerResponse, err: ProxyError, requestId: string, component: Component): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const { type, text } = render(req, body(err, requestId, component));
  const headers: Record<string, string | number> = {
    'content-type': type,
    'content-length': Buffer.byteLength(text),
    'x-request-id': requestId,
    'cache-control': 'no-store',
    // Lets a gateway tell "the next hop could not reach the app" from an app's own answer.
    'x-tgw-error': err.code,
  };
  if (err.status === 503) headers['retry-after'] = 1;
  if (err.headers !== undefined) Object.assign(headers, err.headers);
  res.writeHead(err.status, headers);
  res.end(req.method === 'HEAD' ? undefined : text);
}

/** For upgrade requests, where there is no ServerResponse: write the answer and close. */
export function sendErrorOnSocket(req: IncomingMessage, socket: Duplex, err: ProxyError, requestId: string, component: Component): void {
  const { type, text } = render(req, body(err, requestId, component));
  socket.end(
    `HTTP/1.1 ${err.status} ${err.code}\r\ncontent-type: ${type}\r\ncontent-length: ${Buffer.byteLength(text)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${text}`,
  );
}
