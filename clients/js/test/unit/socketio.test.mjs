// The Socket.IO transport against a scripted stand-in for socket.io-client's `io` (the test
// plays the edge of docs/socketio.md); test/e2e/socketio.test.mjs runs the real one.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { Wsgate } from '../../dist/esm/index.js';
import { CLOSE_TOKEN_REFRESH, socketIoTransport } from '../../dist/esm/socketio.js';
import { jwt, quick, record, sleep, until } from './fake.mjs';

/** One `io()` socket: records emits, lets the test play the server. */
class FakeSio {
  constructor(url, opts) {
    Object.assign(this, { url, opts, emitted: [], handlers: {}, any: [], disconnected: false });
  }
  on(ev, fn) {
    (this.handlers[ev] ||= []).push(fn);
    return this;
  }
  onAny(fn) {
    this.any.push(fn);
    return this;
  }
  emit(event, arg, ack) {
    this.emitted.push({ event, arg, ack });
    return this;
  }
  disconnect() {
    this.disconnected = true;
    return this;
  }
  // ---- the server's side ----
  fire(ev, ...args) {
    for (const fn of this.handlers[ev] || []) fn(...args);
  }
  /** A server event (what `onAny` sees). */
  server(event, arg) {
    for (const fn of this.any) fn(event, arg);
  }
  connectAndHello(extra = {}) {
    this.fire('connect');
    this.server('hello', { connection_id: `c${sockets.length}`, node: 'n1', user: 'u1', ...extra });
  }
  last(event) {
    return [...this.emitted].reverse().find((e) => e.event === event);
  }
}

let sockets = [];
const io = (url, opts) => {
  const s = new FakeSio(url, opts);
  sockets.push(s);
  return s;
};
const last = () => sockets[sockets.length - 1];
let clients = [];
function client(opts = {}, sioOpts) {
  const c = new Wsgate('http://gate.test', { transport: socketIoTransport(io, sioOpts), ...quick, ...opts });
  clients.push(c);
  return c;
}
function connected(c) {
  c.connect();
  last().connectAndHello();
  assert.equal(c.state, 'connected');
  return last();
}
afterEach(() => {
  for (const c of clients) c.disconnect();
  clients = [];
  sockets = [];
});

