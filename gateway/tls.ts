/**
 * TLS offload: the HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN), the default certificate for
 * the zone, and per-name certificates of custom domains from the registry, picked by SNI.
 *
 * Registered certificates change at runtime: a change event drops the cached record, and the
 * next handshake for that name builds a new context. Connections already open keep theirs.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import http2 from 'node:http2';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls, { type SecureContext } from 'node:tls';
import type { Registry } from '../discovery/registry.js';
import type { CertificateRecord } from '../discovery/records.js';

/** TLS 1.2+, forward-secret AEAD suites only (Mozilla "intermediate"); TLS 1.3 suites are Node's defaults. */
const CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export interface CertificateSummary {
  name: string;
  subjectAltNames: string[];
  notBefore: string;
  notAfter: string;
  fingerprint256: string;
  issuer: string;
}

/**
 * Checks a certificate and key before they are stored: both parse, they belong together, the
 * certificate is valid now and covers `name`. Returns the problem, or the certificate's summary.
 */
export function checkCertificate(name: string, rec: CertificateRecord, now = Date.now()): { problem: string; field: string } | CertificateSummary {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(rec.cert);
  } catch {
    return { field: 'cert', problem: 'cert is not a PEM certificate ("-----BEGIN CERTIFICATE-----"...)' };
  }
  let key;
  try {
    key = createPrivateKey(rec.key);
  } catch {
    return { field: 'key', problem: 'key is not an unencrypted PEM private key ("-----BEGIN PRIVATE KEY-----"...)' };
  }
  if (!leaf.checkPrivateKey(key)) return { field: 'key', problem: 'key does not belong to the certificate (the first certificate of the chain)' };
  if (Date.parse(leaf.validTo) <= now) return { field: 'cert', problem: `the certificate expired on ${new Date(leaf.validTo).toISOString()}` };
  if (Date.parse(leaf.validFrom) > now) return { field: 'cert', problem: `the certificate is not valid before ${new Date(leaf.validFrom).toISOString()}` };
  if (leaf.checkHost(name) === undefined) {
    return { field: 'cert', problem: `the certificate does not cover ${name} (it names ${leaf.subjectAltName ?? leaf.subject})` };
  }
  try {
    tls.createSecureContext({ cert: rec.cert, key: rec.key });
  } catch (err) {
    return { field: 'cert', problem: `the certificate and key cannot be used: ${(err as Error).message}` };
  }
  return summarize(name, leaf);
}

export function summarize(name: string, leaf: X509Certificate): CertificateSummary {
  return {
    name,
    subjectAltNames: (leaf.subjectAltName ?? '').split(', ').filter((s) => s !== ''),
    notBefore: new Date(leaf.validFrom).toISOString(),
    notAfter: new Date(leaf.validTo).toISOString(),
    fingerprint256: leaf.fingerprint256,
    issuer: leaf.issuer.replaceAll('\n', ', '),
  };
}

export interface HttpsOptions {
  registry: Registry;
  /** The zone: names under it always get the default certificate. */
  domain: string;
  defaultCert: { cert: string | Buffer; key: string | Buffer };
  onRequest: (req: IncomingMessage, res: ServerResponse) => void;
  onUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
  /** A handshake must complete within this. */
  handshakeTimeoutMs?: number;
  /** Most TLS handshakes in progress at once; more connections are closed at once. */
  maxHandshakes?: number;
  warn?: (msg: string) => void;
}

/** The HTTPS listener. Not listening yet: call `listen`. */
export type HttpsServer = http2.Http2SecureServer & {
  setDefaultCertificate(c: { cert: string | Buffer; key: string | Buffer }): void;
  /** Stops accepting, lets HTTP/2 streams finish (GOAWAY), closes what is left at `deadline`; resolves with that count. */
  drain(deadline: number): Promise<number>;
};

export function createHttpsServer(opts: HttpsOptions): HttpsServer {
  const { registry, domain } = opts;
  const warn = opts.warn ?? (() => {});
  const suffix = `.${domain}`;
  /** One context per record object: a replaced record builds a new one. */
  const contexts = new WeakMap<object, SecureContext | null>();
  let defaultContext = tls.createSecureContext({ ...opts.defaultCert, minVersion: 'TLSv1.2', ciphers: CIPHERS });

  const contextOf = (name: string, rec: CertificateRecord): SecureContext | null => {
    let ctx = contexts.get(rec);
    if (ctx === undefined) {
      try {
        ctx = tls.createSecureContext({ cert: rec.cert, key: rec.key, minVersion: 'TLSv1.2', ciphers: CIPHERS });
      } catch (err) {
        warn(`certificate for ${name} is unusable, serving the default one: ${(err as Error).message}`);
        ctx = null;
      }
      contexts.set(rec, ctx);
    }
    return ctx;
  };

  const SNICallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void => {
    const name = servername.toLowerCase();
    // Names in the zone use the default (wildcard) certificate; so does anything odd.
    if (name === domain || name.endsWith(suffix) || name.length > 253 || !/^[a-z0-9._-]+$/.test(name)) return cb(null, defaultContext);
    const found = registry.lookup('certificates', name);
    const answer = (l: { value: CertificateRecord | null }) => cb(null, (l.value && contextOf(name, l.value)) ?? defaultContext);
    if (found instanceof Promise) found.then(answer, () => cb(null, defaultContext));
    else answer(found);
  };

  const server = http2.createSecureServer({
    allowHTTP1: true,
    SNICallback,
    ...opts.defaultCert,
    minVersion: 'TLSv1.2',
    ciphers: CIPHERS,
    honorCipherOrder: true,
    handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
    // Streams per HTTP/2 connection, and the same 16 KB header limit as the HTTP listener.
    settings: { maxConcurrentStreams: 128, maxHeaderListSize: 16 * 1024 },
  });

  // Bound handshakes in flight: a flood of half-open TLS connections costs CPU. Each TCP
  // connection ends its handshake with either secureConnection or tlsClientError.
  const maxHandshakes = opts.maxHandshakes ?? 1024;
  let handshaking = 0;
  server.on('connection', (socket: Socket) => {
    if (handshaking >= maxHandshakes) return socket.destroy();
    handshaking++;
  });
  const sockets = new Set<tls.TLSSocket>();
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    handshaking = Math.max(0, handshaking - 1);
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
  });
  server.on('tlsClientError', () => (handshaking = Math.max(0, handshaking - 1)));
  server.on('request', opts.onRequest as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  server.on('upgrade', opts.onUpgrade);
  return Object.assign(server, {
    drain(deadline: number): Promise<number> {
      return new Promise<number>((resolve) => {
        const timer = setTimeout(() => {
          const left = sockets.size;
          for (const s of sockets) s.destroy();
          resolve(left);
        }, Math.max(0, deadline - Date.now()));
        server.close(() => {
          clearTimeout(timer);
          resolve(0);
        });
        for (const session of sessions) session.close();
      });
    },
    setDefaultCertificate(c: { cert: string | Buffer; key: string | Buffer }) {
      defaultContext = tls.createSecureContext({ ...c, minVersion: 'TLSv1.2', ciphers: CIPHERS });
      server.setSecureContext({ ...c, minVersion: 'TLSv1.2', ciphers: CIPHERS });
    },
  });
}
