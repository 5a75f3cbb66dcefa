// The end-to-end scenarios every transport of the SDK passes against real `wsgate serve` nodes:
// gateway.test.mjs runs them over /ws (the `ws` package), socketio.test.mjs over the Socket.IO
// edge (the real socket.io-client). Each file adds the tests of its own transport through the
// `more` hooks, which run inside the suites and get their nodes.
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { Wsgate } from '../../dist/esm/index.js';
import { Node, Redis, hs256, requireBinary, until } from './harness.mjs';

export const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

export function collect(sub) {
  const got = { messages: [], subscribed: [], errors: [] };
  sub.on('message', (m) => got.messages.push(m));
  sub.on('subscribed', (s) => got.subscribed.push(s));
  sub.on('error', (e) => got.errors.push(e));
  return got;
}

/**
 * Clients of one transport: `options` are the client's (the transport's own among them),
 * `url(node)` where it connects. Every client is disconnected after its test, passed or not.
 */
export function kit(url, options) {
  const clients = [];
  afterEach(() => {
    for (const c of clients.splice(0)) c.disconnect();
  });
  /** A client to `node` plus everything it reported. */
  function watch(node, opts = {}) {
    const c = new Wsgate(url(node), { minReconnectDelay: 100, maxReconnectDelay: 400, ...options, ...opts });
    clients.push(c);
    const events = [];
    for (const e of ['connecting', 'connected', 'disconnected', 'error', 'refreshed', 'event', 'message']) c.on(e, (a) => events.push([e, a]));
    const of = (name) => events.filter((e) => e[0] === name).map((e) => e[1]);
    return { c, events, of, disconnects: () => of('disconnected') };
  }
  /** A watched client subscribed to `channel`, once the first `subscribed` came. */
  async function subscribed(node, channel, opts = {}) {
    const w = watch(node, opts);
    const sub = w.c.subscribe(channel);
    const got = collect(sub);
    w.c.connect();
    await until(() => got.subscribed.length === 1, 'subscribed');
    return { ...w, sub, got };
  }
  return { watch, subscribed };
}

/**
 * The suites, for the transport `t`: `{name, url(node), options, refused}` (`refused`: the
 * reason of the 4001 an expired token gets). `more.cluster / solo / jwt (k, nodes)` add tests.
 */
