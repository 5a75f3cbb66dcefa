// The size budget: the minified browser bundle, gzipped, stays under 6 KiB.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET = 6 * 1024;
process.chdir(new URL('..', import.meta.url).pathname);
let over = false;
// The Socket.IO transport is a separate entry with its own budget (2 KiB): the core's does not
// grow with it.
const SIO_BUDGET = 2 * 1024;
for (const [f, budget] of [
  ['dist/wsgate.min.mjs', BUDGET],
  ['dist/wsgate.min.js', BUDGET],
  ['dist/wsgate-socketio.min.mjs', SIO_BUDGET],
  ['dist/wsgate-socketio.min.js', SIO_BUDGET],
]) {
  const raw = readFileSync(f);
  const gz = gzipSync(raw, { level: 9 }).length;
  console.log(`${f}: ${raw.length} B minified, ${gz} B gzipped (budget ${budget} B)`);
  if (gz >= budget) over = true;
}
if (over) {
  console.error('size budget exceeded');
  process.exit(1);
}
