// The size budget: the minified browser bundle, gzipped, stays under 6 KiB.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET = 6 * 1024;
process.chdir(new URL('..', import.meta.url).pathname);
let over = false;
for (const f of ['dist/wsgate.min.mjs', 'dist/wsgate.min.js']) {
  const raw = readFileSync(f);
  const gz = gzipSync(raw, { level: 9 }).length;
  console.log(`${f}: ${raw.length} B minified, ${gz} B gzipped (budget ${BUDGET} B)`);
  if (gz >= BUDGET) over = true;
}
if (over) {
  console.error('size budget exceeded');
  process.exit(1);
}
