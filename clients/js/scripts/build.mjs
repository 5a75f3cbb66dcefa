// Builds dist/: ESM and CommonJS bundles with type declarations, and the minified browser
// bundle (`dist/wsgate.min.js`, global `WsgateClient`) that examples/chat.html loads; the same for
// the Socket.IO transport (`dist/esm/socketio.js`, …, `dist/wsgate-socketio.min.js`, global `WsgateSocketIO`).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';

process.chdir(new URL('..', import.meta.url).pathname);
rmSync('dist', { recursive: true, force: true });
const common = { entryPoints: ['src/index.ts'], bundle: true, target: 'es2020', logLevel: 'warning' };
await build({ ...common, format: 'esm', outfile: 'dist/esm/index.js' });
await build({ ...common, format: 'cjs', outfile: 'dist/cjs/index.js' });
await build({ ...common, format: 'esm', minify: true, outfile: 'dist/wsgate.min.mjs' });
await build({ ...common, format: 'iife', globalName: 'WsgateClient', minify: true, outfile: 'dist/wsgate.min.js' });
// The Socket.IO transport, a separate entry (`@wsgate/client/socketio`): the core bundles above
// do not carry it. It has no runtime import of the core (types only), so nothing is duplicated.
const sio = { ...common, entryPoints: ['src/socketio.ts'] };
await build({ ...sio, format: 'esm', outfile: 'dist/esm/socketio.js' });
await build({ ...sio, format: 'cjs', outfile: 'dist/cjs/socketio.js' });
await build({ ...sio, format: 'esm', minify: true, outfile: 'dist/wsgate-socketio.min.mjs' });
await build({ ...sio, format: 'iife', globalName: 'WsgateSocketIO', minify: true, outfile: 'dist/wsgate-socketio.min.js' });
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', '.'], { stdio: 'inherit' });
// The same declarations, read as CommonJS (dist/cjs/package.json says so) for `require` users.
mkdirSync('dist/cjs', { recursive: true });
for (const f of readdirSync('dist/esm')) if (f.endsWith('.d.ts')) cpSync(`dist/esm/${f}`, `dist/cjs/${f}`);
writeFileSync('dist/cjs/package.json', '{ "type": "commonjs" }\n');
console.log('built dist/');
