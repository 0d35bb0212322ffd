// Headless Chromium driven over the DevTools protocol: launch, open a page, evaluate
// expressions in it, emulate the network going offline. Only what the browser test needs.
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import WebSocket from 'ws';
import { GUARD_MS, reapOnExit } from './helpers.js';

/** The Chromium binary: TETHER_CHROMIUM, else `chromium` or `chromium-browser` on PATH; null if none. */
export function findChromium() {
  if (process.env.TETHER_CHROMIUM) return process.env.TETHER_CHROMIUM;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    for (const name of ['chromium', 'chromium-browser']) {
      try {
        accessSync(join(dir, name), constants.X_OK);
        return join(dir, name);
      } catch {
        // Not here.
      }
    }
  }
  return null;
}

/** Starts headless Chromium; `t.after` kills it (its whole process group) and its profile. */
export async function launch(t, bin) {
  const profile = mkdtempSync(join(tmpdir(), 'tether-js-chromium-'));
  const child = spawn(bin, [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-extensions', '--disable-default-apps', '--no-first-run', '--no-default-browser-check',
    '--mute-audio', `--user-data-dir=${profile}`, '--remote-debugging-port=0', 'about:blank',
  ], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // The whole process group: Chromium's helpers too.
  const kill = () => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  const cancel = reapOnExit(kill);
  t.after(async () => {
    kill();
    cancel();
    await exited;
    rmSync(profile, { recursive: true, force: true });
  });
  const endpoint = await new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`Chromium printed no DevTools endpoint within ${GUARD_MS} ms:\n${seen}`)), GUARD_MS);
    child.once('exit', (code) => reject(new Error(`Chromium exited with ${code}:\n${seen}`)));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      seen += chunk;
      const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  const ws = new WebSocket(endpoint, { perMessageDeflate: false });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  t.after(() => ws.terminate());
  let id = 0;
  const calls = new Map();
  const listeners = new Set();
  ws.on('message', (data) => {
    const msg = JSON.parse(data);
    if (msg.id !== undefined) {
      const call = calls.get(msg.id);
      calls.delete(msg.id);
      if (msg.error) call?.reject(new Error(`${call.method}: ${msg.error.message}`));
      else call?.resolve(msg.result);
    } else for (const listener of listeners) listener(msg);
  });
  const send = (method, params = {}, sessionId) =>
    new Promise((resolve, reject) => {
      calls.set(++id, { resolve, reject, method });
      ws.send(JSON.stringify({ id, method, params, sessionId }));
    });

  return {
    /** Opens `url` in a new tab; the page's console and uncaught errors are kept in `log`. */
    async open(url) {
      const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
      const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
      const log = [];
      listeners.add((msg) => {
        if (msg.sessionId !== sessionId) return;
        if (msg.method === 'Runtime.consoleAPICalled') {
          log.push(`console.${msg.params.type}: ${msg.params.args.map((a) => a.value ?? a.description).join(' ')}`);
        } else if (msg.method === 'Runtime.exceptionThrown') {
          const d = msg.params.exceptionDetails;
          log.push(`uncaught: ${d.exception?.description ?? d.text}`);
        }
      });
      await send('Runtime.enable', {}, sessionId);
      await send('Network.enable', {}, sessionId);
      await send('Page.enable', {}, sessionId);
      await send('Page.navigate', { url }, sessionId);
      const page = {
        log,
        /** The value of `expression` in the page (awaited if it is a promise). */
        async eval(expression) {
          const r = await send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true }, sessionId);
          if (r.exceptionDetails) throw new Error(`${expression}: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
          return r.result.value;
        },
        /** Resolves with `expression`'s value once it is truthy; fails after GUARD_MS with the page's log. */
        async until(expression, what) {
          const deadline = Date.now() + GUARD_MS;
          for (;;) {
            let value;
            try {
              value = await page.eval(expression);
            } catch {
              // The page may still be loading.
            }
            if (value) return value;
            if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; page log:\n${log.join('\n')}`);
            await new Promise((r) => setTimeout(r, 20));
          }
        },
        /** Takes the page's network offline or back online (the browser fires `offline`/`online`). */
        offline(on) {
          return send('Network.emulateNetworkConditions', { offline: on, latency: 0, downloadThroughput: -1, uploadThroughput: -1 }, sessionId);
        },
      };
      return page;
    },
  };
}
