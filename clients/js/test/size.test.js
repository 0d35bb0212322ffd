// The size budget: the module minified (esbuild) and gzipped stays under 8 KiB.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { transform } from 'esbuild';

const BUDGET = 8 * 1024;

test(`tether-client.js is under ${BUDGET} bytes minified and gzipped`, async (t) => {
  const source = readFileSync(new URL('../tether-client.js', import.meta.url), 'utf8');
  const { code } = await transform(source, { minify: true, format: 'esm', target: 'es2022' });
  const gzipped = gzipSync(code, { level: 9 }).length;
  t.diagnostic(`${source.length} bytes of source, ${code.length} minified, ${gzipped} minified and gzipped (budget ${BUDGET})`);
  assert.ok(gzipped <= BUDGET, `${gzipped} bytes > ${BUDGET}`);
  // The minified module still works: it is what a bundler ships.
  const module = await import(`data:text/javascript;base64,${Buffer.from(code).toString('base64')}`);
  assert.equal(typeof module.TetherClient, 'function');
  assert.equal(new module.UnauthorizedError('unauthorized', 'x').name, 'UnauthorizedError');
});
