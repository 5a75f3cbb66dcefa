/**
 * `@wsgate/client/socketio`: runs the client over wsgate's Socket.IO edge (docs/socketio.md)
 * instead of `/ws`, with `socket.io-client`'s `io` passed in (the SDK itself depends on
 * nothing):
 *
 * ```ts
 * import { io } from 'socket.io-client';
 * import { Wsgate } from '@wsgate/client';
 * import { socketIoTransport } from '@wsgate/client/socketio';
 * const client = new Wsgate('https://gate.example.com', { transport: socketIoTransport(io), getToken });
 * ```
 *
 * Each connection of the client is one `io(url, { auth: { token }, reconnection: false,
 * forceNew: true })`: the client keeps its own reconnect, backoff and `since` recovery. The
 * socket returned here translates the gateway's JSON frames to Socket.IO events with
 * acknowledgements and back, so the client runs unchanged on top of it:
 *
 * - `subscribe` / `unsubscribe` / `publish` / `presence` / `rpc` → the events of the same name;
 *   an acknowledgement `{ok: false, error, message}` rejects with `WsgateError(error)`.
 * - `ping` is not an event of the edge (Engine.IO checks liveness): `client.ping()` rejects
 *   with `unsupported`.
 * - `refresh`: the edge has no live refresh, so the connection is closed (code 1012, reason
 *   `token refresh`) and the client reconnects with the new token, resubscribing with `since`.
 * - `connect_error` `unauthorized` → an `error` (`WsgateError` code `unauthorized`), then the
 *   close code 4001 (with `getToken` the client fetches a new token and reconnects); any other
 *   `connect_error` → an `error` (code `connect_error`), then 1006 (reconnect with backoff).
 * - The edge's `close {code, reason}` event gives the code of the disconnect that follows;
 *   without it a lost transport is 1006 and an Engine.IO ping timeout 4000.
 * - A `message` whose `epoch` differs from the one the channel had becomes `epoch_changed`
 *   first (what `/ws` says), so the subscription reports `gap: "epoch_changed"`.
 * - Any other event is a publication made with `"event": "<name>"`: the client emits
 *   `event {event, data}` (it carries no channel nor offset: not deduplicated on recovery).
 */
import type { SocketLike, Transport } from './types.js';

/** `io` from `socket.io-client` (v4): `(url, options) => Socket`. */
export type SocketIoConnect = (url: string, options?: any) => any;

/** The close code reported when the client reconnects to hand over a refreshed token. */
export const CLOSE_TOKEN_REFRESH = 1012;

/**
 * A transport over wsgate's Socket.IO edge. `options` go to every `io()` call (e.g.
 * `{ transports: ['websocket'] }`, `path`, `extraHeaders`); `auth`, `reconnection` and
 * `forceNew` are set by the transport.
 */
export function socketIoTransport(io: SocketIoConnect, options: Record<string, unknown> = {}): Transport {
  return (url, token) => new SocketIoSocket(io, url, token, options);
}

type Frame = Record<string, any>;

/** Client frame op → [event, the acknowledgement's frame op]. */
const OPS: Record<string, [string, string]> = {
  subscribe: ['subscribe', 'subscribed'],
  unsubscribe: ['unsubscribe', 'unsubscribed'],
  publish: ['publish', 'published'],
  presence: ['presence', 'presence'],
  rpc: ['rpc', 'rpc_result'],
};

/** Server events that are gateway frames (`{op: <event>, …arguments}`). */
const FRAMES = ['hello', 'message', 'gap', 'join', 'leave', 'subscribed', 'unsubscribed', 'epoch_changed'];

class SocketIoSocket implements SocketLike {
  readyState = 0;
  onopen: any = null;
  onmessage: any = null;
  onclose: any = null;
  onerror: any = null;
  private readonly s: any;
  /** The epoch each channel's publications were last seen in. */
  private readonly epochs = new Map<string, string>();
  /** The edge's `close` event, announcing the code of the disconnect that follows. */
  private closing?: { code: number; reason: string };

