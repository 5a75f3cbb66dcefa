// End-to-end: the SDK over the Socket.IO edge (`socketIoTransport(io)` with the real
// socket.io-client 4) against real `wsgate serve` nodes: the same API and recovery as over /ws.
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { io } from 'socket.io-client';
import { Wsgate } from '../../dist/esm/index.js';
import { CLOSE_TOKEN_REFRESH, socketIoTransport } from '../../dist/esm/socketio.js';
import { Node, Redis, hs256, requireBinary, until } from './harness.mjs';

const fast = { minReconnectDelay: 100, maxReconnectDelay: 400 };
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

// Every client is disconnected after its test, passed or not (a live one keeps the process up).
const clients = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});

/** A client over Socket.IO plus everything it reported. `sio` goes to every `io()`. */
function watch(url, opts = {}, sio = {}) {
  const c = new Wsgate(url, { ...fast, transport: socketIoTransport(io, { timeout: 5000, ...sio }), ...opts });
  clients.push(c);
  const events = [];
  for (const e of ['connecting', 'connected', 'disconnected', 'error', 'refreshed', 'event', 'message']) c.on(e, (a) => events.push([e, a]));
  const of = (name) => events.filter((e) => e[0] === name).map((e) => e[1]);
  return { c, events, of, disconnects: () => of('disconnected') };
}
function collect(sub) {
  const got = { messages: [], subscribed: [], errors: [] };
  sub.on('message', (m) => got.messages.push(m));
  sub.on('subscribed', (s) => got.subscribed.push(s));
  sub.on('error', (e) => got.errors.push(e));
  return got;
}
async function subscribed(url, channel, opts = {}, sio = {}) {
  const w = watch(url, opts, sio);
  const sub = w.c.subscribe(channel);
  const got = collect(sub);
  w.c.connect();
  await until(() => got.subscribed.length === 1, 'subscribed');
  return { ...w, sub, got };
}

describe('Socket.IO: cluster recovery (Redis store and broker, two nodes)', () => {
  let redis, a, b;
  before(async () => {
    requireBinary();
    redis = await Redis.start();
    [a, b] = await Promise.all([Node.start({ redis, name: 'a' }), Node.start({ redis, name: 'b' })]);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await redis?.stop();
  });

  test('SIGKILL the client\'s node, publish through the other, restart: every message once, in order', async () => {
    const { c, disconnects, got } = await subscribed(a.http, 'room:kill');
    for (const i of range(1, 5)) await b.publish('room:kill', { i });
    await until(() => got.messages.length === 5, 'the first 5 live messages');

    await a.kill();
    await until(() => disconnects().length >= 1, 'the client to notice the dead node');
    assert.equal(disconnects()[0].code, 1006);
    assert.equal(disconnects()[0].reconnect, true);
    for (const i of range(6, 15)) await b.publish('room:kill', { i }); // while the client is away
    await a.start(); // same port
    await until(() => got.subscribed.length === 2, 'the resubscription', 15_000);
    for (const i of range(16, 20)) await b.publish('room:kill', { i });
    await until(() => got.messages.length >= 20, 'all 20 messages', 15_000);
    await new Promise((r) => setTimeout(r, 200)); // a duplicate would show up here

    assert.deepEqual(got.messages.map((m) => m.data.i), range(1, 20), 'once each, in order');
    assert.deepEqual(got.messages.map((m) => m.offset), range(1, 20));
    const [first, again] = got.subscribed;
    assert.equal(first.resubscribed, false);
    assert.equal(again.resubscribed, true);
    assert.equal(again.recovered, true);
    assert.equal(again.gap, undefined);
    assert.equal(again.epoch, first.epoch);
    assert.equal(c.state, 'connected');
    c.disconnect();
  });

  test('SIGTERM drains (close 1001, WebSocket only): the client comes back and recovers what it missed', async () => {
    const { c, disconnects, got } = await subscribed(a.http, 'room:drain', {}, { transports: ['websocket'] });
    await b.publish('room:drain', 1);
    await until(() => got.messages.length === 1, 'message 1');
    a.child.kill('SIGTERM');
    await until(() => disconnects().length >= 1, 'the drain close');
    assert.equal(disconnects()[0].code, 1001);
    assert.equal(disconnects()[0].reconnect, true);
    await a.stop();
    await b.publish('room:drain', 2);
    await b.publish('room:drain', 3);
    await a.start();
    await until(() => got.messages.length === 3, 'messages 2 and 3 recovered', 15_000);
    assert.deepEqual(got.messages.map((m) => m.data), [1, 2, 3]);
    assert.equal(got.subscribed[1].recovered, true);
    c.disconnect();
  });

  test('Redis restarts under a live subscription: the new epoch is reported (epoch_changed), then the new stream', async () => {
    const { c, got } = await subscribed(a.http, 'room:live-epoch');
    await b.publish('room:live-epoch', 'old-1');
    await b.publish('room:live-epoch', 'old-2');
    await until(() => got.messages.length === 2, 'the old stream');
    await redis.restart(); // no persistence: offsets start at 1 again, under a new epoch
    await until(async () => await b.publish('room:live-epoch', 'new-1').then(() => true, () => false), 'a publication accepted again', 15_000);
    await until(() => got.messages.length === 3, 'the new stream\'s first message (offset 1, below 2)', 15_000);
    const notice = got.subscribed.at(-1);
    assert.equal(notice.gap, 'epoch_changed');
    assert.notEqual(notice.epoch, got.subscribed[0].epoch);
    assert.deepEqual(got.messages.map((m) => m.data), ['old-1', 'old-2', 'new-1']);
    c.disconnect();
  });
});

