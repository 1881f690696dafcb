/**
 * The admin token, checked in constant time, as a Bearer header (API, Prometheus) or as the
 * dashboard's session cookie. The cookie holds an HMAC of the token, not the token itself:
 * a leaked cookie does not reveal the token, and a new token ends every session.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

export const SESSION_COOKIE = 'tgw_session';

const digest = (s: string) => createHash('sha256').update(s).digest();

export class TokenCheck {
  readonly #token: Buffer;
  readonly session: string;

  constructor(token: string) {
    this.#token = digest(token);
    this.session = createHmac('sha256', token).update('tenant-gateway dashboard session v1').digest('base64url');
  }

  /** The token as typed (login form, ?token=). */
  matches(given: string): boolean {
    return timingSafeEqual(digest(given), this.#token);
  }

  bearer(header: string | undefined): boolean {
    return header !== undefined && header.startsWith('Bearer ') && this.matches(header.slice(7));
  }

  cookie(header: string | undefined): boolean {
    if (header === undefined) return false;
    for (const part of header.split(';')) {
      const eq = part.indexOf('=');
      if (eq !== -1 && part.slice(0, eq).trim() === SESSION_COOKIE) {
        return timingSafeEqual(digest(part.slice(eq + 1).trim()), digest(this.session));
      }
    }
    return false;
  }
}
