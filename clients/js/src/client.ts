import { backoffDelay, tokenExpiry } from './backoff.js';
import { Emitter } from './emitter.js';
import { Subscription } from './subscription.js';
import type { ClientEvents, Presence, SocketConstructor, SocketLike, StreamPosition, Transport, WsgateOptions } from './types.js';
import { WsgateError } from './types.js';

/**
 * Close codes after which the client does not reconnect on its own (docs/protocol.md: "fix the
 * client", or an operator's 4003). 4001 is handled apart: reconnect once `getToken` gave a new
 * token. Every other code (1001 drain, 1006 lost, 1011, 4008 heartbeat, 4029 slow consumer or
 * rate limit, …) reconnects with backoff.
 */
const FINAL = [1000, 1002, 1003, 1007, 1008, 4003];

/** The code reported when the client itself gave up on a silent connection. */
export const CLOSE_LIVENESS = 4000;

type Pending = { ok: (f: any) => void; fail: (e: WsgateError) => void; timer: ReturnType<typeof setTimeout> };
type Timer = ReturnType<typeof setTimeout> | undefined;

/**
 * A connection to a wsgate node that stays up: it reconnects with exponential backoff and full
 * jitter, resubscribes every channel with `since` so that nothing published meanwhile is lost
 * (or the loss is reported), checks liveness with application pings, and refreshes its token
 * before it expires.
 *
 * States: `disconnected` → `connecting` (socket opening, until the server's `hello`) →
 * `connected`. `connect()` and `disconnect()` say what the application wants; the client
 * moves between the states on its own until then.
 */
export class Wsgate extends Emitter<ClientEvents> {
  state: 'disconnected' | 'connecting' | 'connected' = 'disconnected';
  /** From the server's `hello` on the current connection. */
  connectionId?: string;
  node?: string;
  user?: string;

  private readonly opts: Required<Omit<WsgateOptions, 'token' | 'getToken' | 'WebSocket' | 'pingInterval' | 'transport'>> &
    WsgateOptions;
  private readonly Socket?: SocketConstructor;
  private token?: string;
  /** The server refused the token (4001): fetch a new one before connecting again. */
  private tokenRefused = false;
  /** A `getToken()` for a live refresh is under way. */
  private refreshing = false;
  private ws?: SocketLike;
  private want = false;
  private attempt = 0;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly subs = new Map<string, Subscription>();
  private reconnectTimer: Timer;
  private deadTimer: Timer;
  private pingTimer?: ReturnType<typeof setInterval>;
  private refreshTimer: Timer;
  private lastFrame = 0;
  /** Counts `open()` calls, so that one overtaken while awaiting `getToken` stops. */
  private opening = 0;

  constructor(
    readonly url: string,
    options: WsgateOptions = {},
  ) {
    super();
    this.opts = {
      minReconnectDelay: 500,
      maxReconnectDelay: 20_000,
      pongTimeout: 10_000,
      connectTimeout: 10_000,
      requestTimeout: 10_000,
      refreshBefore: 30_000,
      random: Math.random,
      ...options,
    };
    this.token = options.token;
    this.Socket = options.WebSocket || (globalThis as any).WebSocket;
  }

  /** Opens the connection (and keeps it open). Idempotent. */
  connect(): this {
    if (!this.want) {
      this.want = true;
      // Browsers: when the network comes back, retry now instead of at the end of the backoff.
      (globalThis as any).addEventListener?.('online', this.online);
      if (this.state === 'disconnected') {
        clearTimeout(this.reconnectTimer);
        this.open();
      }
    }
    return this;
  }

