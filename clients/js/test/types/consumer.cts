// Compiled (not run) by ci.sh: the declarations work for `require` users (CommonJS).
import { Wsgate, WsgateError } from '@wsgate/client';
const c = new Wsgate('ws://127.0.0.1:8080/ws', { token: 't', getToken: async () => 't2' });
const s = c.subscribe('a:1', { since: { offset: 1, epoch: 'e' } });
s.on('message', (m) => {
  const offset: number = m.offset;
  void offset;
});
c.on('disconnected', (d) => d.reconnect && d.delay);
c.rpc('m', {}).catch((e: WsgateError) => e.code);
import { socketIoTransport } from '@wsgate/client/socketio';
import { io } from 'socket.io-client';
new Wsgate('http://127.0.0.1:8080', { transport: socketIoTransport(io) });