export function scenarios(t, more = {}) {
  const k = kit(t.url, t.options);
  const { watch, subscribed } = k;

  describe(`${t.name}: cluster recovery (Redis store and broker, two nodes)`, () => {
    const n = {};
    before(async () => {
      requireBinary();
      n.redis = await Redis.start();
      [n.a, n.b] = await Promise.all([Node.start({ redis: n.redis, name: 'a' }), Node.start({ redis: n.redis, name: 'b' })]);
    });
    after(async () => {
      await n.a?.stop();
      await n.b?.stop();
      await n.redis?.stop();
    });

    test('SIGKILL the client\'s node, publish through the other, restart: every message once, in order', async () => {
      const { a, b } = n;
      const { c, disconnects, got } = await subscribed(a, 'room:kill');
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
    });

    test('SIGTERM drains with 1001; the client comes back and recovers what it missed', async () => {
      const { a, b } = n;
      const { disconnects, got } = await subscribed(a, 'room:drain');
      await b.publish('room:drain', 1);
      await until(() => got.messages.length === 1, 'message 1');
      a.child.kill('SIGTERM');
      await until(() => disconnects().length >= 1, 'the drain close');
      assert.equal(disconnects()[0].code, 1001);
      assert.equal(disconnects()[0].reconnect, true);
      await a.stop(); // the drain may still be waiting for other connections
      await b.publish('room:drain', 2);
      await b.publish('room:drain', 3);
      await a.start();
      await until(() => got.messages.length === 3, 'messages 2 and 3 recovered', 15_000);
      assert.deepEqual(got.messages.map((m) => m.data), [1, 2, 3]);
      assert.equal(got.subscribed[1].recovered, true);
    });

    more.cluster?.(k, n);

    test('Redis restarts under a live subscription: epoch_changed arrives, then the new stream', async () => {
      const { b, redis } = n;
      const { got } = await subscribed(n.a, 'room:live-epoch');
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
    });

    test('Redis loses its data: the gap is reported (epoch_changed), never hidden', async () => {
      const { a, b, redis } = n;
      const { got } = await subscribed(a, 'room:epoch');
      await b.publish('room:epoch', 'old');
      await until(() => got.messages.length === 1, 'the first message');
      await a.kill();
      await redis.restart(); // no persistence: every channel's history and epoch are gone
      await b.publish('room:epoch', 'new-1').catch(() => b.publish('room:epoch', 'new-1'));
      await a.start();
      await until(() => got.subscribed.length === 2, 'the resubscription', 15_000);
      const again = got.subscribed[1];
      assert.equal(again.recovered, false);
      assert.equal(again.gap, 'epoch_changed');
      assert.notEqual(again.epoch, got.subscribed[0].epoch);
      await b.publish('room:epoch', 'new-2');
      await until(() => got.messages.length === 2, 'a live message of the new stream');
      assert.deepEqual(got.messages.map((m) => m.data), ['old', 'new-2']);
    });
  });

  describe(`${t.name}: one node (memory)`, () => {
    const n = {};
    before(async () => {
      requireBinary();
      n.solo = await Node.start({ name: 'solo', args: ['--history-size', '3'] });
    });
    after(() => n.solo?.stop());

    test('publish (acknowledged with its offset), presence; rpc without a backend is refused as unsupported', async () => {
      const { solo } = n;
      const { c, sub, got } = await subscribed(solo, 'chat:1');
      assert.ok(c.connectionId && c.node === 'solo' && c.user);
      assert.deepEqual(await sub.publish({ text: 'hi' }), { channel: 'chat:1', offset: 1 });
      assert.equal(await solo.publish('chat:1', 'from the API'), 2);
      await until(() => got.messages.length === 2, 'both messages');
      assert.deepEqual(got.messages, [
        { channel: 'chat:1', offset: 1, data: { text: 'hi' } },
        { channel: 'chat:1', offset: 2, data: 'from the API' },
      ]);
      assert.deepEqual(await c.presence('chat:1'), { channel: 'chat:1', users: [c.user], connections: 1 });
      // A node without `hooks.rpc` has nobody to ask: the call fails at once, clearly.
      await assert.rejects(c.rpc('echo', 1), (e) => e.name === 'WsgateError' && e.code === 'unsupported' && /hooks\.rpc/.test(e.message));
      // A refusal rejects with its code; the connection stays up.
      await assert.rejects(c.publish('other:1', 1), (e) => e.code === 'forbidden' && /not allowed/.test(e.message));
      assert.equal(c.state, 'connected');
    });

    test('away longer than the history: history_truncated, and what is retained follows in order', async () => {
      const { solo } = n;
      const { c, got } = await subscribed(solo, 'news:1');
      await solo.publish('news:1', 1);
      await until(() => got.messages.length === 1, 'message 1');
      c.disconnect();
      for (const i of range(2, 10)) await solo.publish('news:1', i); // history keeps 3
      c.connect();
      await until(() => got.subscribed.length === 2, 'the resubscription');
      await solo.publish('news:1', 11);
      await until(() => got.messages.length === 5, 'the retained 3 and the live one');
      assert.deepEqual(got.messages.map((m) => m.data), [1, 8, 9, 10, 11]);
      assert.equal(got.subscribed[1].recovered, false);
      assert.equal(got.subscribed[1].gap, 'history_truncated');
    });

    test('an operator\'s DELETE closes with 4003: no reconnect', async () => {
      const { c, disconnects } = watch(n.solo);
      c.connect();
      await until(() => c.state === 'connected', 'connected');
      const r = await n.solo.api('DELETE', `/api/v1/connections/${encodeURIComponent(c.connectionId)}`);
      assert.equal(r.status, 200);
      await until(() => disconnects().length === 1, 'the close');
      assert.equal(disconnects()[0].code, 4003);
      assert.equal(disconnects()[0].reconnect, false);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(c.state, 'disconnected');
    });

    test('a user message sent through the API', async () => {
      const { c, of } = watch(n.solo);
      c.connect();
      await until(() => c.state === 'connected', 'connected');
      const r = await n.solo.api('POST', `/api/v1/connections/${encodeURIComponent(c.connectionId)}/send`, { data: { x: 1 } });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      await until(() => of('message').length === 1, 'the message');
      assert.deepEqual(of('message'), [{ data: { x: 1 } }]);
    });

    more.solo?.(k, n);
  });

  describe(`${t.name}: JWT (HS256)`, () => {
    const secret = 'sdk-test-secret';
    const n = { secret };
    before(async () => {
      requireBinary();
      n.jwt = await Node.start({ name: 'jwt', env: { WSGATE_AUTH__MODE: 'jwt', WSGATE_AUTH__JWT_SECRET: secret } });
    });
    after(() => n.jwt?.stop());

    test('4001 (expired token): a new token from getToken, then connected', async () => {
      const now = Math.floor(Date.now() / 1000);
      const tokens = [hs256(secret, { sub: 'ann', exp: now - 60 }), hs256(secret, { sub: 'ann', exp: now + 3600 })];
      let calls = 0;
      const { c, disconnects } = watch(n.jwt, { getToken: () => tokens[Math.min(calls++, 1)] });
      c.connect();
      await until(() => c.state === 'connected', 'connected with the second token');
      assert.equal(calls, 2);
      assert.equal(disconnects()[0].code, 4001);
      assert.match(disconnects()[0].reason, t.refused);
      assert.equal(c.user, 'ann');
    });

    test('4001 without getToken: the client stays down', async () => {
      const { c, disconnects } = watch(n.jwt, { token: 'not-a-jwt' });
      c.connect();
      await until(() => disconnects().length === 1, 'the refusal');
      assert.equal(disconnects()[0].code, 4001);
      assert.equal(disconnects()[0].reconnect, false);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(c.state, 'disconnected');
    });

    more.jwt?.(k, n);
  });
}
