// A scripted stand-in for a WebSocket: the test plays the server.
export class FakeSocket {
  static all = [];
  static reset() {
    FakeSocket.all = [];
  }
  static get last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.sent = [];
    this.closedWith = undefined;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    const f = JSON.parse(text);
    this.sent.push(f);
    // `autoPong`: answer pings like a live server would.
    if (this.autoPong && f.op === 'ping') queueMicrotask(() => this.push({ op: 'pong', id: f.id, ts: f.ts }));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
    queueMicrotask(() => this.onclose && this.onclose({ code: code ?? 1005, reason: reason ?? '' }));
  }
  // ---- the server's side ----
  push(frame) {
    this.onmessage && this.onmessage({ data: JSON.stringify(frame) });
  }
  hello(extra = {}) {
    this.push({ op: 'hello', connection_id: `c${FakeSocket.all.length}`, node: 'n1', user: 'u1', heartbeat_ms: 30000, ...extra });
  }
  drop(code, reason = '') {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  /** The last frame the client sent with this op. */
  lastOp(op) {
    return [...this.sent].reverse().find((f) => f.op === op);
  }
  ops() {
    return this.sent.map((f) => f.op);
  }
}

export async function until(cond, what = 'condition', ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An unsigned JWT whose `exp` is `expMs` (ms since the epoch). */
export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}

/** Client options for tests: short backoff windows, a fixed jitter. */
export const quick = { minReconnectDelay: 10, maxReconnectDelay: 80, random: () => 0.5 };

/** Records every event of `emitter` as [name, arg]. */
export function record(emitter, names) {
  const log = [];
  for (const n of names) emitter.on(n, (a) => log.push([n, a]));
  return log;
}
