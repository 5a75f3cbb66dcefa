// End-to-end: the SDK (built dist/, Node, the `ws` package) against real `wsgate serve` nodes.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { CLOSE_LIVENESS, Wsgate } from '../../dist/esm/index.js';
import { Node, Redis, hs256, requireBinary, until } from './harness.mjs';

const execFileP = promisify(execFile);
const fast = { WebSocket, minReconnectDelay: 100, maxReconnectDelay: 400 };
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** A client plus everything it reported. */
function watch(url, opts = {}) {
  const c = new Wsgate(url, { ...fast, ...opts });
  const events = [];
  for (const e of ['connecting', 'connected', 'disconnected', 'error']) c.on(e, (a) => events.push([e, a]));
  return { c, events, disconnects: () => events.filter((e) => e[0] === 'disconnected').map((e) => e[1]) };
}
function collect(sub) {
  const got = { messages: [], subscribed: [] };
  sub.on('message', (m) => got.messages.push(m));
  sub.on('subscribed', (s) => got.subscribed.push(s));
  return got;
}
/** A watched client (`watch(url, opts)`) subscribed to `channel`, once the first `subscribed` came. */
async function subscribed(url, channel, opts = {}) {
  const w = watch(url, opts);
  const sub = w.c.subscribe(channel);
  const got = collect(sub);
  w.c.connect();
  await until(() => got.subscribed.length === 1, 'subscribed');
  return { ...w, sub, got };
}

describe('cluster recovery (Redis store and broker, two nodes)', () => {
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
    const { c, disconnects, got } = await subscribed(a.ws, 'room:kill');
    for (const i of range(1, 5)) await b.publish('room:kill', { i });
    await until(() => got.messages.length === 5, 'the first 5 live messages');

    await a.kill();
    await until(() => disconnects().length >= 1, 'the client to notice the dead node');
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

  test('SIGTERM drains with 1001; the client comes back and recovers what it missed', async () => {
    const { c, disconnects, got } = await subscribed(a.ws, 'room:drain');
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
    c.disconnect();
  });

  test('a node that stops answering (SIGSTOP) is given up by the ping check and recovered from', async () => {
    const { c, disconnects, got } = await subscribed(a.ws, 'room:frozen', {
      pingInterval: 200,
      pongTimeout: 300,
      connectTimeout: 500,
    });
    await b.publish('room:frozen', 1);
    await until(() => got.messages.length === 1, 'message 1');
    a.child.kill('SIGSTOP'); // the TCP connection stays open; nothing answers
    try {
      await until(() => disconnects().length >= 1, 'the liveness check to give up', 5_000);
      assert.equal(disconnects()[0].code, CLOSE_LIVENESS);
      assert.equal(disconnects()[0].reason, 'ping timeout');
      await b.publish('room:frozen', 2);
    } finally {
      a.child.kill('SIGCONT');
    }
    await until(() => got.messages.length === 2, 'message 2 after the node thawed', 15_000);
    await b.publish('room:frozen', 3);
    await until(() => got.messages.length === 3, 'message 3');
    assert.deepEqual(got.messages.map((m) => m.data), [1, 2, 3]);
    assert.equal(got.subscribed.at(-1).recovered, true);
    c.disconnect();
  });

  test('Redis restarts under a live subscription: epoch_changed arrives, then the new stream', async () => {
    const { c, got } = await subscribed(a.ws, 'room:live-epoch');
    await b.publish('room:live-epoch', 'old-1');
    await b.publish('room:live-epoch', 'old-2');
    await until(() => got.messages.length === 2, 'the old stream');
    await redis.restart(); // no persistence: offsets start at 1 again, under a new epoch
    await until(async () => (await b.publish('room:live-epoch', 'new-1').then(() => true, () => false)), 'a publication accepted again', 15_000);
    await until(() => got.messages.length === 3, 'the new stream\'s first message (offset 1, below 2)', 15_000);
    const notice = got.subscribed.at(-1);
    assert.equal(notice.gap, 'epoch_changed');
    assert.notEqual(notice.epoch, got.subscribed[0].epoch);
    assert.deepEqual(got.messages.map((m) => m.data), ['old-1', 'old-2', 'new-1']);
    c.disconnect();
  });

  test('Redis loses its data: the gap is reported (epoch_changed), never hidden', async () => {
    const { c, got } = await subscribed(a.ws, 'room:epoch');
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
    c.disconnect();
  });
});

