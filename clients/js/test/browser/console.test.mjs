// The admin console (`/admin`, served by wsgate itself) in headless Chromium: log in with the
// API key, see the connections the test opened, use the debug view, send, channels, presence,
// upstreams and charts, kick a connection and see it gone. Takes the README's screenshots
// (docs/img/console.png and docs/img/console-charts.png).
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { Wsgate } from '../../dist/esm/index.js';
import { Node, hs256, requireBinary, sleep, until } from '../e2e/harness.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const IMG = fileURLToPath(new URL('../../../../docs/img/', import.meta.url));
const API_KEY = 'console-test-key';
const SECRET = 'console-test-secret';
const token = (sub) => hs256(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + 3600 });

describe('admin console in headless Chromium', () => {
  let n, ctx, profile, clients, traffic;
  const api = async (method, path, body) => {
    const r = await fetch(`${n.http}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: r.status, body: await r.json() };
  };

  /** An SDK client as `user`, subscribed to `channels`, recording what it gets. */
  async function client(user, channels) {
    const c = new Wsgate(n.ws, { WebSocket, token: token(user), minReconnectDelay: 100 });
    const got = { messages: [], closes: [] };
    c.on('message', (m) => got.messages.push(m.data));
    c.on('disconnected', (d) => got.closes.push(d));
    const subs = channels.map((ch) => c.subscribe(ch));
    let subscribed = 0;
    for (const s of subs) s.on('subscribed', () => subscribed++);
    c.connect();
    await until(() => c.state === 'connected' && subscribed === channels.length, `${user} connected and subscribed`);
    return { c, got };
  }

  before(async () => {
    requireBinary();
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: apt-get install chromium`);
    n = await Node.start({ name: 'console-1', env: { WSGATE_API_KEY: API_KEY, WSGATE_AUTH__MODE: 'jwt', WSGATE_AUTH__JWT_SECRET: SECRET } });
    clients = {
      ann: await client('ann', ['room:lobby', 'room:ops']),
      bob: await client('bob', ['room:lobby']),
      carol: await client('carol', ['room:support']),
    };
    // One upstream that connects (to this node, as a user) and one that cannot.
    let r = await api('POST', '/api/v1/upstreams', {
      url: `${n.ws}?token=${token('feed-bridge')}`,
      subscriptions: [{ key: 'room:lobby', message: { op: 'subscribe', channel: 'room:lobby' } }],
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    r = await api('POST', '/api/v1/upstreams', { url: 'ws://127.0.0.1:9/feed', wait_ms: 0, reconnect: { initial_ms: 200, max_ms: 1000 } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    // Some traffic for the charts.
    let i = 0;
    traffic = setInterval(() => api('POST', '/api/v1/publish', { channel: 'room:lobby', data: { i: i++ } }).catch(() => {}), 50);
    profile = mkdtempSync(join(tmpdir(), 'wsgate-console-chromium-'));
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 720 },
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    });
  });
  after(async () => {
    clearInterval(traffic);
    for (const { c } of Object.values(clients || {})) c.disconnect();
    await ctx?.close();
    await n?.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  test('log in, see the test\'s connections, debug, send, channels, upstreams, charts, kick one and see it gone', async () => {
    const victim = clients.ann.c.connectionId;
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // Expected failures: the wrong key's 401, and the debug view's 404 once its connection is gone.
    const expected = (m) =>
      (/status of 401/.test(m.text()) && m.location().url.endsWith('/connections?limit=1')) ||
      (/status of 404/.test(m.text()) && m.location().url.endsWith(`/connections/${victim}`));
    page.on('console', (m) => m.type() === 'error' && !expected(m) && errors.push(`${m.text()} (${m.location().url})`));

    const res = await page.goto(`${n.http}/admin`);
    assert.equal(res.status(), 200);
    const headers = res.headers();
    assert.match(headers['content-security-policy'], /script-src 'self'/);
    assert.equal(headers['x-frame-options'], 'DENY');

    // A wrong key is refused and not kept.
    await page.fill('#key', 'wrong');
    await page.click('#login-form button[type=submit]');
    await page.waitForFunction(() => document.getElementById('login-error').textContent === 'Wrong API key.');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('wsgate.apiKey')), null);

    await page.fill('#key', API_KEY);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#connections:not([hidden])');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('wsgate.apiKey')), API_KEY);
    assert.ok(!page.url().includes(API_KEY), 'the key is never in the URL');

    const row = (id) => page.locator(`#conn-rows tr[data-conn-id="${id}"]`);
    await row(victim).waitFor();
    for (const { c } of Object.values(clients)) await row(c.connectionId).waitFor();
    assert.match(await row(victim).textContent(), /ann.*room:lobby, room:ops/);
    assert.equal(await page.locator('#conn-rows tr[data-kind="upstream"]').count(), 2);

    // Search by user (the API's exact filter), then back to everything.
    await page.selectOption('#conn-by', 'user');
    await page.fill('#conn-q', 'bob');
    await page.click('#conn-search button[type=submit]');
    await page.waitForFunction(() => document.getElementById('conn-total').textContent === '1 connection');
    await row(clients.bob.c.connectionId).waitFor();
    await page.fill('#conn-q', '');
    await page.click('#conn-search button[type=submit]');
    await row(victim).waitFor();

    // The debug view.
    await row(victim).locator('button[data-action=debug]').click();
    await page.waitForFunction((id) => document.getElementById('debug-body').textContent.includes(`"id": "${id}"`), victim);

    // Send a message to the connection.
    await row(victim).locator('button[data-action=send]').click();
    await page.fill('#dialog-input', '{"from": "console"}');
    await page.click('#dialog-ok');
    await until(() => clients.ann.got.messages.some((m) => m && m.from === 'console'), 'the message from the console');
    await page.waitForSelector('#dialog:not([open])', { state: 'attached' });

    // Channels with subscriber counts, and presence.
    await page.click('nav button[data-tab=channels]');
    const lobby = page.locator('#chan-rows tr[data-channel="room:lobby"]');
    await lobby.waitFor();
    await until(async () => (await lobby.locator('td.num').textContent()) === '3', 'room:lobby with 3 subscribers (ann, bob, the upstream)');
    await lobby.locator('button[data-action=presence]').click();
    await page.waitForFunction(() => /ann/.test(document.getElementById('presence-users').textContent));
    assert.match(await page.textContent('#presence-users'), /bob/);

    // Upstreams: state, last error, reconnects; Reconnect restarts one through the API.
    await page.click('nav button[data-tab=upstreams]');
    await page.waitForFunction(() => document.querySelectorAll('#up-rows tr[data-conn-id]').length === 2);
    await page.waitForFunction(() => [...document.querySelectorAll('#up-rows td.error')].some((td) => td.textContent !== ''));
    const live = page.locator('#up-rows tr[data-conn-id]:has(td.state-connected)').first();
    const liveId = await live.getAttribute('data-conn-id');
    const before = (await api('GET', `/api/v1/upstreams/${encodeURIComponent(liveId)}`)).body.upstream;
    await live.locator('button[data-action=reconnect]').click();
    await page.click('#dialog-ok');
    await until(async () => {
      const u = (await api('GET', `/api/v1/upstreams/${encodeURIComponent(liveId)}`)).body.upstream;
      // A new connection: it came up after the click (a restarted client starts its counters anew).
      return u.state === 'connected' && u.connected_since > before.connected_since;
    }, 'the upstream reconnected through the console');

    // Charts from /metrics: two samples (5 s apart) make every line.
    await page.click('nav button[data-tab=charts]');
    await page.waitForFunction(() => document.querySelectorAll('#chart-grid polyline').length >= 5, null, { timeout: 20_000 });
    await sleep(5500); // a third sample, so the picture shows a little history
    mkdirSync(IMG, { recursive: true });
    await page.screenshot({ path: join(IMG, 'console-charts.png') });

    // Back to the table; the screenshot shows the debug view of the connection about to go.
    await page.click('nav button[data-tab=connections]');
    await row(victim).waitFor();
    await page.screenshot({ path: join(IMG, 'console.png'), fullPage: true });

    // Kick it: the row goes, and the client saw 4003 with the reason.
    await row(victim).locator('button[data-action=disconnect]').click();
    await page.fill('#dialog-input', 'kicked by the console test');
    await page.click('#dialog-ok');
    await row(victim).waitFor({ state: 'detached' });
    await until(() => clients.ann.got.closes.length === 1, 'the client to see the close');
    assert.equal(clients.ann.got.closes[0].code, 4003);
    assert.equal(clients.ann.got.closes[0].reason, 'kicked by the console test');
    const list = await api('GET', `/connections?user=ann`);
    assert.equal(list.body.total, 0);
    await page.waitForFunction((id) => document.getElementById('debug-body').textContent === 'This connection is gone.', victim);
    await row(clients.bob.c.connectionId).waitFor();

    // Log out: the key leaves session storage.
    await page.click('#logout');
    await page.waitForSelector('#login:not([hidden])');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('wsgate.apiKey')), null);
    assert.deepEqual(errors, []);
    await page.close();
  });
});
