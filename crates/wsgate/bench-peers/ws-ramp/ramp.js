// Issue 16's external way of measuring memory per idle connection, outside `wsgate bench`:
// N clients connect CONCURRENCY at a time, each subscribes to `bench` and waits for
// `subscribed`; the server's VmRSS 2 s after the last one minus VmRSS before the first,
// over N. Node's built-in WebSocket client (Node 20: --experimental-websocket), no packages.
//
//   node --experimental-websocket ramp.js ws://127.0.0.1:PORT/ws N CONCURRENCY SERVER_PID
// Prints one JSON line; keeps the clients open until it exits.
'use strict';
const fs = require('fs');

const [url, nArg, concArg, pidArg] = process.argv.slice(2);
const n = Number(nArg), concurrency = Number(concArg), pid = Number(pidArg);
if (!url || !(n > 0) || !(concurrency > 0) || !(pid > 0)) {
  console.error('usage: ramp.js URL N CONCURRENCY SERVER_PID');
  process.exit(2);
}

const rssKib = () =>
  Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function subscriber() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => reject(new Error('no subscribed within 30 s')), 30000);
    ws.onerror = () => reject(new Error('websocket error'));
    ws.onmessage = (ev) => {
      const text = String(ev.data);
      if (text.includes('"hello"')) {
        ws.send('{"op":"subscribe","channel":"bench"}');
      } else if (text.includes('"subscribed"')) {
        clearTimeout(timer);
        ws.onmessage = null;
        resolve(ws);
      }
    };
  });
}

(async () => {
  const before = rssKib();
  const open = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      open.push(await subscriber());
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  await sleep(2000);
  const after = rssKib();
  console.log(JSON.stringify({ n, concurrency, before_kib: before, after_kib: after,
    kib_per_connection: (after - before) / n }));
  process.exit(0);
})().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
