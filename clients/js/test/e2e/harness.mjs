// Real processes for the end-to-end tests: a `redis-server` on a free loopback port and
// `wsgate serve` nodes in cluster mode on it (history in Redis survives a node's SIGKILL).
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../../../', import.meta.url));
/** The binary under test: `SDK_WSGATE_BIN`, else the workspace's debug build. */
export const WSGATE_BIN = process.env.SDK_WSGATE_BIN || `${REPO}target/debug/wsgate`;
/** The cluster key the Rust cluster tests use (32 bytes, base64). */
const CLUSTER_KEY = 'MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=';

export function requireBinary() {
  if (!existsSync(WSGATE_BIN)) throw new Error(`${WSGATE_BIN} missing: run \`cargo build -p wsgate\` (or set SDK_WSGATE_BIN)`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(cond, what, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => child.once('exit', r));
}

export class Redis {
  static async start() {
    const port = await freePort();
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], {
      stdio: 'ignore',
    });
    await until(() => canConnect(port), `redis-server on ${port}`);
    return Object.assign(new Redis(), { child, port, url: `redis://127.0.0.1:${port}` });
  }
  async stop() {
    this.child.kill('SIGKILL');
    await exited(this.child);
  }
}

/** One `wsgate serve` process. `start()` again after `kill()` reuses the same port. */
export class Node {
  constructor({ redis, name, port, env = {}, args = [] }) {
    Object.assign(this, { redis, name, port, env, args, log: '' });
  }
  static async start(opts) {
    const n = new Node({ ...opts, port: opts.port || (await freePort()) });
    await n.start();
    return n;
  }
  get http() {
    return `http://127.0.0.1:${this.port}`;
  }
  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  async start() {
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--node-id', this.name, '--allow-any-origin'];
    if (this.redis) {
      args.push('--store', 'redis', '--broker', 'redis', '--redis-url', this.redis.url, '--key-prefix', `sdk${this.redis.port}`);
    }
    this.child = spawn(WSGATE_BIN, [...args, ...this.args], {
      env: { ...inherited(), WSGATE_CLUSTER_KEY: CLUSTER_KEY, WSGATE_GRPC_ENABLED: 'false', WSGATE_LOG: 'warn', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout.on('data', (d) => (this.log += d));
    this.child.stderr.on('data', (d) => (this.log += d));
    await until(async () => {
      if (this.child.exitCode !== null) throw new Error(`wsgate ${this.name} exited: ${this.log}`);
      try {
        return (await fetch(`${this.http}/ready`)).ok;
      } catch {
        return false;
      }
    }, `wsgate ${this.name} ready on ${this.port}`, 20_000);
  }
  /** SIGKILL: no drain, no close frames; clients see their TCP connections die. */
  async kill() {
    this.child.kill('SIGKILL');
    await exited(this.child);
  }
  async stop() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) await this.kill();
  }
  async api(method, path, body) {
    const r = await fetch(`${this.http}${path}`, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: r.status, body: await r.json().catch(() => null) };
  }
  /** Publishes through the HTTP API; returns the offset. */
  async publish(channel, data) {
    const { status, body } = await this.api('POST', '/api/v1/publish', { channel, data });
    if (status !== 200 || !body.success) throw new Error(`publish failed: ${status} ${JSON.stringify(body)}`);
    return body.offset;
  }
}

/** The environment without `WSGATE_*` (the node reads every one as configuration). */
function inherited() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WSGATE_')));
}

export function hs256(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** Restarts Redis on the same port with nothing in it (as after a crash without persistence). */
Redis.prototype.restart = async function () {
  await this.stop();
  this.child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], {
    stdio: 'ignore',
  });
  await until(() => canConnect(this.port), `redis-server back on ${this.port}`);
};