describe('one node (memory)', () => {
  let n;
  before(async () => {
    requireBinary();
    n = await Node.start({ name: 'solo', args: ['--history-size', '3'] });
  });
  after(() => n?.stop());

  test('client publish, presence, ping; rpc without a backend is refused as unsupported', async () => {
    const { c, sub, got } = await subscribed(n.ws, 'chat:1');
    const p = await sub.publish({ text: 'hi' });
    assert.equal(p.offset, 1);
    await until(() => got.messages.length === 1, 'own message');
    assert.deepEqual(got.messages[0], { channel: 'chat:1', offset: 1, data: { text: 'hi' } });
    const pr = await c.presence('chat:1');
    assert.equal(pr.connections, 1);
    assert.deepEqual(pr.users, [c.user]);
    assert.ok((await c.ping()) >= 0);
    try {
      // A node without `hooks.rpc` has nobody to ask: the call fails at once, clearly.
      await assert.rejects(c.rpc('echo', 1), (e) => e.code === 'unsupported' && /hooks\.rpc/.test(e.message));
    } finally {
      c.disconnect();
    }
  });

  test('away longer than the history: history_truncated, and what is retained follows in order', async () => {
    const { c, got } = await subscribed(n.ws, 'news:1');
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

  test('Node\'s own WebSocket (no `ws`), from the CommonJS build', async () => {
    // Node 20 has a global WebSocket behind --experimental-websocket (on by default from 22).
    const flags = typeof globalThis.WebSocket === 'function' ? [] : ['--experimental-websocket'];
    const script = `
      const { Wsgate } = require(${JSON.stringify(fileURLToPath(new URL('../../dist/cjs/index.js', import.meta.url)))});
      const c = new Wsgate(${JSON.stringify(n.ws)});
      const sub = c.subscribe('global:1');
      sub.on('subscribed', () => sub.publish('via global WebSocket').catch(() => {})); // its answer comes after the message
      sub.on('message', (m) => { console.log(JSON.stringify(m)); c.disconnect(); });
      c.connect();
      setTimeout(() => process.exit(3), 5000).unref();
    `;
    const { stdout } = await execFileP(process.execPath, [...flags, '--no-warnings', '-e', script]);
    assert.deepEqual(JSON.parse(stdout), { channel: 'global:1', offset: 1, data: 'via global WebSocket' });
  });

  test('an operator\'s DELETE closes with 4003: no reconnect', async () => {
    const { c, disconnects } = watch(n.ws);
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

  test('a user message sent through the API', async () => {
    const { c } = watch(n.ws);
    const got = [];
    c.on('message', (m) => got.push(m.data));
    c.connect();
    await until(() => c.state === 'connected', 'connected');
    const r = await n.api('POST', `/api/v1/connections/${encodeURIComponent(c.connectionId)}/send`, { data: { x: 1 } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await until(() => got.length === 1, 'the message');
    assert.deepEqual(got, [{ x: 1 }]);
    c.disconnect();
  });
});

describe('JWT (HS256)', () => {
  const secret = 'sdk-test-secret';
  let n;
  before(async () => {
    requireBinary();
    n = await Node.start({ name: 'jwt', env: { WSGATE_AUTH__MODE: 'jwt', WSGATE_AUTH__JWT_SECRET: secret } });
  });
  after(() => n?.stop());

  test('4001 (expired token): a new token from getToken, then connected', async () => {
    const now = Math.floor(Date.now() / 1000);
    const tokens = [hs256(secret, { sub: 'ann', exp: now - 60 }), hs256(secret, { sub: 'ann', exp: now + 3600 })];
    let calls = 0;
    const { c, disconnects } = watch(n.ws, { getToken: () => tokens[Math.min(calls++, 1)] });
    c.connect();
    await until(() => c.state === 'connected', 'connected with the second token');
    assert.equal(calls, 2);
    assert.equal(disconnects()[0].code, 4001);
    assert.match(disconnects()[0].reason, /expired/);
    assert.equal(c.user, 'ann');
    c.disconnect();
  });

  test('4001 without getToken: the client stays down', async () => {
    const { c, disconnects } = watch(n.ws, { token: 'not-a-jwt' });
    c.connect();
    await until(() => disconnects().length === 1, 'the refusal');
    assert.equal(disconnects()[0].code, 4001);
    assert.equal(disconnects()[0].reconnect, false);
  });
});
