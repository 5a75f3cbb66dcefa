import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { Wsgate, WsgateError, backoffDelay, tokenExpiry, CLOSE_LIVENESS } from '../../dist/esm/index.js';
import { FakeSocket, jwt, quick, record, sleep, until } from './fake.mjs';

const URL = 'ws://gate.test/ws';
let clients = [];
function client(opts = {}) {
  const c = new Wsgate(URL, { WebSocket: FakeSocket, ...quick, ...opts });
  clients.push(c);
  return c;
}
async function connected(c) {
  c.connect();
  const ws = FakeSocket.last;
  ws.hello();
  assert.equal(c.state, 'connected');
  return ws;
}
/** Subscribes and answers like the server: head offset `offset` of `epoch`. */
async function subscribed(c, ws, channel, offset = 0, epoch = 'e1') {
  const sub = c.subscribe(channel);
  const f = ws.lastOp('subscribe');
  assert.equal(f.channel, channel);
  ws.push({ op: 'subscribed', id: f.id, channel, offset, epoch });
  assert.equal(sub.state, 'subscribed');
  return sub;
}
/** What `sub` reports: `pick` of each message, and each `subscribed`. */
function listen(sub, pick) {
  const got = [];
  const subs = [];
  sub.on('message', (m) => got.push(pick(m)));
  sub.on('subscribed', (s) => subs.push(s));
  return { got, subs };
}
const msg = (ws, channel, offset, data = offset) => ws.push({ op: 'message', channel, offset, data });

beforeEach(() => FakeSocket.reset());
afterEach(() => {
  for (const c of clients) c.disconnect();
  clients = [];
});

describe('backoff and tokens', () => {
  test('full jitter: uniform below min(cap, base * 2^attempt)', () => {
    assert.equal(backoffDelay(0, 100, 1000, () => 0), 0);
    assert.equal(backoffDelay(0, 100, 1000, () => 0.999), 99);
    assert.equal(backoffDelay(3, 100, 1000, () => 0.5), 400);
    assert.equal(backoffDelay(4, 100, 1000, () => 0.999), 999);
    assert.equal(backoffDelay(500, 100, 1000, () => 0.5), 500);
  });
  test('tokenExpiry reads exp from a JWT, undefined otherwise', () => {
    assert.equal(tokenExpiry(jwt({ sub: 'a', exp: 1700000000 })), 1700000000000);
    assert.equal(tokenExpiry(jwt({ sub: 'a' })), undefined);
    assert.equal(tokenExpiry('opaque'), undefined);
    assert.equal(tokenExpiry(undefined), undefined);
  });
});