  /** Closes the connection and stops reconnecting. Subscriptions are kept for `connect()`. */
  disconnect(code = 1000, reason = 'client disconnect'): this {
    this.want = false;
    (globalThis as any).removeEventListener?.('online', this.online);
    this.opening++;
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    if (!ws && this.state !== 'disconnected') {
      this.state = 'disconnected';
      this.emit('disconnected', { code, reason, reconnect: false });
    }
    if (ws) {
      this.closed(ws, code, reason);
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    return this;
  }

  /**
   * Subscribes to `channel` (now if connected, else on connect). `since` resumes from a
   * position saved earlier (`sub.position`). Subscribing twice returns the same object.
   */
  subscribe(channel: string, options: { since?: StreamPosition } = {}): Subscription {
    let sub = this.subs.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel, options.since);
      this.subs.set(channel, sub);
      if (this.state === 'connected') sub._send();
    }
    return sub;
  }

  /** The live subscription to `channel`, if any. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Publishes `data` to `channel`; resolves with the offset the server gave it. */
  publish(channel: string, data: unknown): Promise<{ channel: string; offset: number }> {
    return this.call({ op: 'publish', channel, data }).then((f) => ({ channel: f.channel, offset: f.offset }));
  }

  /** Who is subscribed to `channel`. */
  presence(channel: string): Promise<Presence> {
    return this.call({ op: 'presence', channel }).then((f) => ({
      channel: f.channel,
      users: f.users,
      connections: f.connections,
    }));
  }

  /** Calls `method` on the backend behind wsgate (`rpc` → `rpc_result`); resolves with its `data`. */
  rpc(method: string, data?: unknown): Promise<unknown> {
    return this.call({ op: 'rpc', method, data }).then((f) => {
      if (f.error) {
        const e = f.error;
        throw new WsgateError(e.code || 'rpc_error', e.message || String(e));
      }
      return f.data;
    });
  }

  /** Round trip to the server; resolves with the time it took in ms. */
  ping(): Promise<number> {
    const t = Date.now();
    return this.call({ op: 'ping', ts: t }).then(() => Date.now() - t);
  }

  /** Sends a request on the current connection; fails at once when not connected. */
  private call(frame: Record<string, unknown>): Promise<any> {
    return new Promise((ok, fail) => this._request(frame, ok, fail));
  }

  /** @internal Sends `frame` with a fresh `id`; `ok` gets the answer, `fail` an error frame, a timeout or the disconnect. */
  _request(frame: Record<string, unknown>, ok: (f: any) => void, fail: (e: WsgateError) => void): void {
    if (this.state !== 'connected' || !this.ws) return fail(new WsgateError('disconnected', 'not connected'));
    const id = ++this.seq;
    const timer = setTimeout(() => {
      this.pending.delete(id);
      fail(new WsgateError('timeout', `no answer to ${frame.op} within ${this.opts.requestTimeout} ms`));
    }, this.opts.requestTimeout);
    this.pending.set(id, { ok, fail, timer });
    this.ws.send(JSON.stringify({ ...frame, id }));
  }

  /** @internal */
  _forget(sub: Subscription): void {
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
  }

  /** @internal */
  _retryDelay(attempt: number): number {
    return backoffDelay(attempt, this.opts.minReconnectDelay, this.opts.maxReconnectDelay, this.opts.random);
  }

  private readonly online = (): void => {
    if (this.want && this.state === 'disconnected') {
      clearTimeout(this.reconnectTimer);
      this.open();
    }
  };

  private async open(): Promise<void> {
    const me = ++this.opening;
    this.setState('connecting');
    this.emit('connecting', { attempt: this.attempt });
    if (me !== this.opening) return; // a handler called disconnect()
    const { getToken } = this.opts;
    const exp = tokenExpiry(this.token);
    // A new token when there is none, the server refused it (4001), or it is about to expire.
    if (getToken && (this.token === undefined || this.tokenRefused || (exp !== undefined && exp - this.opts.refreshBefore <= Date.now()))) {
      try {
        this.token = await getToken();
        this.tokenRefused = false;
      } catch (e) {
        this.emit('error', asError(e));
        return me === this.opening ? this.retry(1006, 'getToken failed') : undefined;
      }
      if (me !== this.opening) return;
    }
    const transport: Transport | undefined = this.opts.transport;
    if (!transport && !this.Socket) {
      this.want = false;
      this.setState('disconnected');
      this.emit('error', new WsgateError('no_websocket', 'no WebSocket: pass options.WebSocket (e.g. the ws package)'));
      return;
    }
    let ws: SocketLike;
    try {
      ws = transport ? transport(this.url, this.token) : new this.Socket!(withToken(this.url, this.token));
    } catch (e) {
      this.emit('error', asError(e));
      return this.retry(1006, 'connect failed');
    }
    this.ws = ws;
    ws.onmessage = (ev: { data: unknown }) => this.ws === ws && this.frame(String(ev.data));
    ws.onclose = (ev: { code: number; reason?: string }) => this.closed(ws, ev.code, ev.reason || '');
    ws.onerror = (ev: any) => this.ws === ws && this.emit('error', asError((ev && ev.error) || new Error('WebSocket error')));
    this.arm(this.opts.connectTimeout, 'connect timeout');
  }

  private frame(text: string): void {
    this.lastFrame = Date.now();
    clearTimeout(this.deadTimer);
    this.deadTimer = undefined;
    let f: any;
    try {
      f = JSON.parse(text);
    } catch {
      return this.emit('error', new WsgateError('invalid_json', 'server sent a frame that is not JSON'));
    }
    const p = f.id !== undefined && this.pending.get(f.id);
    if (p) {
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      return f.op === 'error' ? p.fail(new WsgateError(f.code, f.message)) : p.ok(f);
    }
    const sub = typeof f.channel === 'string' ? this.subs.get(f.channel) : undefined;
    switch (f.op) {
      case 'hello':
        return this.hello(f);
      case 'message':
        if (f.channel === undefined) this.emit('message', { data: f.data });
        else if (sub) sub._message({ channel: f.channel, offset: f.offset, data: f.data });
        else this.emit('publication', { channel: f.channel, offset: f.offset, data: f.data });
        return;
      case 'subscribed':
        // Without an id: made by the server (`"server": true`), not answering a subscribe.
        if (f.server) this.emit('serverSubscribed', { channel: f.channel, offset: f.offset, epoch: f.epoch });
        return;
      case 'unsubscribed':
        if (f.server) this.emit('serverUnsubscribed', { channel: f.channel });
        return;
      case 'event':
        return this.emit('event', { event: f.event, data: f.data });
      case 'join':
      case 'leave':
      case 'epoch_changed':
      case 'gap':
        return sub && sub._event(f);
      case 'error':
        // The server says the token expired: refresh now, within its grace (then 4001).
        if (f.code === 'token_expired' && this.opts.getToken && !this.refreshing) {
          clearTimeout(this.refreshTimer);
          this.refresh();
        }
        return this.emit('error', new WsgateError(f.code, f.message));
    }
  }

  private hello(f: any): void {
    this.state = 'connected';
    this.attempt = 0;
    this.connectionId = f.connection_id;
    this.node = f.node;
    this.user = f.user;
    // A transport (Socket.IO: Engine.IO's heartbeat) checks liveness itself.
    const interval = this.opts.transport ? 0 : (this.opts.pingInterval ?? Math.min(f.heartbeat_ms || 25_000, 25_000));
    if (interval > 0) {
      this.pingTimer = setInterval(() => {
        if (Date.now() - this.lastFrame >= interval && this.ws && this.deadTimer === undefined) {
          this.ws.send(JSON.stringify({ op: 'ping', ts: Date.now() }));
          this.arm(this.opts.pongTimeout, 'ping timeout');
        }
      }, interval);
    }
    this.scheduleRefresh();
    // Resubscribe first: a `connected` handler that subscribes must not send twice.
    for (const sub of this.subs.values()) sub._send();
    this.emit('connected', { connectionId: f.connection_id, node: f.node, user: f.user, heartbeatMs: f.heartbeat_ms });
  }

  /** A connection that says nothing for `ms` is given up (closed and reconnected). */
  private arm(ms: number, why: string): void {
    clearTimeout(this.deadTimer);
    const ws = this.ws;
    this.deadTimer = setTimeout(() => {
      if (ws && this.ws === ws) {
        this.closed(ws, CLOSE_LIVENESS, why);
        try {
          ws.close(CLOSE_LIVENESS, why);
        } catch {}
      }
    }, ms);
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    const exp = tokenExpiry(this.token);
    if (!this.opts.getToken || exp === undefined) return;
    const delay = Math.min(Math.max(exp - this.opts.refreshBefore - Date.now(), 0), 2 ** 31 - 1);
    this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }

  /** Fetches a new token and hands it to the live connection (`refresh` → `refreshed`). */
  private async refresh(): Promise<void> {
    let token: string;
    this.refreshing = true;
    try {
      token = await this.opts.getToken!();
    } catch (e) {
      this.emit('error', asError(e));
      this.refreshTimer = setTimeout(() => this.refresh(), this._retryDelay(3));
      return;
    } finally {
      this.refreshing = false;
    }
    // The next connect uses it too, whatever the live connection says.
    this.token = token;
    this._request(
      { op: 'refresh', token },
      () => {
        this.emit('refreshed', { token });
        this.scheduleRefresh();
      },
      (e) => e.code !== 'disconnected' && this.emit('error', e),
    );
  }

  /** The socket `ws` is gone (closed by the server, lost, or given up by us). */
  private closed(ws: SocketLike, code: number, reason: string): void {
    if (this.ws !== ws) return;
    this.ws = undefined;
    ws.onmessage = ws.onclose = ws.onopen = null;
    ws.onerror = noop; // `ws` throws on an 'error' without a listener
    clearTimeout(this.deadTimer);
    this.deadTimer = undefined;
    clearInterval(this.pingTimer);
    clearTimeout(this.refreshTimer);
    this.connectionId = this.node = this.user = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.state = 'disconnected';
    for (const p of pending) {
      clearTimeout(p.timer);
      p.fail(new WsgateError('disconnected', `connection closed (${code})`));
    }
    for (const sub of this.subs.values()) sub._lost();
    if (code === 4001) this.tokenRefused = true;
    const again = this.want && (code === 4001 ? !!this.opts.getToken : !FINAL.includes(code));
    if (!again) {
      this.want = false;
      (globalThis as any).removeEventListener?.('online', this.online);
      this.emit('disconnected', { code, reason, reconnect: false });
    } else this.retry(code, reason);
  }

  private retry(code: number, reason: string): void {
    const delay = this._retryDelay(this.attempt++);
    this.setState('disconnected');
    this.emit('disconnected', { code, reason, reconnect: true, delay });
    this.reconnectTimer = setTimeout(() => this.want && this.open(), delay);
  }

  private setState(s: Wsgate['state']): void {
    this.state = s;
  }
}

function withToken(url: string, token: string | undefined): string {
  if (token === undefined) return url;
  const u = new URL(url);
  u.searchParams.set('token', token);
  return u.toString();
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

function noop(): void {}
