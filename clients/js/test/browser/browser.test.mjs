// The recovery scenario in headless Chromium (Debian's `chromium`, driven by playwright-core;
// no browser download). A small static server in this process serves the bundle and the
// pages; the nodes run with --allow-any-origin (the page's origin differs from theirs).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { Node, Redis, requireBinary, until } from '../e2e/harness.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript' };
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

function serveStatic() {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(ROOT, path);
    if (!file.startsWith(ROOT) || !existsSync(file) || !(path.startsWith('/dist/') || path.startsWith('/examples/') || path.startsWith('/test/browser/') || path.startsWith('/node_modules/socket.io-client/dist/'))) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream' }).end(readFileSync(file));
  });
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r(server)));
}

describe('headless Chromium', () => {
  let redis, a, b, web, ctx, profile;
  before(async () => {
    requireBinary();
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: apt-get install chromium`);
    redis = await Redis.start();
    [a, b, web] = await Promise.all([Node.start({ redis, name: 'a' }), Node.start({ redis, name: 'b' }), serveStatic()]);
    profile = mkdtempSync(join(tmpdir(), 'wsgate-sdk-chromium-'));
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    });
  });
  after(async () => {
    await ctx?.close();
    web?.close();
    await a?.stop();
    await b?.stop();
    await redis?.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });
  const origin = () => `http://127.0.0.1:${web.address().port}`;

  // Over /ws (the browser's WebSocket), and over the Socket.IO edge (socket.io-client's browser
  // bundle with the SDK's Socket.IO transport).
  for (const via of ['/ws', 'Socket.IO']) {
    test(`${via}: SIGKILL the page's node, publish through the other, restart: every message once, in order`, async () => {
      const room = via === '/ws' ? 'room:browser' : 'room:browser-sio';
      const page = await ctx.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e));
      await page.goto(`${origin()}/test/browser/page.html`);
      const read = () => page.evaluate(() => ({ got: window.got, subs: window.subs, events: window.events }));
      const sio = via === 'Socket.IO';
      await page.evaluate(([url, room, sio]) => window.start(url, room, sio), [sio ? a.http : a.ws, room, sio]);
      await until(async () => (await read()).subs.length === 1, 'subscribed in the page');
      for (const i of range(1, 5)) await b.publish(room, { i });
      await until(async () => (await read()).got.length === 5, 'the first 5 messages');

      await a.kill();
      await until(async () => (await read()).events.some((e) => e[0] === 'disconnected'), 'the page to notice');
      for (const i of range(6, 15)) await b.publish(room, { i });
      await a.start();
      await until(async () => (await read()).subs.length === 2, 'the resubscription', 20_000);
      for (const i of range(16, 20)) await b.publish(room, { i });
      await until(async () => (await read()).got.length >= 20, 'all 20 messages', 15_000);
      await new Promise((r) => setTimeout(r, 200));

      const { got, subs } = await read();
      assert.deepEqual(got.map((m) => m.data.i), range(1, 20), 'once each, in order');
      assert.deepEqual(got.map((m) => m.offset), range(1, 20));
      assert.equal(subs[1].resubscribed, true);
      assert.equal(subs[1].recovered, true);
      assert.deepEqual(errors, []);
      await page.close();
    });
  }

  for (const from of ['http', 'file']) {
    test(`examples/chat.html (${from}://): connect, send, see the message and who is here`, async () => {
      const page = await ctx.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e));
      await page.goto(from === 'http' ? `${origin()}/examples/chat.html` : `file://${ROOT}examples/chat.html`);
      const channel = `chat:demo-${from}`;
      await page.fill('#url', b.ws);
      await page.fill('#channel', channel);
      await page.click('#go');
      await page.waitForFunction(() => document.getElementById('state').textContent === 'connected');
      await page.waitForFunction((ch) => document.getElementById('log').textContent.includes(`joined ${ch}`), channel);
      await page.fill('#name', 'ann');
      await page.fill('#text', 'hello from chromium');
      await page.click('#send button');
      await page.waitForFunction(() => document.getElementById('log').textContent.includes('ann: hello from chromium'));
      await b.publish(channel, { name: 'api', text: 'hi ann' });
      await page.waitForFunction(() => document.getElementById('log').textContent.includes('api: hi ann'));
      await page.click('#who');
      await page.waitForFunction(() => /here: .+\(1 connections\)/.test(document.getElementById('log').textContent));
      assert.deepEqual(errors, []);
      await page.close();
    });
  }
});