describe('Socket.IO transport', () => {
  test('each connection is one io() with auth.token, no reconnection of its own, a new manager; options pass through', async () => {
    const c = client({ token: 't1' }, { transports: ['websocket'], auth: { extra: 1 } });
    const events = record(c, ['connected']);
    const s = connected(c);
    assert.equal(s.url, 'http://gate.test');
    assert.deepEqual(s.opts, { transports: ['websocket'], auth: { extra: 1, token: 't1' }, reconnection: false, forceNew: true });
    assert.equal(events[0][1].connectionId, 'c1');
    assert.equal(events[0][1].user, 'u1');
  });

  test('subscribe: the event and its acknowledgement; the missed ones after a reconnect come with since', async () => {
    const c = client();
    let s = connected(c);
    const sub = c.subscribe('room:1');
    const got = [];
    const subs = record(sub, ['subscribed']);
    sub.on('message', (m) => got.push(m));
    const e = s.last('subscribe');
    assert.equal(e.arg, 'room:1');
    e.ack({ ok: true, channel: 'room:1', offset: 4, epoch: 'e1', recovered: false });
    assert.equal(sub.state, 'subscribed');
    s.server('message', { channel: 'room:1', offset: 5, epoch: 'e1', data: 'a' });
    assert.deepEqual(got, [{ channel: 'room:1', offset: 5, data: 'a' }]);

    s.fire('disconnect', 'transport close');
    assert.ok(s.disconnected, 'the socket is let go');
    await until(() => sockets.length === 2, 'the reconnect');
    s = last();
    s.connectAndHello();
    const again = s.last('subscribe');
    assert.deepEqual(again.arg, { channel: 'room:1', since: { offset: 5, epoch: 'e1' } });
    again.ack({ ok: true, channel: 'room:1', offset: 7, epoch: 'e1', recovered: true });
    s.server('message', { channel: 'room:1', offset: 5, epoch: 'e1', data: 'a' }); // a duplicate
    s.server('message', { channel: 'room:1', offset: 6, epoch: 'e1', data: 'b' });
    s.server('message', { channel: 'room:1', offset: 7, epoch: 'e1', data: 'c' });
    assert.deepEqual(got.map((m) => m.data), ['a', 'b', 'c']);
    assert.deepEqual(subs[1][1], { channel: 'room:1', offset: 7, epoch: 'e1', resubscribed: true, recovered: true });
  });

  test('publish, presence, rpc and unsubscribe map to their events; a refused one rejects with its code', async () => {
    const c = client();
    const s = connected(c);
    const p = c.publish('room:1', { x: 1 });
    let e = s.last('publish');
    assert.deepEqual(e.arg, { channel: 'room:1', data: { x: 1 } });
    e.ack({ ok: true, channel: 'room:1', offset: 9 });
    assert.deepEqual(await p, { channel: 'room:1', offset: 9 });

    const pr = c.presence('room:1');
    e = s.last('presence');
    assert.equal(e.arg, 'room:1');
    e.ack({ ok: true, channel: 'room:1', users: ['u1'], connections: 2 });
    assert.deepEqual(await pr, { channel: 'room:1', users: ['u1'], connections: 2 });

    const r = c.rpc('m', { a: 1 });
    e = s.last('rpc');
    assert.deepEqual(e.arg, { method: 'm', data: { a: 1 } });
    e.ack({ ok: true, data: { b: 2 } });
    assert.deepEqual(await r, { b: 2 });

    const refused = c.publish('room:2', 1);
    s.last('publish').ack({ ok: false, error: 'forbidden', message: 'publishing to `room:2` is not allowed' });
    await assert.rejects(refused, (err) => err.name === 'WsgateError' && err.code === 'forbidden' && /not allowed/.test(err.message));

    const sub = c.subscribe('room:3');
    s.last('subscribe').ack({ ok: true, channel: 'room:3', offset: 0, epoch: 'e' });
    sub.unsubscribe();
    assert.equal(s.last('unsubscribe').arg, 'room:3');
  });

  test('ping is unsupported; no liveness pings are sent (Engine.IO checks liveness)', async () => {
    const c = client({ pingInterval: 5, pongTimeout: 5 });
    const s = connected(c);
    await assert.rejects(c.ping(), (e) => e.code === 'unsupported' && /Engine\.IO/.test(e.message));
    await sleep(40);
    assert.equal(c.state, 'connected');
    assert.deepEqual(s.emitted, []);
  });

  test('connect_error unauthorized: error, then 4001; getToken gives a new token for the next io()', async () => {
    let n = 0;
    const c = client({ getToken: () => `tok${++n}` });
    const events = record(c, ['error', 'disconnected', 'connected']);
    c.connect();
    await until(() => sockets.length === 1, 'first io()');
    assert.equal(last().opts.auth.token, 'tok1');
    last().fire('connect_error', new Error('unauthorized'));
    assert.equal(events[0][0], 'error');
    assert.equal(events[0][1].code, 'unauthorized');
    assert.equal(events[1][1].code, 4001);
    assert.equal(events[1][1].reconnect, true);
    await until(() => sockets.length === 2, 'the second io()');
    assert.equal(last().opts.auth.token, 'tok2');
    last().connectAndHello();
    assert.equal(c.state, 'connected');
  });

  test('connect_error unauthorized without getToken: the client stays down', async () => {
    const c = client({ token: 'bad' });
    const events = record(c, ['disconnected']);
    c.connect();
    last().fire('connect_error', new Error('unauthorized'));
    assert.deepEqual(events[0][1], { code: 4001, reason: 'unauthorized', reconnect: false });
    await sleep(30);
    assert.equal(sockets.length, 1);
  });

  test('another connect_error (a limit, a transport error): error connect_error, reconnect with backoff', async () => {
    const c = client();
    const events = record(c, ['error', 'disconnected']);
    c.connect();
    last().fire('connect_error', new Error('too many connections for this user'));
    assert.equal(events[0][1].code, 'connect_error');
    assert.match(events[0][1].message, /too many connections/);
    assert.equal(events[1][1].code, 1006);
    assert.equal(events[1][1].reconnect, true);
    await until(() => sockets.length === 2, 'the retry');
  });

  test('the edge\'s close event gives the code: 4029 reconnects, 4003 does not; ping timeout is 4000', async () => {
    const c = client();
    const events = record(c, ['disconnected']);
    let s = connected(c);
    s.server('close', { code: 4029, reason: 'slow consumer' });
    s.fire('disconnect', 'io server disconnect');
    assert.deepEqual(events[0][1], { code: 4029, reason: 'slow consumer', reconnect: true, delay: 5 });
    await until(() => sockets.length === 2, 'the reconnect');
    s = last();
    s.connectAndHello();
    s.fire('disconnect', 'ping timeout');
    assert.equal(events[1][1].code, 4000);
    assert.equal(events[1][1].reason, 'ping timeout');
    await until(() => sockets.length === 3, 'the reconnect');
    s = last();
    s.connectAndHello();
    s.server('close', { code: 4003, reason: 'kicked' });
    s.fire('disconnect', 'io server disconnect');
    assert.deepEqual(events[2][1], { code: 4003, reason: 'kicked', reconnect: false });
  });

  test('a message of a new epoch under a live subscription: epoch_changed first', async () => {
    const c = client();
    const s = connected(c);
    const sub = c.subscribe('room:1');
    const subs = record(sub, ['subscribed', 'message']);
    s.last('subscribe').ack({ ok: true, channel: 'room:1', offset: 5, epoch: 'e1', recovered: false });
    s.server('message', { channel: 'room:1', offset: 6, epoch: 'e1', data: 'old' });
    s.server('message', { channel: 'room:1', offset: 1, epoch: 'e2', data: 'new' });
    assert.deepEqual(
      subs.map(([n, a]) => [n, a.offset, a.gap ?? a.data]),
      [['subscribed', 5, undefined], ['message', 6, 'old'], ['subscribed', 0, 'epoch_changed'], ['message', 1, 'new']],
    );
    assert.deepEqual(sub.position, { offset: 1, epoch: 'e2' });
    s.server('gap', { channel: 'room:1', epoch: 'e2', offset: 4 });
    assert.equal(subs.at(-1)[1].gap, 'history_truncated');
    assert.equal(sub.offset, 4);
  });

  test('named events, user messages, server-side subscriptions and their errors', async () => {
    const c = client();
    const s = connected(c);
    const events = record(c, ['event', 'message', 'serverSubscribed', 'publication', 'error']);
    s.server('score', [1, 2]);
    s.server('message', { data: { to: 'me' } });
    s.server('subscribed', { channel: 'feed:1', offset: 3, epoch: 'e', server: true });
    s.server('message', { channel: 'feed:1', offset: 4, epoch: 'e', data: 'x' });
    s.server('error', { error: 'too_many_channels', message: 'too many', channel: 'feed:2', server: true });
    assert.deepEqual(events.slice(0, 4), [
      ['event', { event: 'score', data: [1, 2] }],
      ['message', { data: { to: 'me' } }],
      ['serverSubscribed', { channel: 'feed:1', offset: 3, epoch: 'e' }],
      ['publication', { channel: 'feed:1', offset: 4, data: 'x' }],
    ]);
    assert.equal(events[4][1].code, 'too_many_channels');
  });

  test('token refresh: refreshed, then a reconnect (1012) with the new token, resubscribing with since', async () => {
    const exp = Math.floor(Date.now() / 1000) + 60;
    const first = jwt({ sub: 'u1', exp });
    const fresh = jwt({ sub: 'u1', exp: exp + 3600 });
    // Refreshed within a second: refreshBefore is the token's life less at most 1 s.
    const c = client({ token: first, getToken: () => fresh, refreshBefore: 59_000 });
    const events = record(c, ['refreshed', 'disconnected']);
    let s = connected(c);
    const sub = c.subscribe('room:1');
    s.last('subscribe').ack({ ok: true, channel: 'room:1', offset: 2, epoch: 'e1' });
    await until(() => events.length === 2, 'the refresh and the reconnect', 3000);
    assert.deepEqual(events[0], ['refreshed', { token: fresh }]);
    assert.equal(events[1][1].code, CLOSE_TOKEN_REFRESH);
    assert.equal(events[1][1].reconnect, true);
    await until(() => sockets.length === 2, 'the new io()');
    s = last();
    assert.equal(s.opts.auth.token, fresh);
    s.connectAndHello();
    assert.deepEqual(s.last('subscribe').arg, { channel: 'room:1', since: { offset: 2, epoch: 'e1' } });
    assert.equal(sub.state, 'subscribing');
  });

  test('the gateway\'s token_expired notice refreshes at once', async () => {
    const c = client({ token: 'opaque', getToken: () => 'next' });
    const events = record(c, ['error', 'refreshed']);
    const s = connected(c);
    s.server('error', { code: 'token_expired', message: 'token expired' });
    assert.equal(events[0][1].code, 'token_expired');
    await until(() => sockets.length === 2, 'the reconnect with the new token');
    assert.equal(last().opts.auth.token, 'next');
  });

  test('disconnect() lets the socket go and opens no other', async () => {
    const c = client();
    const s = connected(c);
    c.disconnect();
    assert.ok(s.disconnected);
    s.fire('disconnect', 'io client disconnect');
    await sleep(30);
    assert.equal(sockets.length, 1);
    assert.equal(c.state, 'disconnected');
  });
});
