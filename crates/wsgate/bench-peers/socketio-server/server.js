// The Socket.IO 4.8 peer of `wsgate bench --protocol socketio` (docs/benchmarks.md): the
// contract of wsgate's /socket.io/ edge (docs/socketio.md) on Node, written the way a Socket.IO
// application would write it: one room per channel, `io.to(room).emit` (Socket.IO encodes a
// broadcast once and writes the same packet to every socket of the room).
//
//   node server.js [HOST:PORT]      (default 127.0.0.1:0; prints "listening on http://ADDR")
//
// With SOCKETIO_REDIS_URL set (`wsgate bench --nodes N --baseline`), the server takes
// @socket.io/redis-adapter on that Redis: a broadcast reaches the sockets of every process
// (each process PUBLISHes its broadcasts and receives the others'), the way Socket.IO
// applications scale past one process. It listens only once both Redis clients are connected.
//
// Client events, each with an acknowledgement:
//   subscribe "<channel>" | {channel}  -> {ok, offset, epoch, recovered}
//   unsubscribe "<channel>"            -> {ok}
//   publish {channel, data}            -> {ok, offset}
// Server to client: `message` {channel, offset, epoch, data} for every publication.
// HTTP: POST /api/v1/publish {channel, data} (what the bench's publisher calls on both servers).
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');

const listen = process.argv[2] || '127.0.0.1:0';
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

/** Per channel: the last offset and the epoch (fixed for the process's life). */
const channels = new Map();
function channel(name) {
  let c = channels.get(name);
  if (!c) {
    c = { offset: 0, epoch: crypto.randomBytes(8).toString('hex') };
    channels.set(name, c);
  }
  return c;
}

function publish(name, data) {
  const c = channel(name);
  c.offset += 1;
  io.to(name).emit('message', { channel: name, offset: c.offset, epoch: c.epoch, data });
  return c.offset;
}

function channelName(arg) {
  const name = typeof arg === 'string' ? arg : arg && arg.channel;
  return typeof name === 'string' && name.length > 0 ? name : null;
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/api/v1/publish') {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid JSON"}');
      return;
    }
    const name = channelName(body);
    if (!name) {
      res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"channel required"}');
      return;
    }
    const offset = publish(name, body.data);
    const delivered = io.sockets.adapter.rooms.get(name)?.size ?? 0;
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ success: true, channel: name, offset, delivered }));
  });
});

// The heartbeat of a wsgate node with its defaults (a ping every 30 s, 35 s for the pong;
// Socket.IO's own defaults are 25 s and 20 s), so both servers do the same idle work.
const io = new Server(server, { serveClient: false, pingInterval: 30000, pingTimeout: 35000 });

io.on('connection', (socket) => {
  socket.on('subscribe', (arg, ack) => {
    const name = channelName(arg);
    if (typeof ack !== 'function') return;
    if (!name) return ack({ ok: false, error: 'channel required' });
    socket.join(name);
    const c = channel(name);
    ack({ ok: true, offset: c.offset, epoch: c.epoch, recovered: 0 });
  });
  socket.on('unsubscribe', (arg, ack) => {
    const name = channelName(arg);
    if (name) socket.leave(name);
    if (typeof ack === 'function') ack({ ok: true });
  });
  socket.on('publish', (arg, ack) => {
    const name = channelName(arg);
    const reply = typeof ack === 'function' ? ack : () => {};
    if (!name) return reply({ ok: false, error: 'channel required' });
    reply({ ok: true, offset: publish(name, arg.data) });
  });
});

async function useRedisAdapter(url) {
  const { createAdapter } = require('@socket.io/redis-adapter');
  const { createClient } = require('redis');
  const pub = createClient({ url });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on('error', (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

const ready = process.env.SOCKETIO_REDIS_URL
  ? useRedisAdapter(process.env.SOCKETIO_REDIS_URL)
  : Promise.resolve();

ready.then(() => server.listen(port, host, () => {
  const a = server.address();
  const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  // The bench reads this line (the address after "http://").
  const adapter = process.env.SOCKETIO_REDIS_URL ? ' (redis adapter)' : '';
  console.log(`socket.io ${require('socket.io/package.json').version}${adapter} listening on http://${h}:${a.port}`);
}), (e) => {
  console.error(`cannot start: ${e.message}`);
  process.exit(1);
});

process.on('SIGTERM', () => process.exit(0));
