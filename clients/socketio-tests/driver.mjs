// A remote-controlled socket.io-client v4 for wsgate's end-to-end tests
// (crates/wsgate-tests/tests/socketio.rs): the test writes one JSON command per line on stdin,
// and reads one JSON line on stdout per thing that happened to the sockets.
//
// Commands (`name` picks the socket, default "a"):
//   {"cmd":"connect","url":…,"opts":{…}}   io(url, opts); reports connect, upgrade,
//                                         connect_error, disconnect, and every event
//   {"cmd":"emit","event":…,"args":…,"tag":…}  emitWithAck (5 s); reports {"type":"ack"}
//   {"cmd":"disconnect"} / {"cmd":"reconnect"}  socket.disconnect() / socket.connect()
//   {"cmd":"raw","data":…}                  one raw WebSocket text frame (a malformed packet)
//   {"cmd":"mute"}                          stops answering the server's pings (Engine.IO `3`)
// Output lines: {"type":"connect"|"upgrade"|"connect_error"|"disconnect"|"event"|"ack", "name", …}
// It exits when stdin closes, so a test that ends (or panics) takes it down.
import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const sockets = new Map();
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

function connect(name, url, opts) {
  const socket = io(url, { reconnection: false, timeout: 5000, ...opts });
  sockets.set(name, socket);
  socket.io.on('open', () => {
    socket.io.engine.on('upgrade', (t) => out({ type: 'upgrade', name, transport: t.name }));
  });
  socket.on('connect', () =>
    out({ type: 'connect', name, transport: socket.io.engine.transport.name }),
  );
  socket.on('connect_error', (e) => out({ type: 'connect_error', name, message: e.message }));
  socket.on('disconnect', (reason) => out({ type: 'disconnect', name, reason }));
  socket.onAny((event, ...args) => out({ type: 'event', name, event, args }));
}

async function emit(name, c) {
  try {
    const ack = await sockets.get(name).timeout(5000).emitWithAck(c.event, c.args);
    out({ type: 'ack', name, tag: c.tag ?? c.event, ack });
  } catch (e) {
    out({ type: 'ack', name, tag: c.tag ?? c.event, error: e.message });
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const c = JSON.parse(line);
  const name = c.name ?? 'a';
  switch (c.cmd) {
    case 'connect':
      connect(name, c.url, c.opts ?? {});
      break;
    case 'emit':
      emit(name, c);
      break;
    case 'disconnect':
      sockets.get(name).disconnect();
      break;
    case 'reconnect':
      sockets.get(name).connect();
      break;
    case 'raw':
      sockets.get(name).io.engine.transport.ws.send(c.data);
      break;
    case 'mute': {
      // engine.io-client 6 answers a ping with `_sendPacket("pong")`.
      const engine = sockets.get(name).io.engine;
      const send = engine._sendPacket.bind(engine);
      engine._sendPacket = (type, ...rest) => (type === 'pong' ? undefined : send(type, ...rest));
      break;
    }
    default:
      out({ type: 'error', message: `unknown command ${c.cmd}` });
  }
}).on('close', () => process.exit(0));
