/**
 * `@wsgate/client`: the browser and Node client for wsgate's gateway protocol
 * (docs/protocol.md). Zero runtime dependencies.
 *
 * ```ts
 * import { Wsgate } from '@wsgate/client';
 * const client = new Wsgate('wss://example.com/ws', { getToken: () => fetchToken() });
 * const sub = client.subscribe('team:42');
 * sub.on('message', (m) => console.log(m.offset, m.data));
 * sub.on('subscribed', (s) => s.recovered === false && console.warn('missed messages:', s.gap));
 * client.connect();
 * ```
 */
export { Wsgate, CLOSE_LIVENESS } from './client.js';
export { Subscription } from './subscription.js';
export { backoffDelay, tokenExpiry } from './backoff.js';
export { WsgateError } from './types.js';
export type {
  ClientEvents,
  ConnectedInfo,
  DisconnectInfo,
  Presence,
  PresenceEvent,
  Publication,
  SocketConstructor,
  SocketLike,
  StreamPosition,
  SubscribedInfo,
  SubscriptionEvents,
  Transport,
  WsgateOptions,
} from './types.js';
