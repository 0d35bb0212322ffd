// The package in a real browser: headless Chromium loads the README's browser example (and a
// wake-up page) from a small web server that also forwards `/ws` to the real tether server, so
// the test can break the page's connection. Assertions are on what the page shows.
//
// Without Chromium the tests skip with a message, unless TETHER_REQUIRE_BROWSER=1 (.ci/test
// sets it), which makes a missing browser a failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import { findChromium, launch } from './chromium.js';
import { publish, readmeExample, startServer, token } from './helpers.js';

const file = (path) => readFileSync(new URL(path, import.meta.url), 'utf8');

function chromiumOrSkip(t) {
  const bin = findChromium();
  if (bin) return bin;
  const how = 'install it (apt-get install -y chromium) or point TETHER_CHROMIUM at a Chromium or Chrome binary';
  if (process.env.TETHER_REQUIRE_BROWSER === '1') assert.fail(`Chromium not found (TETHER_REQUIRE_BROWSER=1): ${how}`);
  t.skip(`Chromium not found: ${how}`);
  return null;
}

/**
 * The web server the pages come from: `/` is the README example, `/wake.html` the wake-up
 * page, `/tether-client.js` the package, `/tether-token?user=` mints a token (default user
 * `browser`), and WebSocket upgrades to `/ws` are forwarded to `upstream`. `cut()` ends the
 * forwarded connections as a network failure would; `hold()` stops forwarding what the
 * server sends.
 */
async function webServer(t, upstream) {
  const pages = {
    '/': ['text/html', readmeExample('In a browser', 'html')],
    '/wake.html': ['text/html', file('./browser/wake.html')],
    '/tether-client.js': ['text/javascript', file('../tether-client.js')],
  };
  const tokens = [];
  const links = new Set();
  let upgrades = 0;
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://page');
    if (url.pathname === '/tether-token') {
      const user = url.searchParams.get('user') ?? 'browser';
      tokens.push(user);
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      return res.end(token(user));
    }
    const page = pages[url.pathname];
    if (!page) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': page[0], 'cache-control': 'no-store' });
    res.end(page[1]);
  });
  server.on('upgrade', (req, socket, head) => {
    if (new URL(req.url, 'http://page').pathname !== '/ws') return socket.destroy();
    upgrades++;
    const [host, port] = upstream.split(':');
    const out = net.connect(Number(port), host);
    const link = { socket, out };
    links.add(link);
    const close = () => {
      links.delete(link);
      socket.destroy();
      out.destroy();
    };
    socket.on('error', close).on('close', close);
    out.on('error', close).on('close', close);
    let request = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) request += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    out.write(`${request}\r\n`);
    out.write(head);
    socket.pipe(out);
    out.pipe(socket);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const { socket, out } of links) socket.destroy(), out.destroy();
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    tokens,
    get upgrades() {
      return upgrades;
    },
    cut() {
      for (const { socket, out } of links) socket.destroy(), out.destroy();
      links.clear();
    },
    hold() {
      for (const { socket, out } of links) out.unpipe(socket), out.pause();
    },
  };
}

const shown = `[...document.querySelectorAll('#log li')].map((li) => li.textContent)`;

test('the README browser example receives, loses its connection, resumes, and shows every message once', async (t) => {
  const bin = chromiumOrSkip(t);
  if (!bin) return;
  const tether = await startServer(t);
  const web = await webServer(t, tether.addr);
  await publish(tether, { to: 'browser', data: { n: 1 }, priority: 'low' });
  await publish(tether, { to: 'browser', data: { n: 2 }, priority: 'high' });

  const browser = await launch(t, bin);
  const page = await browser.open(`${web.origin}/`);
  await page.until(`document.title === 'connected' && ${shown}.length === 2`, 'the two queued messages');
  assert.deepEqual(await page.eval(shown), ['1 high: {"n":2}', '2 low: {"n":1}']);

  assert.equal((await publish(tether, { to: 'browser', data: 'live' })).outcome, 'delivered');
  await page.until(`${shown}.length === 3`, 'a live message');

  // Two messages the server delivered but the page never got, then the connection breaks.
  web.hold();
  for (const data of ['in flight 1', 'in flight 2']) assert.equal((await publish(tether, { to: 'browser', data })).outcome, 'delivered');
  web.cut();
  // Published while the page reconnects: queued or delivered, either way shown once.
  await publish(tether, { to: 'browser', data: 'meanwhile' });
  await page.until(`document.title === 'connected' && ${shown}.length === 6`, 'the resumed session');
  assert.equal((await publish(tether, { to: 'browser', data: 'after' })).outcome, 'delivered');
  await page.until(`${shown}.length === 7`, 'a message after the resume');

  assert.deepEqual(await page.eval(shown), [
    '1 high: {"n":2}', '2 low: {"n":1}', '3 normal: "live"', '4 normal: "in flight 1"',
    '5 normal: "in flight 2"', '6 normal: "meanwhile"', '7 normal: "after"',
  ]);
  assert.equal(web.upgrades, 2, 'one reconnect');
  assert.deepEqual(web.tokens, ['browser', 'browser'], 'a fresh token for the reconnect');
  assert.deepEqual(page.log, [], 'no console output or uncaught errors');
});

test('in a browser, coming back online or being shown again cuts a reconnect wait short', async (t) => {
  const bin = chromiumOrSkip(t);
  if (!bin) return;
  const tether = await startServer(t);
  const web = await webServer(t, tether.addr);
  const browser = await launch(t, bin);
  const page = await browser.open(`${web.origin}/wake.html`);
  await page.until(`window.client?.state === 'connected'`, 'the first connection');

  const wokenBy = async (wake, what) => {
    const from = await page.eval('events.length');
    web.cut();
    const delay = await page.until(`events.slice(${from}).find((e) => 'disconnected' in e)?.disconnected`, `the disconnect (${what})`);
    assert.equal(delay, 594000, 'a 9.9-minute wait, which only a wake-up ends within the test');
    await wake();
    await page.until(`client.state === 'connected'`, `the reconnect (${what})`);
    const connecting = (await page.eval(`events.slice(${from})`)).filter((e) => e.state === 'connecting');
    assert.deepEqual(connecting.map((e) => e.reason), ['woken: the browser is online and the page visible'], what);
  };
  await wokenBy(async () => {
    await page.offline(true);
    await page.offline(false);
  }, 'online');
  await wokenBy(() => page.eval(`document.dispatchEvent(new Event('visibilitychange'))`), 'visibilitychange');

  // Resumed both times in the same mailbox, with a fresh token each time.
  await publish(tether, { to: 'waker', data: 'still here' });
  assert.equal(await page.eval(`new Promise((r) => client.on('message', (m) => r(m.data)))`), 'still here');
  assert.deepEqual(web.tokens, ['waker', 'waker', 'waker']);
  assert.deepEqual(page.log, []);
});
