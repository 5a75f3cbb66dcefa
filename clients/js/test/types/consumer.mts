// Compiled (not run) by ci.sh: the declarations work for ESM users.
import { Wsgate, type SubscribedInfo, type Presence } from '@wsgate/client';
import WebSocket from 'ws';
const c = new Wsgate('ws://127.0.0.1:8080/ws', { WebSocket });
c.subscribe('a:1').on('subscribed', (s: SubscribedInfo) => s.recovered === false && s.gap);
const p: Promise<Presence> = c.presence('a:1');
void p;