  constructor(io: SocketIoConnect, url: string, token: string | undefined, options: Record<string, unknown>) {
    const auth = { ...(options.auth as object), ...(token === undefined ? {} : { token }) };
    const s = (this.s = io(url, { ...options, auth, reconnection: false, forceNew: true }));
    s.on('connect', () => {
      this.readyState = 1;
      this.onopen?.({});
    });
    s.on('connect_error', (e: any) => {
      const message = String((e && e.message) || e);
      const refused = message === 'unauthorized';
      this.push({ op: 'error', code: refused ? 'unauthorized' : 'connect_error', message: `Socket.IO connect_error: ${message}` });
      this.end(refused ? 4001 : 1006, message);
    });
    s.on('disconnect', (reason: string) => {
      const c = this.closing;
      this.end(c ? c.code : reason === 'ping timeout' ? 4000 : 1006, c ? c.reason || reason : reason);
    });
    s.onAny((event: string, arg: any) => this.event(event, arg));
  }

  send(text: string): void {
    const f: Frame = JSON.parse(text);
    const { op, id } = f;
    const pair = OPS[op];
    if (pair) {
      const arg =
        op === 'publish'
          ? { channel: f.channel, data: f.data }
          : op === 'rpc'
            ? { method: f.method, data: f.data }
            : op === 'subscribe' && f.since
              ? { channel: f.channel, since: f.since }
              : f.channel;
      this.s.emit(pair[0], arg, (ack: any) => {
        if (!ack || ack.ok !== true) {
          return this.push({ op: 'error', id, code: (ack && ack.error) || 'invalid_frame', message: (ack && ack.message) || 'invalid acknowledgement' });
        }
        const { ok, ...rest } = ack;
        if (op === 'subscribe') this.epochs.set(f.channel, ack.epoch);
        this.push({ ...rest, op: pair[1], id });
      });
    } else if (op === 'refresh') {
      // No live refresh on the edge: answer, then reconnect with the token the client keeps.
      this.later(() => {
        this.push({ op: 'refreshed', id });
        this.end(CLOSE_TOKEN_REFRESH, 'token refresh');
      });
    } else if (id !== undefined) {
      const message = op === 'ping' ? 'ping is not available over Socket.IO (Engine.IO checks liveness)' : `${op} is not available over Socket.IO`;
      this.later(() => this.push({ op: 'error', id, code: 'unsupported', message }));
    }
  }

  close(code = 1000, reason = ''): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.s.disconnect();
    this.later(() => this.onclose?.({ code, reason }));
  }

  private event(event: string, arg: any): void {
    if (event === 'close') {
      this.closing = { code: arg && arg.code, reason: (arg && arg.reason) || '' };
    } else if (event === 'error') {
      // A server-side subscription that failed (`error`), or a gateway error frame (`code`).
      this.push({ ...arg, op: 'error', code: arg && (arg.code || arg.error) });
    } else if (FRAMES.includes(event)) {
      const f: Frame = { ...arg, op: event };
      if (event === 'hello') {
        const engine = this.s.io && this.s.io.engine;
        f.heartbeat_ms = (engine && (engine._pingInterval || engine.pingInterval)) || 0;
      }
      const channel = f.channel;
      if (typeof channel === 'string' && typeof f.epoch === 'string') {
        const known = this.epochs.get(channel);
        this.epochs.set(channel, f.epoch);
        // `/ws` announces a new stream under a live subscription; the edge's next message just
        // carries the new epoch.
        if (event === 'message' && known !== undefined && known !== f.epoch) {
          this.push({ op: 'epoch_changed', channel, epoch: f.epoch, offset: f.offset - 1 });
        }
      }
      this.push(f);
    } else {
      this.push({ op: 'event', event, data: arg });
    }
  }

  private push(f: Frame): void {
    if (this.readyState !== 3) this.onmessage?.({ data: JSON.stringify(f) });
  }

  /** The socket is gone (refused, lost, or closed by the server): once. */
  private end(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.s.disconnect();
    this.onclose?.({ code, reason });
  }

  private later(fn: () => void): void {
    setTimeout(fn, 0);
  }
}
