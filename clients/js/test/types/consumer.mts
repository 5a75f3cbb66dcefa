// Compiled (not run) by ci.sh: the declarations work for ESM users.
import { Wsgate, type SubscribedInfo, type Presence } from '@wsgate/client';
import WebSocket from 'ws';
const c = new Wsgate('ws://127.0.0.1:8080/ws', { WebSocket });
c.subscribe('a:1').on('subscribed', (s: SubscribedInfo) => s.recovered === false && s.gap);
const p: Promise<Presence> = c.presence('a:1');
void p;
// The Socket.IO transport, a separate entry, takes socket.io-client's own `io`.
import { socketIoTransport, CLOSE_TOKEN_REFRESH } from '@wsgate/client/socketio';
import { io } from 'socket.io-client';
const s = new Wsgate('http://127.0.0.1:8080', { transport: socketIoTransport(io, { transports: ['websocket'] }) });
s.on('event', (e) => e.event === 'score' && e.data);
s.on('disconnected', (d) => d.code === CLOSE_TOKEN_REFRESH);