describe('Socket.IO: one node (memory)', () => {
  let n;
  before(async () => {
    requireBinary();
    n = await Node.start({ name: 'solo', args: ['--history-size', '3'] });
  });
  after(() => n?.stop());

  test('subscribe, publish (acknowledged with its offset), API publish, presence; rpc and ping fail clearly', async () => {
    const { c, sub, got } = await subscribed(n.http, 'chat:1');
    assert.equal(c.state, 'connected');
    assert.ok(c.connectionId && c.node === 'solo' && c.user);
    const p = await sub.publish({ text: 'hi' });
    assert.deepEqual(p, { channel: 'chat:1', offset: 1 });
    assert.equal(await n.publish('chat:1', 'from the API'), 2);
    await until(() => got.messages.length === 2, 'both messages');
    assert.deepEqual(got.messages, [
      { channel: 'chat:1', offset: 1, data: { text: 'hi' } },
      { channel: 'chat:1', offset: 2, data: 'from the API' },
    ]);
    const pr = await c.presence('chat:1');
    assert.deepEqual(pr, { channel: 'chat:1', users: [c.user], connections: 1 });
    try {
      await assert.rejects(c.rpc('echo', 1), (e) => e.name === 'WsgateError' && e.code === 'unsupported' && /hooks\.rpc/.test(e.message));
      await assert.rejects(c.ping(), (e) => e.code === 'unsupported' && /Socket\.IO/.test(e.message));
      // The edge's refusals reject with their code, the connection stays up.
      await assert.rejects(c.publish('other:1', 1), (e) => e.code === 'forbidden' && /not allowed/.test(e.message));
      assert.equal(c.state, 'connected');
    } finally {
      c.disconnect();
    }
  });

  test('away longer than the history (polling only): history_truncated, and what is retained follows in order', async () => {
    const { c, got } = await subscribed(n.http, 'news:1', {}, { transports: ['polling'] });
    await n.publish('news:1', 1);
    await until(() => got.messages.length === 1, 'message 1');
    c.disconnect();
    for (const i of range(2, 10)) await n.publish('news:1', i); // history keeps 3
    c.connect();
    await until(() => got.subscribed.length === 2, 'the resubscription');
    await n.publish('news:1', 11);
    await until(() => got.messages.length === 5, 'the retained 3 and the live one');
    assert.deepEqual(got.messages.map((m) => m.data), [1, 8, 9, 10, 11]);
    assert.equal(got.subscribed[1].recovered, false);
    assert.equal(got.subscribed[1].gap, 'history_truncated');
    c.disconnect();
  });

  test('unsubscribe stops the channel\'s messages', async () => {
    const { c, sub, got } = await subscribed(n.http, 'chat:unsub');
    const other = await subscribed(n.http, 'chat:unsub'); // sees the presence
    await n.publish('chat:unsub', 1);
    await until(() => got.messages.length === 1, 'message 1');
    sub.unsubscribe();
    assert.equal(sub.state, 'unsubscribed');
    await until(async () => (await other.c.presence('chat:unsub')).connections === 1, 'the unsubscribe');
    await n.publish('chat:unsub', 2);
    await until(() => other.got.messages.length === 2, 'message 2 (to the other client)');
    const after = c.subscribe('chat:after'); // its answer comes after message 2 would have
    await until(() => after.state === 'subscribed', 'another subscription');
    assert.equal(got.messages.length, 1);
    c.disconnect();
  });

  test('named events, user messages and server-side subscriptions', async () => {
    const { c, of, events } = watch(n.http);
    const serverSubs = [];
    const pubs = [];
    c.on('serverSubscribed', (s) => serverSubs.push(s));
    c.on('publication', (p) => pubs.push(p));
    c.connect();
    await until(() => c.state === 'connected', 'connected');
    let r = await n.api('POST', '/api/v1/publish', { channel: 'chat:2', data: { n: 1 }, event: 'score' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    c.subscribe('chat:2');
    await until(() => c.getSubscription('chat:2').state === 'subscribed', 'subscribed');
    r = await n.api('POST', '/api/v1/publish', { channel: 'chat:2', data: { n: 2 }, event: 'score' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await until(() => of('event').length === 1, 'the named event');
    assert.deepEqual(of('event'), [{ event: 'score', data: { n: 2 } }]);
    r = await n.api('POST', `/api/v1/connections/${encodeURIComponent(c.connectionId)}/send`, { data: { x: 1 } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await until(() => of('message').length === 1, 'the user message');
    assert.deepEqual(of('message'), [{ data: { x: 1 } }]);
    r = await n.api('POST', `/api/v1/users/${encodeURIComponent(c.user)}/subscribe`, { channel: 'feed:1' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await until(() => serverSubs.length === 1, 'the server-side subscription');
    assert.equal(serverSubs[0].channel, 'feed:1');
    await n.publish('feed:1', 'pushed');
    await until(() => pubs.length === 1, 'its publication');
    assert.deepEqual(pubs[0], { channel: 'feed:1', offset: serverSubs[0].offset + 1, data: 'pushed' });
    assert.equal(of('error').length, 0, JSON.stringify(events));
    c.disconnect();
  });

  test('an operator\'s DELETE closes with 4003: no reconnect', async () => {
    const { c, disconnects } = watch(n.http);
    c.connect();
    await until(() => c.state === 'connected', 'connected');
    const r = await n.api('DELETE', `/api/v1/connections/${encodeURIComponent(c.connectionId)}`);
    assert.equal(r.status, 200);
    await until(() => disconnects().length === 1, 'the close');
    assert.equal(disconnects()[0].code, 4003);
    assert.equal(disconnects()[0].reconnect, false);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(c.state, 'disconnected');
  });
});

describe('Socket.IO: JWT (HS256)', () => {
  const secret = 'sdk-test-secret';
  let n;
  before(async () => {
    requireBinary();
    n = await Node.start({ name: 'jwt', env: { WSGATE_AUTH__MODE: 'jwt', WSGATE_AUTH__JWT_SECRET: secret } });
  });
  after(() => n?.stop());

  test('a bad token: error `unauthorized`, 4001, and without getToken the client stays down', async () => {
    const { c, of, disconnects } = watch(n.http, { token: 'not-a-jwt' });
    c.connect();
    await until(() => disconnects().length === 1, 'the refusal');
    assert.equal(disconnects()[0].code, 4001);
    assert.equal(disconnects()[0].reconnect, false);
    assert.equal(of('error')[0].name, 'WsgateError');
    assert.equal(of('error')[0].code, 'unauthorized');
    assert.equal(c.state, 'disconnected');
  });

  test('an expired token is refused; getToken gives a new one, then connected', async () => {
    const now = Math.floor(Date.now() / 1000);
    const tokens = [hs256(secret, { sub: 'ann', exp: now - 60 }), hs256(secret, { sub: 'ann', exp: now + 3600 })];
    let calls = 0;
    const { c, disconnects } = watch(n.http, { getToken: () => tokens[Math.min(calls++, 1)] });
    c.connect();
    await until(() => c.state === 'connected', 'connected with the second token');
    assert.equal(calls, 2);
    assert.equal(disconnects()[0].code, 4001);
    assert.equal(c.user, 'ann');
    c.disconnect();
  });

  test('token refresh reconnects with the fresh token; the subscription resumes with since', async () => {
    const now = Math.floor(Date.now() / 1000);
    const first = hs256(secret, { sub: 'bob', exp: now + 3600 });
    const fresh = hs256(secret, { sub: 'bob', exp: now + 7200 });
    let calls = 0;
    // Refresh 1 s after connecting (refreshBefore is the token's life less 1 s).
    const opts = { token: first, getToken: () => (calls++, fresh), refreshBefore: 3600_000 - 1000 };
    const { c, of, disconnects, sub, got } = await subscribed(n.http, 'chat:refresh', opts);
    const before = c.connectionId;
    await n.publish('chat:refresh', 1);
    await until(() => of('refreshed').length === 1, 'the refresh', 5000);
    assert.equal(of('refreshed')[0].token, fresh);
    await until(() => got.subscribed.length === 2, 'the resubscription on the new connection');
    assert.equal(disconnects()[0].code, CLOSE_TOKEN_REFRESH);
    assert.equal(disconnects()[0].reconnect, true);
    assert.notEqual(c.connectionId, before);
    assert.equal(got.subscribed[1].recovered, true);
    await n.publish('chat:refresh', 2);
    await until(() => got.messages.length === 2, 'both messages');
    assert.deepEqual(got.messages.map((m) => m.data), [1, 2]);
    assert.equal(calls, 1);
    assert.equal(sub.state, 'subscribed');
    c.disconnect();
  });
});
