/**
 * The part of the WebSocket API the client uses: the browser's, Node's global, or `ws`'s.
 * The handler properties are loosely typed so that each implementation's own event types fit.
 */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: any;
  onmessage: any;
  onclose: any;
  onerror: any;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `WebSocket` from the `ws` package. */
export type SocketConstructor = new (url: string) => SocketLike;

/**
 * Opens one connection for the client instead of `new WebSocket(url?token=…)`: `url` is the
 * client's, `token` the current one. The socket it returns speaks the gateway's JSON frames
 * (docs/protocol.md). `socketIoTransport(io)` from `@wsgate/client/socketio` is one: it runs
 * the client over wsgate's Socket.IO edge. A transport checks liveness itself (the client
 * sends no `ping` frames over it).
 */
export type Transport = (url: string, token: string | undefined) => SocketLike;

/** A position in a channel's stream: the last offset seen and the stream's epoch. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface WsgateOptions {
  /** A token (JWT) sent as `?token=` on every connect. */
  token?: string;
  /**
   * Fetches a token: called before the first connect when `token` is absent, before the
   * token's `exp` (then sent with `{"op":"refresh"}`), and after the server closed with 4001.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket implementation. Default `globalThis.WebSocket` (browsers, Node ≥ 22). */
  WebSocket?: SocketConstructor;
  /**
   * Connect through this instead of a WebSocket to `url` (e.g. `socketIoTransport(io)` from
   * `@wsgate/client/socketio`, with `url` the node's `http(s)://host:port`).
   */
  transport?: Transport;
  /** First reconnect delay window in ms. Default 500. */
  minReconnectDelay?: number;
  /** Largest reconnect delay window in ms (the cap). Default 20 000. */
  maxReconnectDelay?: number;
  /**
   * Send an application `ping` when nothing was received for this long (ms). Default: the
   * server's `heartbeat_ms` from `hello`, at most 25 000. 0 disables the liveness check. Not
   * used with a `transport` (it checks liveness itself).
   */
  pingInterval?: number;
  /** A connection that sends nothing for this long after a ping is reconnected. Default 10 000. */
  pongTimeout?: number;
  /** A connection that has not said `hello` within this is reconnected. Default 10 000. */
  connectTimeout?: number;
  /** Requests (`publish`, `presence`, `rpc`, `ping`, `subscribe`) fail after this. Default 10 000. */
  requestTimeout?: number;
  /** Refresh the token this long before its `exp`. Default 30 000. */
  refreshBefore?: number;
  /** Random source in [0, 1) for the jitter (tests inject one). Default `Math.random`. */
  random?: () => number;
}

/** Why a connection ended, and whether the client will try again. */
export interface DisconnectInfo {
  code: number;
  reason: string;
  /** True when a reconnect is scheduled. */
  reconnect: boolean;
  /** The delay before the reconnect, ms. */
  delay?: number;
}

export interface ConnectedInfo {
  connectionId: string;
  node: string;
  user: string;
  heartbeatMs: number;
}

export interface ClientEvents {
  connecting: { attempt: number };
  connected: ConnectedInfo;
  disconnected: DisconnectInfo;
  error: Error;
  /** A message sent to this user or this connection (not on a channel). */
  message: { data: unknown };
  /**
   * The server subscribed this connection to `channel` without being asked (the token's
   * `subs` claim, the connect hook, or the backend's `POST /api/v1/users/{user}/subscribe`).
   * Its publications arrive as `publication` events (unless `client.subscribe(channel)` made
   * a Subscription for it).
   */
  serverSubscribed: { channel: string; offset: number; epoch: string };
  /** The server ended such a subscription. */
  serverUnsubscribed: { channel: string };
  /** A publication on a channel this client has no Subscription for: a server-side one. */
  publication: Publication;
  /**
   * Over Socket.IO: a publication made with `"event": "<name>"` (docs/socketio.md), which
   * carries neither channel nor offset.
   */
  event: { event: string; data: unknown };
  /** The token was refreshed on the live connection. */
  refreshed: { token: string };
}

export interface Publication {
  channel: string;
  offset: number;
  data: unknown;
}

export interface SubscribedInfo {
  channel: string;
  /** The stream's newest offset when the subscription became live. */
  offset: number;
  epoch: string;
  /** True when this answers a resubscription after a reconnect. */
  resubscribed: boolean;
  /** Present when the subscribe carried `since`: were all missed messages recovered? */
  recovered?: boolean;
  /**
   * Why they were not: `history_truncated`, `epoch_changed`, `offset_ahead`, `too_large`,
   * `recovery_disabled` (the channel's namespace has `recover = false`).
   */
  gap?: string;
}

/** A `join` or `leave` of a channel whose namespace has `join_leave` (from any node). */
export interface PresenceEvent {
  channel: string;
  user?: string;
  connectionId?: string;
  [k: string]: unknown;
}

export interface SubscriptionEvents {
  message: Publication;
  subscribed: SubscribedInfo;
  unsubscribed: { channel: string; reason: string };
  error: Error;
  join: PresenceEvent;
  leave: PresenceEvent;
}

export interface Presence {
  channel: string;
  users: string[];
  connections: number;
}

/** An error frame from the server (`code` is the protocol's error code), or a local failure. */
export class WsgateError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'WsgateError';
  }
}
