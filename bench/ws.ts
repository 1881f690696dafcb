/**
 * Memory of N concurrent WebSocket connections held open through a stack.
 *
 * Node 20 has no WebSocket client without a flag, so this is a raw RFC 6455 upgrade over
 * node:net: a connection counts once its 101 and the app's first frame ("hi") came back
 * through the chain. RSS is read from /proc for the proxy processes before and while they
 * are all open.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { pool } from './client.js';
import { rssBytes, sleep } from './proc.js';
import { TENANT_HOST, type Stack, type StackId } from './stacks.js';

export interface WsResult {
  stack: StackId;
  wanted: number;
  opened: number;
  failed: number;
  /** Sum over the proxy processes, MiB. */
  rssIdleMiB: number;
  rssOpenMiB: number;
  /** Each process, MiB, while the connections are open. */
  rssOpenByProcessMiB: Record<string, number>;
  kibPerConnection: number;
  openSeconds: number;
}

const HELLO = Buffer.from([0x81, 0x02, 0x68, 0x69]);

function openOne(port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    const fail = (err: Error): void => {
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error('no 101 + first frame in time')), timeoutMs);
    sock.once('connect', () => {
      sock.write(
        `GET /ws HTTP/1.1\r\nHost: ${TENANT_HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      const status = buf.subarray(0, buf.indexOf('\r\n')).toString('latin1');
      if (!/^HTTP\/1\.1 101 /.test(status)) return fail(new Error(`upgrade refused: ${status}`));
      if (buf.length < end + 4 + HELLO.length) return;
      if (!buf.subarray(end + 4, end + 4 + HELLO.length).equals(HELLO)) return fail(new Error('first frame did not come through'));
      clearTimeout(timer);
      sock.off('data', onData);
      sock.on('error', () => {});
      resolve(sock);
    };
    sock.on('data', onData);
    sock.once('error', fail);
    sock.once('close', () => fail(new Error('closed before the upgrade completed')));
  });
}

function rssMiB(stack: Stack): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of stack.proxies) out[p.name] = rssBytes(p.pid) / 1024 ** 2;
  return out;
}

const sum = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0);

export async function measureWebSockets(stack: Stack, count: number, log: (s: string) => void): Promise<WsResult> {
  const idle = rssMiB(stack);
  const sockets: net.Socket[] = [];
  let failed = 0;
  let firstError = '';
  const t0 = performance.now();
  await pool(count, 50, async () => {
    try {
      sockets.push(await openOne(stack.port, 10_000));
    } catch (err) {
      failed++;
      firstError ||= (err as Error).message;
    }
  });
  const openSeconds = (performance.now() - t0) / 1000;
  await sleep(500); // let allocations settle before reading RSS
  const open = rssMiB(stack);
  for (const s of sockets) s.destroy();
  await sleep(500);
  if (failed > 0) log(`  ${stack.id}: ${failed} of ${count} WebSocket connections failed (first: ${firstError})`);
  const opened = sockets.length;
  return {
    stack: stack.id,
    wanted: count,
    opened,
    failed,
    rssIdleMiB: sum(idle),
    rssOpenMiB: sum(open),
    rssOpenByProcessMiB: open,
    kibPerConnection: opened > 0 ? ((sum(open) - sum(idle)) * 1024) / opened : Number.NaN,
    openSeconds,
  };
}