describe('connection', () => {
  test('connect, hello, state events, token in the URL', async () => {
    const c = client({ token: 'abc' });
    const log = record(c, ['connecting', 'connected', 'disconnected']);
    c.connect();
    assert.equal(c.state, 'connecting');
    assert.equal(FakeSocket.last.url, `${URL}?token=abc`);
    FakeSocket.last.hello();
    assert.equal(c.state, 'connected');
    assert.equal(c.connectionId, 'c1');
    assert.deepEqual(log.map((e) => e[0]), ['connecting', 'connected']);
    assert.deepEqual(log[1][1], { connectionId: 'c1', node: 'n1', user: 'u1', heartbeatMs: 30000 });
    c.disconnect();
    assert.equal(c.state, 'disconnected');
    assert.deepEqual(FakeSocket.last.closedWith, { code: 1000, reason: 'client disconnect' });
    assert.deepEqual(log[2], ['disconnected', { code: 1000, reason: 'client disconnect', reconnect: false }]);
    await sleep(40);
    assert.equal(FakeSocket.all.length, 1, 'no reconnect after disconnect()');
  });

  test('without a WebSocket implementation: an error, no crash', () => {
    const saved = globalThis.WebSocket;
    globalThis.WebSocket = undefined;
    try {
      const c = new Wsgate(URL);
      const errors = [];
      c.on('error', (e) => errors.push(e));
      c.connect();
      assert.equal(errors[0].code, 'no_websocket');
      assert.equal(c.state, 'disconnected');
    } finally {
      globalThis.WebSocket = saved;
    }
  });

  test('disconnect() while getToken is pending: no socket is opened', async () => {
    let release;
    const c = client({ getToken: () => new Promise((r) => (release = r)) });
    const log = record(c, ['disconnected']);
    c.connect();
    assert.equal(c.state, 'connecting');
    c.disconnect();
    assert.equal(c.state, 'disconnected');
    assert.equal(log[0][1].reconnect, false);
    release('tok');
    await sleep(20);
    assert.equal(FakeSocket.all.length, 0);
  });

  test('uses the global WebSocket when none is passed', () => {
    const saved = globalThis.WebSocket;
    globalThis.WebSocket = FakeSocket;
    try {
      const c = new Wsgate(URL);
      c.connect();
      assert.equal(FakeSocket.all.length, 1);
      c.disconnect();
    } finally {
      globalThis.WebSocket = saved;
    }
  });

  for (const code of [1001, 1006, 1011, 4008, 4029]) {
    test(`reconnects with backoff after ${code}`, async () => {
      const c = client();
      const log = record(c, ['disconnected', 'connecting']);
      const ws = await connected(c);
      ws.drop(code, 'bye');
      assert.equal(c.state, 'disconnected');
      assert.deepEqual(log.find((e) => e[0] === 'disconnected')[1], { code, reason: 'bye', reconnect: true, delay: 5 });
      await until(() => FakeSocket.all.length === 2, 'a second socket');
      FakeSocket.last.hello();
      assert.equal(c.state, 'connected');
    });
  }

  for (const code of [1008, 4003]) {
    test(`does not reconnect after ${code}`, async () => {
      const c = client();
      const log = record(c, ['disconnected']);
      const ws = await connected(c);
      ws.drop(code, 'no');
      assert.deepEqual(log[0][1], { code, reason: 'no', reconnect: false });
      await sleep(40);
      assert.equal(FakeSocket.all.length, 1);
    });
  }

  test('the delay window doubles per failed attempt, up to the cap, and resets on hello', async () => {
    const c = client({ random: () => 0.999 });
    const delays = [];
    c.on('disconnected', (d) => delays.push(d.delay));
    c.connect();
    for (let i = 0; i < 5; i++) {
      const n = FakeSocket.all.length;
      FakeSocket.last.drop(1006);
      await until(() => FakeSocket.all.length === n + 1, 'a reconnect', 3000);
    }
    assert.deepEqual(delays, [9, 19, 39, 79, 79]);
    FakeSocket.last.hello();
    FakeSocket.last.drop(1001);
    assert.equal(delays.at(-1), 9);
  });

  test('a browser coming back online reconnects without waiting for the backoff', async () => {
    const target = new EventTarget();
    globalThis.addEventListener = target.addEventListener.bind(target);
    globalThis.removeEventListener = target.removeEventListener.bind(target);
    try {
      const c = client({ minReconnectDelay: 60_000, maxReconnectDelay: 60_000 });
      const ws = await connected(c);
      ws.drop(1006);
      assert.equal(FakeSocket.all.length, 1);
      target.dispatchEvent(new Event('online'));
      assert.equal(FakeSocket.all.length, 2);
      assert.equal(c.state, 'connecting');
      c.disconnect();
      target.dispatchEvent(new Event('online'));
      assert.equal(FakeSocket.all.length, 2, 'no listener after disconnect()');
    } finally {
      delete globalThis.addEventListener;
      delete globalThis.removeEventListener;
    }
  });

  test('4001 without getToken: stays down', async () => {
    const c = client({ token: 't1' });
    const log = record(c, ['disconnected']);
    const ws = await connected(c);
    ws.drop(4001, 'token expired');
    assert.deepEqual(log[0][1], { code: 4001, reason: 'token expired', reconnect: false });
    await sleep(40);
    assert.equal(FakeSocket.all.length, 1);
  });

  test('4001 with getToken: a new token is fetched before the reconnect', async () => {
    let n = 0;
    const c = client({ getToken: async () => `tok${++n}` });
    c.connect();
    await until(() => FakeSocket.all.length === 1, 'first socket');
    assert.equal(FakeSocket.last.url, `${URL}?token=tok1`);
    FakeSocket.last.hello();
    FakeSocket.last.drop(1001);
    await until(() => FakeSocket.all.length === 2, 'reconnect');
    assert.equal(FakeSocket.last.url, `${URL}?token=tok1`, 'same token after 1001');
    assert.equal(n, 1);
    FakeSocket.last.drop(4001, 'token expired');
    await until(() => FakeSocket.all.length === 3, 'reconnect after 4001');
    assert.equal(n, 2);
    assert.equal(FakeSocket.last.url, `${URL}?token=tok2`);
  });

  test('a token about to expire is replaced before a reconnect', async () => {
    const soon = jwt({ sub: 'u', exp: Math.floor(Date.now() / 1000) + 5 });
    let n = 0;
    const c = client({ token: soon, getToken: () => `fresh${++n}`, refreshBefore: 30_000 });
    c.connect();
    await until(() => FakeSocket.all.length === 1, 'socket');
    assert.equal(FakeSocket.last.url, `${URL}?token=fresh1`);
  });

  test('a connected handler that subscribes sends one subscribe', async () => {
    const c = client();
    c.on('connected', () => c.subscribe('a:1'));
    const ws = await connected(c);
    assert.deepEqual(ws.ops(), ['subscribe']);
  });

  test('getToken failing: retried with backoff, error reported', async () => {
    let n = 0;
    const c = client({
      getToken: async () => {
        if (++n < 3) throw new Error('auth server down');
        return 'ok';
      },
    });
    const errors = [];
    c.on('error', (e) => errors.push(e.message));
    c.connect();
    await until(() => FakeSocket.all.length === 1, 'socket after getToken recovers');
    assert.deepEqual(errors, ['auth server down', 'auth server down']);
    assert.equal(FakeSocket.last.url, `${URL}?token=ok`);
  });

  test('connect timeout: no hello, the socket is given up and replaced', async () => {
    const c = client({ connectTimeout: 20 });
    const log = record(c, ['disconnected']);
    c.connect();
    await until(() => FakeSocket.all.length === 2, 'a second socket');
    assert.equal(log[0][1].code, CLOSE_LIVENESS);
    assert.equal(log[0][1].reason, 'connect timeout');
    assert.equal(FakeSocket.all[0].closedWith.code, CLOSE_LIVENESS);
  });

  test('liveness: pings when idle; a silent connection is closed and reconnected', async () => {
    const c = client({ pingInterval: 20, pongTimeout: 30 });
    const log = record(c, ['disconnected']);
    const ws = await connected(c);
    ws.autoPong = true;
    await until(() => ws.ops().filter((o) => o === 'ping').length >= 3, 'three answered pings');
    assert.equal(c.state, 'connected', 'answered pings keep it up');
    assert.equal(log.length, 0);
    ws.autoPong = false;
    await until(() => FakeSocket.all.length === 2, 'a reconnect after silence', 2000);
    assert.deepEqual(log[0][1], { code: CLOSE_LIVENESS, reason: 'ping timeout', reconnect: true, delay: 5 });
    assert.deepEqual(ws.closedWith, { code: CLOSE_LIVENESS, reason: 'ping timeout' });
  });

  test('traffic counts as liveness: no ping while frames keep arriving', async () => {
    const c = client({ pingInterval: 40, pongTimeout: 1000 });
    const ws = await connected(c);
    for (let i = 0; i < 10; i++) {
      ws.push({ op: 'message', data: i });
      await sleep(10);
    }
    assert.equal(ws.ops().filter((o) => o === 'ping').length <= 1, true);
  });

  test('the ping interval follows hello.heartbeat_ms (at most 25 s)', async () => {
    const c = client();
    c.connect();
    FakeSocket.last.hello({ heartbeat_ms: 15 });
    await until(() => FakeSocket.last.lastOp('ping'), 'a ping');
  });

  test('a message to the user or connection (no channel)', async () => {
    const c = client();
    const got = [];
    c.on('message', (m) => got.push(m));
    const ws = await connected(c);
    ws.push({ op: 'message', data: { hi: 1 } });
    assert.deepEqual(got, [{ data: { hi: 1 } }]);
  });

  test('server-side subscriptions: announced, and their publications reach the client', async () => {
    const c = client();
    const log = record(c, ['serverSubscribed', 'publication', 'serverUnsubscribed']);
    const ws = await connected(c);
    ws.push({ op: 'subscribed', channel: 'news', offset: 4, epoch: 'e1', server: true });
    msg(ws, 'news', 5, 'hi');
    ws.push({ op: 'unsubscribed', channel: 'news', server: true });
    assert.deepEqual(log, [
      ['serverSubscribed', { channel: 'news', offset: 4, epoch: 'e1' }],
      ['publication', { channel: 'news', offset: 5, data: 'hi' }],
      ['serverUnsubscribed', { channel: 'news' }],
    ]);
  });

  test('an error frame without id goes to the client error event', async () => {
    const c = client();
    const errors = [];
    c.on('error', (e) => errors.push(e));
    const ws = await connected(c);
    ws.push({ op: 'error', code: 'rate_limited', message: 'slow down' });
    assert.ok(errors[0] instanceof WsgateError);
    assert.equal(errors[0].code, 'rate_limited');
  });

  test('a handler that throws does not break the client (the error is reported on a fresh task)', () => {
    // In a child process: node:test would take the uncaught exception for a test failure.
    const script = `
      import { Wsgate } from ${JSON.stringify(new globalThis.URL('../../dist/esm/index.js', import.meta.url).href)};
      import { FakeSocket } from ${JSON.stringify(new globalThis.URL('./fake.mjs', import.meta.url).href)};
      process.on('uncaughtException', (e) => { console.log('reported:' + e.message); process.exit(0); });
      const c = new Wsgate('ws://x/ws', { WebSocket: FakeSocket });
      c.on('connected', () => { throw new Error('app bug'); });
      c.on('connected', () => console.log('second handler ran, state ' + c.state));
      c.connect();
      FakeSocket.last.hello();
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(out, 'second handler ran, state connected\nreported:app bug\n');
  });
});

describe('requests', () => {
  test('publish, presence, ping and rpc resolve with the answer', async () => {
    const c = client();
    const ws = await connected(c);
    const p = c.publish('a:1', { x: 1 });
    const f = ws.lastOp('publish');
    assert.deepEqual({ ...f, id: 0 }, { op: 'publish', channel: 'a:1', data: { x: 1 }, id: 0 });
    ws.push({ op: 'published', id: f.id, channel: 'a:1', offset: 7 });
    assert.deepEqual(await p, { channel: 'a:1', offset: 7 });

    const pr = c.presence('a:1');
    ws.push({ op: 'presence', id: ws.lastOp('presence').id, channel: 'a:1', users: ['u1'], connections: 2 });
    assert.deepEqual(await pr, { channel: 'a:1', users: ['u1'], connections: 2 });

    const pi = c.ping();
    const pf = ws.lastOp('ping');
    assert.equal(typeof pf.ts, 'number');
    ws.push({ op: 'pong', id: pf.id, ts: pf.ts });
    assert.ok((await pi) >= 0);

    const r = c.rpc('getUser', { id: 3 });
    const rf = ws.lastOp('rpc');
    assert.equal(rf.method, 'getUser');
    assert.deepEqual(rf.data, { id: 3 });
    ws.push({ op: 'rpc_result', id: rf.id, data: { name: 'ann' } });
    assert.deepEqual(await r, { name: 'ann' });
  });

  test('rpc errors: an error frame, or rpc_result with an error', async () => {
    const c = client();
    const ws = await connected(c);
    const a = c.rpc('nope');
    ws.push({ op: 'error', id: ws.lastOp('rpc').id, code: 'unknown_op', message: 'unknown op `rpc`' });
    await assert.rejects(a, (e) => e instanceof WsgateError && e.code === 'unknown_op');
    const b = c.rpc('boom');
    ws.push({ op: 'rpc_result', id: ws.lastOp('rpc').id, error: { code: 'backend_error', message: 'boom' } });
    await assert.rejects(b, (e) => e.code === 'backend_error' && e.message === 'boom');
  });

  test('requests fail at once when disconnected, on close, and on timeout', async () => {
    const c = client({ requestTimeout: 20 });
    await assert.rejects(c.publish('a:1', 1), (e) => e.code === 'disconnected');
    const ws = await connected(c);
    const p = c.presence('a:1');
    ws.drop(1001);
    await assert.rejects(p, (e) => e.code === 'disconnected');
    await until(() => FakeSocket.all.length === 2, 'reconnect');
    FakeSocket.last.hello();
    await assert.rejects(c.ping(), (e) => e.code === 'timeout');
  });
});

describe('token refresh', () => {
  test('getToken before exp, sent with refresh; the next connect uses the new token', async () => {
    const exp = () => Math.floor(Date.now() / 1000) + 2;
    const tokens = [jwt({ sub: 'u', exp: exp() }), jwt({ sub: 'u', exp: exp() + 3600 })];
    let n = 0;
    const c = client({ getToken: () => tokens[n++], refreshBefore: 1950 });
    const refreshed = [];
    c.on('refreshed', (r) => refreshed.push(r.token));
    c.connect();
    await until(() => FakeSocket.all.length === 1, 'socket');
    const ws = FakeSocket.last;
    ws.hello();
    await until(() => ws.lastOp('refresh'), 'a refresh frame', 3000);
    const f = ws.lastOp('refresh');
    assert.equal(f.token, tokens[1]);
    ws.push({ op: 'refreshed', id: f.id });
    assert.deepEqual(refreshed, [tokens[1]]);
    ws.drop(1001);
    await until(() => FakeSocket.all.length === 2, 'reconnect');
    assert.equal(FakeSocket.last.url, `${URL}?token=${tokens[1]}`);
    assert.equal(n, 2, 'no extra getToken for a 1001 reconnect');
  });

  test('a refused refresh is reported', async () => {
    const exp = Math.floor(Date.now() / 1000) + 3; // 2 to 3 s ahead: refreshed 10 to 1010 ms after hello
    const c = client({ token: jwt({ exp }), getToken: () => 'new', refreshBefore: 1990 });
    const errors = [];
    c.on('error', (e) => errors.push(e.code));
    const ws = await connected(c);
    await until(() => ws.lastOp('refresh'), 'a refresh frame', 3000);
    ws.push({ op: 'error', id: ws.lastOp('refresh').id, code: 'token_expired', message: 'expired' });
    assert.deepEqual(errors, ['token_expired']);
  });

  test("the server's token_expired starts a refresh at once", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3600; // not due for an hour
    let calls = 0;
    const c = client({ token: jwt({ exp }), getToken: () => `new${++calls}` });
    const errors = [];
    c.on('error', (e) => errors.push(e.code));
    const ws = await connected(c);
    ws.push({ op: 'error', code: 'token_expired', message: 'token expired; send a refresh within 10000 ms' });
    await until(() => ws.lastOp('refresh'), 'a refresh frame', 1000);
    assert.equal(ws.lastOp('refresh').token, 'new1');
    assert.deepEqual(errors, ['token_expired']);
    assert.equal(calls, 1);
  });
});

describe('subscriptions', () => {
  test('messages once, in offset order; duplicates and stale offsets dropped', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = await subscribed(c, ws, 'team:42', 3);
    const got = [];
    sub.on('message', (m) => got.push(m.offset));
    for (const o of [4, 5, 5, 3, 6]) msg(ws, 'team:42', o);
    msg(ws, 'other', 7);
    assert.deepEqual(got, [4, 5, 6]);
    assert.deepEqual(sub.position, { offset: 6, epoch: 'e1' });
    assert.equal(c.subscribe('team:42'), sub, 'one object per channel');
  });

  test('subscribe before connect is sent on hello; early messages wait for subscribed', async () => {
    const c = client();
    const sub = c.subscribe('a:1');
    const log = record(sub, ['subscribed', 'message']);
    c.connect();
    const ws = FakeSocket.last;
    ws.hello();
    const f = ws.lastOp('subscribe');
    assert.equal(f.since, undefined);
    msg(ws, 'a:1', 11); // before the answer (not what the server does, but harmless)
    assert.equal(log.length, 0);
    ws.push({ op: 'subscribed', id: f.id, channel: 'a:1', offset: 10, epoch: 'e' });
    assert.deepEqual(log.map((e) => e[0]), ['subscribed', 'message']);
    assert.deepEqual(log[0][1], { channel: 'a:1', offset: 10, epoch: 'e', resubscribed: false });
  });

  test('after a reconnect: resubscribe with since, recovered messages once and in order', async () => {
    const c = client();
    let ws = await connected(c);
    const sub = await subscribed(c, ws, 'team:42', 0, 'E');
    const { got, subs } = listen(sub, (m) => m.data);
    msg(ws, 'team:42', 1, 'a');
    msg(ws, 'team:42', 2, 'b');
    ws.drop(1001, 'shutting down');
    assert.equal(sub.state, 'subscribing');
    await until(() => FakeSocket.all.length === 2, 'reconnect');
    ws = FakeSocket.last;
    ws.hello();
    const f = ws.lastOp('subscribe');
    assert.deepEqual(f.since, { offset: 2, epoch: 'E' });
    ws.push({ op: 'subscribed', id: f.id, channel: 'team:42', offset: 5, epoch: 'E', recovered: true });
    for (const [o, d] of [[2, 'b'], [3, 'c'], [4, 'd'], [5, 'e'], [4, 'd']]) msg(ws, 'team:42', o, d);
    msg(ws, 'team:42', 6, 'f');
    assert.deepEqual(got, ['a', 'b', 'c', 'd', 'e', 'f']);
    assert.deepEqual(subs, [{ channel: 'team:42', offset: 5, epoch: 'E', resubscribed: true, recovered: true }]);
  });

  for (const gap of ['history_truncated', 'epoch_changed', 'offset_ahead']) {
    test(`a gap the server cannot fill is reported: ${gap}`, async () => {
      const c = client();
      let ws = await connected(c);
      const sub = await subscribed(c, ws, 'a:1', 10, 'E');
      const { got, subs } = listen(sub, (m) => m.offset);
      ws.drop(1006);
      await until(() => FakeSocket.all.length === 2, 'reconnect');
      ws = FakeSocket.last;
      ws.hello();
      const f = ws.lastOp('subscribe');
      const epoch = gap === 'epoch_changed' ? 'F' : 'E';
      ws.push({ op: 'subscribed', id: f.id, channel: 'a:1', offset: 300, epoch, recovered: false, gap });
      if (gap === 'history_truncated') msg(ws, 'a:1', 45);
      msg(ws, 'a:1', 301);
      assert.equal(subs[0].recovered, false);
      assert.equal(subs[0].gap, gap);
      assert.deepEqual(got, gap === 'history_truncated' ? [45, 301] : [301]);
      assert.equal(sub.epoch, epoch);
    });
  }

  test('subscribe with a saved position sends since on the first subscribe', async () => {
    const c = client();
    const ws = await connected(c);
    c.subscribe('a:1', { since: { offset: 4, epoch: 'E' } });
    assert.deepEqual(ws.lastOp('subscribe').since, { offset: 4, epoch: 'E' });
  });

  test('a stale subscribed answer from an earlier connection is ignored', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = c.subscribe('a:1');
    const old = ws.lastOp('subscribe');
    ws.drop(1001);
    ws.push({ op: 'subscribed', id: old.id, channel: 'a:1', offset: 99, epoch: 'X' }); // detached: ignored
    assert.equal(sub.state, 'subscribing');
    await until(() => FakeSocket.all.length === 2, 'reconnect');
    FakeSocket.last.hello();
    assert.ok(FakeSocket.last.lastOp('subscribe'));
  });

  test('join, leave and epoch_changed (DESIGN.md ops)', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = await subscribed(c, ws, 'chat:1', 5, 'E');
    const log = record(sub, ['join', 'leave', 'subscribed', 'message']);
    ws.push({ op: 'join', channel: 'chat:1', user: 'bob', connection_id: 'x-n1' });
    ws.push({ op: 'leave', channel: 'chat:1', user: 'bob', connection_id: 'x-n1' });
    ws.push({ op: 'epoch_changed', channel: 'chat:1', epoch: 'F', offset: 0 });
    msg(ws, 'chat:1', 1);
    assert.deepEqual(log, [
      ['join', { channel: 'chat:1', user: 'bob', connectionId: 'x-n1' }],
      ['leave', { channel: 'chat:1', user: 'bob', connectionId: 'x-n1' }],
      ['subscribed', { channel: 'chat:1', offset: 0, epoch: 'F', resubscribed: true, recovered: false, gap: 'epoch_changed' }],
      ['message', { channel: 'chat:1', offset: 1, data: 1 }],
    ]);
  });

  test('gap: publications the server lost are reported, and the stream goes on after them', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = await subscribed(c, ws, 'chat:1', 5, 'E');
    const log = record(sub, ['subscribed', 'message']);
    msg(ws, 'chat:1', 6);
    ws.push({ op: 'gap', channel: 'chat:1', epoch: 'E', offset: 9 });
    ws.push({ op: 'gap', channel: 'chat:1', epoch: 'E', offset: 8 }); // already past: ignored
    msg(ws, 'chat:1', 10);
    assert.deepEqual(log, [
      ['message', { channel: 'chat:1', offset: 6, data: 6 }],
      ['subscribed', { channel: 'chat:1', offset: 9, epoch: 'E', resubscribed: true, recovered: false, gap: 'history_truncated' }],
      ['message', { channel: 'chat:1', offset: 10, data: 10 }],
    ]);
    assert.deepEqual(sub.position, { offset: 10, epoch: 'E' });
  });

  test('a refused subscribe: error, then unsubscribed, and forgotten', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = c.subscribe('secret:1');
    const log = record(sub, ['error', 'unsubscribed']);
    ws.push({ op: 'error', id: ws.lastOp('subscribe').id, code: 'forbidden', message: 'token does not grant channel' });
    assert.deepEqual(log.map((e) => e[0]), ['error', 'unsubscribed']);
    assert.equal(log[0][1].code, 'forbidden');
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(c.getSubscription('secret:1'), undefined);
  });

  test('an unavailable broker: the subscribe is retried', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = c.subscribe('a:1');
    ws.push({ op: 'error', id: ws.lastOp('subscribe').id, code: 'unavailable', message: 'redis down' });
    assert.equal(sub.state, 'subscribing');
    await until(() => ws.ops().filter((o) => o === 'subscribe').length === 2, 'a retry');
    ws.push({ op: 'subscribed', id: ws.lastOp('subscribe').id, channel: 'a:1', offset: 0, epoch: 'E' });
    assert.equal(sub.state, 'subscribed');
  });

  test('unsubscribe sends unsubscribe; nothing is delivered after it', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = await subscribed(c, ws, 'a:1');
    const log = record(sub, ['unsubscribed', 'message']);
    sub.unsubscribe();
    assert.equal(ws.lastOp('unsubscribe').channel, 'a:1');
    msg(ws, 'a:1', 1);
    assert.deepEqual(log, [['unsubscribed', { channel: 'a:1', reason: 'unsubscribe' }]]);
    assert.notEqual(c.subscribe('a:1'), sub, 'a new subscription');
  });

  test('disconnect() then connect(): subscriptions come back with since', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = await subscribed(c, ws, 'a:1', 0, 'E');
    msg(ws, 'a:1', 1);
    c.disconnect();
    c.connect();
    FakeSocket.last.hello();
    assert.deepEqual(FakeSocket.last.lastOp('subscribe').since, { offset: 1, epoch: 'E' });
    assert.equal(sub.state, 'subscribing');
  });

  test('sub.publish and sub.presence go to the channel', async () => {
    const c = client();
    const ws = await connected(c);
    const sub = await subscribed(c, ws, 'a:1');
    const p = sub.publish('hi');
    ws.push({ op: 'published', id: ws.lastOp('publish').id, channel: 'a:1', offset: 1 });
    assert.equal((await p).offset, 1);
    const q = sub.presence();
    assert.equal(ws.lastOp('presence').channel, 'a:1');
    ws.push({ op: 'presence', id: ws.lastOp('presence').id, channel: 'a:1', users: [], connections: 0 });
    await q;
  });
});
