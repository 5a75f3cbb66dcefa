import { Emitter } from './emitter.js';
import type { Presence, Publication, StreamPosition, SubscriptionEvents } from './types.js';
import { WsgateError } from './types.js';

/** What a {@link Subscription} needs from its client (kept narrow for the tests). */
export interface SubscriptionHost {
  readonly state: string;
  _request(frame: Record<string, unknown>, ok: (f: any) => void, fail: (e: WsgateError) => void): void;
  _forget(sub: Subscription): void;
  _retryDelay(attempt: number): number;
  publish(channel: string, data: unknown): Promise<{ channel: string; offset: number }>;
  presence(channel: string): Promise<Presence>;
}

/** Errors after which a subscribe is retried (on this connection, with backoff). */
const RETRY = ['unavailable', 'rate_limited', 'timeout'];

/**
 * One channel subscription. It tracks the last offset delivered and the stream's epoch, and
 * after every reconnect subscribes again with `since`, so that what was published meanwhile
 * arrives (`subscribed` reports `recovered` and the `gap` when the server could not fill it).
 * `message` fires once per offset, in increasing offset order: a replayed or stale
 * publication (offset at or below the last one delivered) is dropped.
 *
 * States: `subscribing` (waiting for the connection or the server's answer), `subscribed`,
 * `unsubscribed` (final: create a new one with `client.subscribe`).
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  state: 'subscribing' | 'subscribed' | 'unsubscribed' = 'subscribing';
  /** The last offset delivered (or the stream position when the subscription became live). */
  offset?: number;
  /** The epoch of the stream that `offset` belongs to. */
  epoch?: string;
  /** Publications that arrived before the `subscribed` answer, delivered right after it. */
  private early: Publication[] = [];
  /** Tells a current answer from a stale one (an answer to an earlier connection's request). */
  private generation = 0;
  private ever = false;
  private retries = 0;
  private retryTimer?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly client: SubscriptionHost,
    readonly channel: string,
    since?: StreamPosition,
  ) {
    super();
    if (since) {
      this.offset = since.offset;
      this.epoch = since.epoch;
    }
  }

  /** The position to resume from (`since`), once the subscription has one. */
  get position(): StreamPosition | undefined {
    return this.offset !== undefined && this.epoch !== undefined
      ? { offset: this.offset, epoch: this.epoch }
      : undefined;
  }

  /** Publishes to this channel (the server's `client_publish` policy applies). */
  publish(data: unknown): Promise<{ channel: string; offset: number }> {
    return this.client.publish(this.channel, data);
  }

  /** Who is on this channel. */
  presence(): Promise<Presence> {
    return this.client.presence(this.channel);
  }

  /** Leaves the channel. Final: the object emits nothing more. */
  unsubscribe(): void {
    if (this.state === 'unsubscribed') return;
    const live = this.state === 'subscribed' && this.client.state === 'connected';
    this.end('unsubscribe');
    if (live) this.client._request({ op: 'unsubscribe', channel: this.channel }, noop, noop);
  }

  /** @internal Sends the subscribe (with `since` when a position is known). */
  _send(): void {
    if (this.state === 'unsubscribed') return;
    clearTimeout(this.retryTimer);
    this.state = 'subscribing';
    const gen = ++this.generation;
    const since = this.position;
    const resubscribed = this.ever;
    this.client._request(
      since ? { op: 'subscribe', channel: this.channel, since } : { op: 'subscribe', channel: this.channel },
      (f) => gen === this.generation && this.subscribed(f, !!since, resubscribed),
      (e) => gen === this.generation && this.failed(e),
    );
  }

  /** @internal The connection is gone: resubscribe on the next one. */
  _lost(): void {
    this.generation++;
    clearTimeout(this.retryTimer);
    if (this.state === 'subscribed') this.state = 'subscribing';
    this.early = [];
  }

  /** @internal A `message` frame for this channel. */
  _message(p: Publication): void {
    if (this.state === 'subscribing') this.early.push(p);
    else if (this.state === 'subscribed' && (this.offset === undefined || p.offset > this.offset)) {
      this.offset = p.offset;
      this.emit('message', p);
    }
  }

  /** @internal `join` / `leave` / `epoch_changed` / `gap` frames for this channel. */
  _event(f: any): void {
    if (this.state !== 'subscribed') return;
    if (f.op === 'gap') {
      // Publications of this stream up to `offset` that did not arrive are lost (the server
      // could not get them): move past them and say so, as a truncated recovery does.
      if (f.epoch !== this.epoch || (this.offset !== undefined && f.offset <= this.offset)) return;
      this.offset = f.offset;
      this.emit('subscribed', {
        channel: this.channel,
        offset: f.offset,
        epoch: f.epoch,
        resubscribed: true,
        recovered: false,
        gap: 'history_truncated',
      });
    } else if (f.op === 'epoch_changed') {
      // The stream this subscription knew is gone (DESIGN.md): follow the new one from its
      // current position, and say so the way a failed recovery does.
      const offset: number = typeof f.offset === 'number' ? f.offset : 0;
      this.epoch = f.epoch;
      this.offset = offset;
      this.emit('subscribed', {
        channel: this.channel,
        offset,
        epoch: f.epoch,
        resubscribed: true,
        recovered: false,
        gap: 'epoch_changed',
      });
    } else {
      const { op, connection_id, ...rest } = f;
      this.emit(op, connection_id === undefined ? rest : { ...rest, connectionId: connection_id });
    }
  }

  private subscribed(f: any, hadSince: boolean, resubscribed: boolean): void {
    // With a recovered position (or a truncated history), the missed publications follow this
    // frame and move `offset` forward; otherwise the subscription starts at the stream's head.
    const replayed = f.gap !== 'epoch_changed' && f.gap !== 'offset_ahead' && f.gap !== 'recovery_disabled';
    if (!hadSince || f.epoch !== this.epoch || !replayed) {
      this.offset = f.offset;
    }
    this.epoch = f.epoch;
    this.state = 'subscribed';
    this.ever = true;
    this.retries = 0;
    const info: SubscriptionEvents['subscribed'] = {
      channel: this.channel,
      offset: f.offset,
      epoch: f.epoch,
      resubscribed,
    };
    if (hadSince) {
      info.recovered = f.recovered !== false;
      if (f.gap) info.gap = f.gap;
    }
    this.emit('subscribed', info);
    const early = this.early;
    this.early = [];
    for (const p of early) this._message(p);
  }

  private failed(e: WsgateError): void {
    if (e.code === 'disconnected') return; // resubscribed on the next connection
    this.emit('error', e);
    if (RETRY.includes(e.code) && this.state === 'subscribing') {
      this.retryTimer = setTimeout(() => this.client.state === 'connected' && this._send(), this.client._retryDelay(this.retries++));
    } else {
      this.end(e.code);
    }
  }

  private end(reason: string): void {
    this.generation++;
    clearTimeout(this.retryTimer);
    this.state = 'unsubscribed';
    this.early = [];
    this.client._forget(this);
    this.emit('unsubscribed', { channel: this.channel, reason });
  }
}

function noop(): void {}
