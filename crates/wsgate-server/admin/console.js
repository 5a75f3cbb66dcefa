// The wsgate admin console: plain JavaScript, no build step, no dependencies.
// Every figure comes from the public control API of the node that serves this page, called
// from the same origin with the API key as a Bearer token. The key is kept in this tab's
// sessionStorage (gone when the tab closes) and never put into a URL. Untrusted strings
// (user ids, channel names, errors) are only ever set as textContent.
'use strict';

(() => {
  const STORE = 'wsgate.apiKey';
  const PAGE = 25; // rows per page of the connections table
  const REFRESH_MS = 2000; // tables and the debug view
  const METRICS_MS = 5000; // one chart sample
  const WINDOW_MS = 15 * 60 * 1000; // the charts' span
  const MAX_SCAN = 10; // pages of 1000 connections read to list channels

  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(STORE); // null: logged out ('' is a node without a key)
  let tab = 'connections';
  let timers = [];
  const conn = { kind: '', by: 'user', q: '', offset: 0, total: 0, debugId: null };
  let presenceChannel = null;
  const samples = []; // {t, m: Map(name → value)}

  // ---- helpers -------------------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes). */
  function h(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = {};
    if (key) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
    const json = await r.json().catch(() => null);
    if (!r.ok || !json || json.success === false) {
      throw new ApiError(r.status, (json && json.error) || `${r.status} ${r.statusText}`);
    }
    return json;
  }

  const enc = encodeURIComponent;
  function duration(ms) {
    if (ms === null || ms === undefined) return '–';
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
  function status(text, isError = false) {
    $('status').textContent = text;
    $('status').className = isError ? 'error' : 'muted';
  }
  /** Runs a refresh; a refused key logs out, other failures show in the status line. */
  async function guarded(fn) {
    try {
      await fn();
      status(`updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) logout('The API key was refused.');
      else status(String(e.message || e), true);
    }
  }

  // ---- login ---------------------------------------------------------------------------

  async function login(candidate) {
    const previous = key;
    key = candidate;
    try {
      await api('GET', '/connections?limit=1');
    } catch (e) {
      key = previous;
      $('login-error').textContent =
        e instanceof ApiError && e.status === 401 ? 'Wrong API key.' : `Cannot reach the node: ${e.message}`;
      return;
    }
    sessionStorage.setItem(STORE, candidate);
    $('key').value = '';
    $('login-error').textContent = '';
    start();
  }

  function logout(reason = '') {
    key = null;
    sessionStorage.removeItem(STORE);
    for (const t of timers) clearInterval(t);
    timers = [];
    samples.length = 0;
    $('login').hidden = false;
    $('tabs').hidden = true;
    $('who').hidden = true;
    for (const s of document.querySelectorAll('.tab')) s.hidden = true;
    $('login-error').textContent = reason;
    status('');
  }

  function start() {
    $('login').hidden = true;
    $('tabs').hidden = false;
    $('who').hidden = false;
    show(tab);
    api('GET', '/version')
      .then((v) => ($('node').textContent = `${v.node} · ${v.name} ${v.version}`))
      .catch(() => {});
    const tick = () => guarded(refreshTab);
    tick();
    timers.push(setInterval(tick, REFRESH_MS));
    const sample = () => guarded(sampleMetrics);
    sample();
    timers.push(setInterval(sample, METRICS_MS));
  }

  function show(name) {
    tab = name;
    for (const s of document.querySelectorAll('.tab')) s.hidden = s.id !== name;
    for (const b of $('tabs').querySelectorAll('button')) b.classList.toggle('active', b.dataset.tab === name);
  }

  function refreshTab() {
    switch (tab) {
      case 'connections':
        return refreshConnections();
      case 'channels':
        return refreshChannels();
      case 'upstreams':
        return refreshUpstreams();
      default:
        drawCharts();
    }
  }

  // ---- connections ---------------------------------------------------------------------

  async function refreshConnections() {
    let rows;
    if (conn.by === 'id' && conn.q) {
      try {
        rows = [(await api('GET', `/connections/${enc(conn.q)}`)).connection];
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) throw e;
        rows = [];
      }
      conn.total = rows.length;
    } else {
      const q = new URLSearchParams({ offset: String(conn.offset), limit: String(PAGE) });
      if (conn.kind) q.set('kind', conn.kind);
      if (conn.q) q.set(conn.by, conn.q);
      const page = await api('GET', `/connections?${q}`);
      rows = page.connections;
      conn.total = page.total;
      if (rows.length === 0 && conn.offset > 0) {
        conn.offset = Math.max(0, conn.offset - PAGE); // the last page emptied: step back
        return refreshConnections();
      }
    }
    if (conn.kind) rows = rows.filter((c) => c.kind === conn.kind);
    $('conn-rows').replaceChildren(...rows.map(connectionRow));
    if (rows.length === 0) $('conn-rows').append(h('tr', {}, h('td', { colSpan: 11, class: 'muted' }, 'No connections.')));
    $('conn-total').textContent = `${conn.total} connection${conn.total === 1 ? '' : 's'}`;
    $('conn-page').textContent = rows.length ? `${conn.offset + 1}–${conn.offset + rows.length}` : '';
    $('conn-prev').disabled = conn.offset === 0;
    $('conn-next').disabled = conn.offset + rows.length >= conn.total;
    if (conn.debugId) await refreshDebug();
  }

  function connectionRow(c) {
    const up = c.kind === 'upstream';
    const uptime = up ? (c.connected_since ? Date.now() - c.connected_since : null) : c.uptime_ms;
    const actions = h(
      'td',
      { class: 'actions' },
      h('button', { type: 'button', 'data-action': 'debug' }, 'Debug'),
      h('button', { type: 'button', 'data-action': 'send' }, 'Send'),
      h('button', { type: 'button', 'data-action': 'disconnect', class: 'danger' }, 'Disconnect'),
    );
    const tr = h(
      'tr',
      { 'data-conn-id': c.id, 'data-kind': c.kind },
      h('td', { class: 'mono' }, c.id),
      h('td', {}, c.kind),
      h('td', { class: up ? 'mono' : '' }, up ? c.url : c.user),
      h('td', {}, up ? c.subscriptions.join(', ') : c.channels.join(', ')),
      h('td', { class: `state state-${c.state}` }, c.state),
      h('td', {}, duration(uptime)),
      h('td', { class: 'num' }, String(c.messages_received)),
      h('td', { class: 'num' }, String(c.messages_sent)),
      h('td', { class: 'num' }, String(up ? c.outbox_len : c.queue_depth)),
      h('td', {}, c.node),
      actions,
    );
    return tr;
  }

  async function refreshDebug() {
    $('debug').hidden = false;
    $('debug-id').textContent = conn.debugId;
    try {
      const { connection } = await api('GET', `/connections/${enc(conn.debugId)}`);
      $('debug-body').textContent = JSON.stringify(connection, null, 2);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      $('debug-body').textContent = 'This connection is gone.';
    }
  }

  function onConnectionAction(ev) {
    const button = ev.target.closest('button[data-action]');
    const row = button && button.closest('tr[data-conn-id]');
    if (!row) return;
    const id = row.dataset.connId;
    const upstream = row.dataset.kind === 'upstream';
    const base = upstream ? `/api/v1/upstreams/${enc(id)}` : `/api/v1/connections/${enc(id)}`;
    switch (button.dataset.action) {
      case 'debug':
        conn.debugId = id;
        guarded(refreshDebug);
        break;
      case 'send':
        ask({
          title: `Send to ${id}`,
          text: upstream
            ? 'Sent to the upstream server as one text frame.'
            : 'Delivered to this connection as {"op":"message","data":…}.',
          label: upstream ? 'Message (text)' : 'Data (JSON)',
          value: upstream ? '' : '{"text": "hello from the console"}',
          ok: 'Send',
          act: (v) => (upstream ? api('POST', `${base}/send`, { message: v }) : api('POST', `${base}/send`, { data: JSON.parse(v) })),
        });
        break;
      case 'disconnect':
        ask({
          title: `Disconnect ${id}?`,
          text: upstream
            ? 'Closes the upstream connection and forgets it (DELETE /api/v1/upstreams/{id}).'
            : 'The client is closed with code 4003 and the reason below (it does not reconnect).',
          label: upstream ? null : 'Reason',
          value: 'closed by the admin console',
          ok: 'Disconnect',
          act: (v) => api('DELETE', upstream ? base : `${base}?reason=${enc(v)}`),
        });
        break;
    }
  }

  // ---- the dialog (an in-page <dialog>, not confirm()/prompt()) -------------------------

  let pending = null;
  function ask({ title, text, label, value, ok, act }) {
    $('dialog-title').textContent = title;
    $('dialog-text').textContent = text;
    $('dialog-label').hidden = label === null;
    $('dialog-label-text').textContent = label || '';
    $('dialog-input').value = value;
    $('dialog-ok').textContent = ok;
    $('dialog-error').textContent = '';
    pending = act;
    $('dialog').showModal();
  }
  async function onDialogSubmit(ev) {
    ev.preventDefault();
    try {
      await pending($('dialog-input').value);
    } catch (e) {
      $('dialog-error').textContent = String(e.message || e);
      return;
    }
    $('dialog').close();
    guarded(refreshTab);
  }

  // ---- channels ------------------------------------------------------------------------

  async function refreshChannels() {
    const counts = new Map();
    let offset = 0;
    for (let i = 0; i < MAX_SCAN && offset !== null; i++) {
      // Every client connection (/ws and Socket.IO); upstream connections have no channels.
      const page = await api('GET', `/connections?limit=1000&offset=${offset}`);
      for (const c of page.connections) for (const ch of c.channels || []) counts.set(ch, (counts.get(ch) || 0) + 1);
      offset = page.next_offset;
    }
    const sorted = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    $('chan-rows').replaceChildren(
      ...sorted.map(([ch, n]) =>
        h(
          'tr',
          { 'data-channel': ch },
          h('td', { class: 'mono' }, ch),
          h('td', { class: 'num' }, String(n)),
          h('td', { class: 'actions' }, h('button', { type: 'button', 'data-action': 'presence' }, 'Presence')),
        ),
      ),
    );
    if (sorted.length === 0) $('chan-rows').append(h('tr', {}, h('td', { colSpan: 3, class: 'muted' }, 'No subscriptions on this node.')));
    if (presenceChannel) await refreshPresence();
  }

  async function refreshPresence() {
    const p = await api('GET', `/api/v1/channels/${enc(presenceChannel)}/presence`);
    $('presence').hidden = false;
    $('presence-ch').textContent = p.channel;
    $('presence-summary').textContent = `${p.users.length} user${p.users.length === 1 ? '' : 's'}, ${p.connections} connection${p.connections === 1 ? '' : 's'} (cluster-wide)`;
    $('presence-users').replaceChildren(...p.users.map((u) => h('li', { class: 'mono' }, u)));
  }

  // ---- upstreams -----------------------------------------------------------------------

  async function refreshUpstreams() {
    const { upstreams } = await api('GET', '/api/v1/upstreams');
    $('up-rows').replaceChildren(
      ...upstreams.map((u) =>
        h(
          'tr',
          { 'data-conn-id': u.id },
          h('td', { class: 'mono' }, u.id),
          h('td', { class: 'mono' }, u.url),
          h('td', { class: `state state-${u.state}` }, u.state),
          h('td', {}, u.breaker),
          h('td', { class: 'num' }, String(u.reconnects)),
          h('td', { class: 'num' }, `${u.attempts} (${u.total_attempts} total)`),
          h('td', { class: 'error' }, u.last_error || ''),
          h('td', {}, u.node),
          h(
            'td',
            { class: 'actions' },
            h('button', { type: 'button', 'data-action': 'reconnect', title: 'POST /api/v1/upstreams/{id}/reconnect: same id, subscriptions and auth, fresh backoff' }, 'Reconnect'),
          ),
        ),
      ),
    );
    if (upstreams.length === 0) $('up-rows').append(h('tr', {}, h('td', { colSpan: 9, class: 'muted' }, 'No upstream connections on this node.')));
  }

  // ---- metrics and charts --------------------------------------------------------------

  /** Sums every sample of each metric over its labels: name → value. */
  function parseMetrics(text) {
    const sums = new Map();
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([a-zA-Z_:][\w:]*)(?:\{.*\})?\s+(\S+)/.exec(line);
      const v = m && Number(m[2]);
      if (m && Number.isFinite(v)) sums.set(m[1], (sums.get(m[1]) || 0) + v);
    }
    return sums;
  }

  async function sampleMetrics() {
    const r = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
    if (!r.ok) throw new Error(`/metrics: ${r.status}`);
    const t = Date.now();
    samples.push({ t, m: parseMetrics(await r.text()) });
    while (samples.length && samples[0].t < t - WINDOW_MS) samples.shift();
    if (tab === 'charts') drawCharts();
  }

  const gauge = (name) => samples.map((s) => [s.t, s.m.get(name) || 0]);
  /** Per-second rate of a counter between consecutive samples (a reset counts as 0). */
  const rate = (name) =>
    samples.slice(1).map((s, i) => {
      const prev = samples[i];
      const d = (s.m.get(name) || 0) - (prev.m.get(name) || 0);
      return [s.t, Math.max(0, d) / ((s.t - prev.t) / 1000)];
    });

  // Messages out counts frames written to client sockets (every fan-out copy); deliveries
  // count publications, each delivered once per node to all its local subscribers.
  const CHARTS = [
    { title: 'Connections', lines: [['gateway', () => gauge('websocket_active_connections')], ['upstream', () => gauge('wsgate_upstream_connections')]] },
    { title: 'Messages in / s', lines: [['from clients', () => rate('websocket_messages_received_total')], ['from upstreams', () => rate('wsgate_upstream_messages_received_total')]] },
    { title: 'Messages out / s', lines: [['to client sockets', () => rate('websocket_messages_sent_total')]] },
    { title: 'Deliveries / s', lines: [['publications delivered here', () => rate('websocket_delivery_latency_seconds_count')], ['publications accepted', () => rate('wsgate_publications_total')]] },
  ];

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
    return v >= 10 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
  }

  const ago = (ms) => (ms >= 60_000 ? `${Math.round(ms / 60_000)}m` : `${Math.round(ms / 1000)}s`);

  function drawCharts() {
    const W = 420, H = 160, L = 44, R = 8, T = 10, B = 22;
    const now = Date.now();
    // Up to 15 minutes: the span grows from the first sample (at least one minute).
    const span = Math.min(WINDOW_MS, Math.max(60_000, samples.length ? now - samples[0].t : 0));
    const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
    $('chart-grid').replaceChildren(
      ...CHARTS.map((c) => {
        const lines = c.lines.map(([label, f]) => [label, f()]);
        const max = Math.max(1, ...lines.flatMap(([, pts]) => pts.map((p) => p[1])));
        const y = (v) => H - B - (v / max) * (H - T - B);
        const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': c.title });
        for (const f of [0, 0.5, 1]) {
          g.append(svg('line', { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: 'grid' }));
          g.append(svg('text', { x: L - 4, y: y(max * f) + 4, class: 'tick', 'text-anchor': 'end' }, fmt(max * f)));
        }
        for (const [t, label] of [[now - span, `-${ago(span)}`], [now - span / 2, `-${ago(span / 2)}`], [now, 'now']]) {
          g.append(svg('text', { x: x(t), y: H - 6, class: 'tick', 'text-anchor': t === now ? 'end' : t === now - span ? 'start' : 'middle' }, label));
        }
        lines.forEach(([, pts], i) => {
          if (pts.length === 1) g.append(svg('circle', { cx: x(pts[0][0]), cy: y(pts[0][1]), r: 2, class: `dot s${i}` }));
          if (pts.length) g.append(svg('polyline', { points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '), class: `line s${i}` }));
        });
        const legend = h('p', { class: 'legend' }, ...lines.map(([label, pts], i) => h('span', { class: `s${i}` }, `${label}: ${pts.length ? fmt(pts[pts.length - 1][1]) : '–'}`)));
        return h('figure', { class: 'card' }, h('figcaption', {}, c.title), g, legend);
      }),
    );
  }

  // ---- wiring --------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      login($('key').value);
    });
    $('logout').addEventListener('click', () => logout());
    $('tabs').addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-tab]');
      if (b) {
        show(b.dataset.tab);
        guarded(refreshTab);
      }
    });
    $('conn-search').addEventListener('submit', (ev) => {
      ev.preventDefault();
      conn.kind = $('conn-kind').value;
      conn.by = $('conn-by').value;
      conn.q = $('conn-q').value.trim();
      conn.offset = 0;
      guarded(refreshConnections);
    });
    $('conn-kind').addEventListener('change', () => $('conn-search').requestSubmit());
    $('conn-prev').addEventListener('click', () => {
      conn.offset = Math.max(0, conn.offset - PAGE);
      guarded(refreshConnections);
    });
    $('conn-next').addEventListener('click', () => {
      conn.offset += PAGE;
      guarded(refreshConnections);
    });
    $('conn-rows').addEventListener('click', onConnectionAction);
    $('debug-close').addEventListener('click', () => {
      conn.debugId = null;
      $('debug').hidden = true;
    });
    $('chan-rows').addEventListener('click', (ev) => {
      const row = ev.target.closest('button[data-action="presence"]') && ev.target.closest('tr[data-channel]');
      if (row) {
        presenceChannel = row.dataset.channel;
        guarded(refreshPresence);
      }
    });
    $('up-rows').addEventListener('click', (ev) => {
      const row = ev.target.closest('button[data-action="reconnect"]') && ev.target.closest('tr[data-conn-id]');
      if (row) {
        const id = row.dataset.connId;
        ask({
          title: `Reconnect ${id}?`,
          text: 'Closes the connection and opens it again with the same id, subscriptions and login (a failed connection is restarted).',
          label: null,
          value: '',
          ok: 'Reconnect',
          act: () => api('POST', `/api/v1/upstreams/${enc(id)}/reconnect`, {}),
        });
      }
    });
    $('dialog-form').addEventListener('submit', onDialogSubmit);
    $('dialog-cancel').addEventListener('click', () => $('dialog').close());
    if (key === null) logout();
    else start();
  });
})();
