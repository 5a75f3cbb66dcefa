// End-to-end: the SDK over the Socket.IO edge (`socketIoTransport(io)` with the real
// socket.io-client 4) against real `wsgate serve` nodes: the shared scenarios (scenarios.mjs,
// the same API and recovery as over /ws), and what differs or only this edge has.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { io } from 'socket.io-client';
import { CLOSE_TOKEN_REFRESH, socketIoTransport } from '../../dist/esm/socketio.js';
import { hs256, until } from './harness.mjs';
import { scenarios } from './scenarios.mjs';

const transport = (sio = {}) => socketIoTransport(io, { timeout: 5000, ...sio });

scenarios(
  { name: 'Socket.IO', url: (node) => node.http, options: { transport: transport() }, refused: /unauthorized/ },
  {
    cluster({ subscribed }, n) {
      test('WebSocket only: SIGKILL, publish through the other node, restart: recovered', async () => {
        const { a, b } = n;
        const { got } = await subscribed(a, 'room:ws-only', { transport: transport({ transports: ['websocket'] }) });
        await b.publish('room:ws-only', 1);
        await until(() => got.messages.length === 1, 'message 1');
        await a.kill();
        await b.publish('room:ws-only', 2);
        await a.start();
        await until(() => got.messages.length === 2, 'message 2 recovered', 15_000);
        assert.deepEqual(got.messages.map((m) => m.data), [1, 2]);
        assert.equal(got.subscribed[1].recovered, true);
      });
    },
    solo({ watch, subscribed }, n) {
      test('ping is not available over Socket.IO: a clear error, the connection stays', async () => {
        const { c } = watch(n.solo);
        c.connect();
        await until(() => c.state === 'connected', 'connected');
        await assert.rejects(c.ping(), (e) => e.code === 'unsupported' && /Socket\.IO/.test(e.message));
        assert.equal(c.state, 'connected');
      });

      test('polling only: subscribe, publish, recovery after a disconnect', async () => {
        const { c, sub, got } = await subscribed(n.solo, 'chat:polling', { transport: transport({ transports: ['polling'] }) });
        await sub.publish(1);
        await until(() => got.messages.length === 1, 'message 1');
        c.disconnect();
        await n.solo.publish('chat:polling', 2);
        c.connect();
        await until(() => got.messages.length === 2, 'message 2 recovered');
        assert.equal(got.subscribed[1].recovered, true);
        assert.deepEqual(got.messages.map((m) => m.data), [1, 2]);
      });

      test('unsubscribe stops the channel\'s messages', async () => {
        const { c, sub, got } = await subscribed(n.solo, 'chat:unsub');
        const other = await subscribed(n.solo, 'chat:unsub'); // sees the presence
        await n.solo.publish('chat:unsub', 1);
        await until(() => got.messages.length === 1, 'message 1');
        sub.unsubscribe();
        assert.equal(sub.state, 'unsubscribed');
        await until(async () => (await other.c.presence('chat:unsub')).connections === 1, 'the unsubscribe');
        await n.solo.publish('chat:unsub', 2);
        await until(() => other.got.messages.length === 2, 'message 2 (to the other client)');
        const after = c.subscribe('chat:after'); // its answer comes after message 2 would have
        await until(() => after.state === 'subscribed', 'another subscription');
        assert.equal(got.messages.length, 1);
      });

      test('named events and server-side subscriptions', async () => {
        const { c, of, events } = watch(n.solo);
        const serverSubs = [];
        const pubs = [];
        c.on('serverSubscribed', (s) => serverSubs.push(s));
        c.on('publication', (p) => pubs.push(p));
        c.connect();
        await until(() => c.state === 'connected', 'connected');
        c.subscribe('chat:2');
        await until(() => c.getSubscription('chat:2').state === 'subscribed', 'subscribed');
        let r = await n.solo.api('POST', '/api/v1/publish', { channel: 'chat:2', data: { n: 2 }, event: 'score' });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        await until(() => of('event').length === 1, 'the named event');
        assert.deepEqual(of('event'), [{ event: 'score', data: { n: 2 } }]);
        r = await n.solo.api('POST', `/api/v1/users/${encodeURIComponent(c.user)}/subscribe`, { channel: 'feed:1' });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        await until(() => serverSubs.length === 1, 'the server-side subscription');
        assert.equal(serverSubs[0].channel, 'feed:1');
        await n.solo.publish('feed:1', 'pushed');
        await until(() => pubs.length === 1, 'its publication');
        assert.deepEqual(pubs[0], { channel: 'feed:1', offset: serverSubs[0].offset + 1, data: 'pushed' });
        assert.equal(of('error').length, 0, JSON.stringify(events));
      });
    },
    jwt({ watch, subscribed }, n) {
      test('a bad token is an error `unauthorized` (WsgateError) before the 4001', async () => {
        const { c, of } = watch(n.jwt, { token: 'not-a-jwt' });
        c.connect();
        await until(() => of('disconnected').length === 1, 'the refusal');
        assert.equal(of('error')[0].name, 'WsgateError');
        assert.equal(of('error')[0].code, 'unauthorized');
      });

      test('token refresh reconnects with the fresh token; the subscription resumes with since', async () => {
        const now = Math.floor(Date.now() / 1000);
        const first = hs256(n.secret, { sub: 'bob', exp: now + 3600 });
        const fresh = hs256(n.secret, { sub: 'bob', exp: now + 7200 });
        let calls = 0;
        // Refreshed within a second: refreshBefore is the token's life less at most 1 s.
        const opts = { token: first, getToken: () => (calls++, fresh), refreshBefore: 3600_000 - 1000 };
        const { c, of, disconnects, sub, got } = await subscribed(n.jwt, 'chat:refresh', opts);
        const before = c.connectionId;
        await n.jwt.publish('chat:refresh', 1);
        await until(() => of('refreshed').length === 1, 'the refresh', 5000);
        assert.equal(of('refreshed')[0].token, fresh);
        await until(() => got.subscribed.length === 2, 'the resubscription on the new connection');
        assert.equal(disconnects()[0].code, CLOSE_TOKEN_REFRESH);
        assert.equal(disconnects()[0].reconnect, true);
        assert.notEqual(c.connectionId, before);
        assert.equal(got.subscribed[1].recovered, true);
        await n.jwt.publish('chat:refresh', 2);
        await until(() => got.messages.length === 2, 'both messages');
        assert.deepEqual(got.messages.map((m) => m.data), [1, 2]);
        assert.equal(calls, 1);
        assert.equal(sub.state, 'subscribed');
      });
    },
  },
);
