// End-to-end: the SDK (built dist/, Node, the `ws` package) against real `wsgate serve` nodes
// over /ws: the shared scenarios (scenarios.mjs), and what only /ws has (the client's own ping
// check, `ping()`, Node's global WebSocket).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { CLOSE_LIVENESS } from '../../dist/esm/index.js';
import { until } from './harness.mjs';
import { scenarios } from './scenarios.mjs';

const execFileP = promisify(execFile);

scenarios(
  { name: '/ws', url: (node) => node.ws, options: { WebSocket }, refused: /expired/ },
  {
    cluster({ subscribed }, n) {
      test('a node that stops answering (SIGSTOP) is given up by the ping check and recovered from', async () => {
        const { a, b } = n;
        const { disconnects, got } = await subscribed(a, 'room:frozen', {
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
      });
    },
    solo({ watch }, n) {
      test('ping: the round trip', async () => {
        const { c } = watch(n.solo);
        c.connect();
        await until(() => c.state === 'connected', 'connected');
        assert.ok((await c.ping()) >= 0);
      });

      test('Node\'s own WebSocket (no `ws`), from the CommonJS build', async () => {
        // Node 20 has a global WebSocket behind --experimental-websocket (on by default from 22).
        const flags = typeof globalThis.WebSocket === 'function' ? [] : ['--experimental-websocket'];
        const script = `
          const { Wsgate } = require(${JSON.stringify(fileURLToPath(new URL('../../dist/cjs/index.js', import.meta.url)))});
          const c = new Wsgate(${JSON.stringify(n.solo.ws)});
          const sub = c.subscribe('global:1');
          sub.on('subscribed', () => sub.publish('via global WebSocket').catch(() => {})); // its answer comes after the message
          sub.on('message', (m) => { console.log(JSON.stringify(m)); c.disconnect(); });
          c.connect();
          setTimeout(() => process.exit(3), 5000).unref();
        `;
        const { stdout } = await execFileP(process.execPath, [...flags, '--no-warnings', '-e', script]);
        assert.deepEqual(JSON.parse(stdout), { channel: 'global:1', offset: 1, data: 'via global WebSocket' });
      });
    },
  },
);
