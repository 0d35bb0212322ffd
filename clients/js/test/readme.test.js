// The README's Node example runs as written against the real server (its browser example runs
// in browser.test.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { client, GUARD_MS, PACKAGE, publish, readmeExample, startServer, token, until } from './helpers.js';

test('the README Node example receives, stops at "bye" and acknowledges what it processed', async (t) => {
  const server = await startServer(t);
  await publish(server, { to: 'reader', data: 'bye', priority: 'low' });
  await publish(server, { to: 'reader', data: 'two' });
  await publish(server, { to: 'reader', data: { n: 1 }, priority: 'critical' });

  // Inside the package, so that `import 'tether-client'` and `ws` resolve as in a project.
  const dir = mkdtempSync(join(PACKAGE, '.readme-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'receive.mjs');
  writeFileSync(file, readmeExample('In Node', 'js'));
  const env = { ...process.env, TETHER_URL: server.url, TETHER_TOKEN: token('reader') };
  const { code, stdout, stderr } = await new Promise((resolve) => {
    execFile(process.execPath, [file], { env, timeout: GUARD_MS }, (error, stdout, stderr) =>
      resolve({ code: error ? error.code ?? error.signal : 0, stdout, stderr }));
  });
  assert.equal(code, 0, stderr);
  assert.deepEqual(stdout.trim().split('\n'), [
    '[connecting] connect() called',
    '[connected] connected',
    'connected as reader; lost while away: 0 expired, 0 evicted',
    '1 critical {"n":1}',
    '2 normal "two"',
    '3 low "bye"',
    '[closed] close() called',
  ]);

  // Its close() acknowledged all three: the next client starts after them.
  await publish(server, { to: 'reader', data: 'later' });
  const c = client(t, server, 'reader');
  const got = [];
  c.on('message', (m) => got.push(m));
  const info = await c.connect();
  assert.equal(info.redelivered, 0);
  await until(() => got.length === 1, 'the next message');
  assert.deepEqual([got[0].seq, got[0].data], [4, 'later']);
});
