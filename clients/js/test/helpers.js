// What the tests share: the real `tether` binary started on 127.0.0.1 port 0, tokens, HTTP
// publishes, a TCP proxy that can cut connections, and bounded waits.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { TetherClient } from '../tether-client.js';

export const SECRET = 'the js client tests secret, 32+ bytes long';
export const API_KEY = 'js-client-tests-api-key';
/** Longest any single wait in a test may take before the test fails. */
export const GUARD_MS = 20000;

/** The package's directory. */
export const PACKAGE = fileURLToPath(new URL('..', import.meta.url));

export const BIN = process.env.TETHER_BIN || fileURLToPath(new URL('../../../target/debug/tether', import.meta.url));

const children = new Set();
const reapers = new Set();
/** Runs `kill` when this process ends, however it ends; returns a function that cancels it. */
export function reapOnExit(kill) {
  reapers.add(kill);
  return () => reapers.delete(kill);
}
// A test that fails, times out or is interrupted must not leave a process behind.
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
  for (const kill of reapers) kill();
});
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => process.exit(128 + (signal === 'SIGINT' ? 2 : 15)));

/**
 * Starts `tether serve` with the tests' credentials and `flags`; resolves once it listens.
 * The test `t` kills it when it ends, passed or failed. `port` (optional) binds that port
 * instead of 0, to restart a server where it was.
 */
export async function startServer(t, flags = [], port = 0) {
  if (!existsSync(BIN)) {
    throw new Error(`no tether binary at ${BIN}: run \`cargo build --bin tether\` first (or set TETHER_BIN)`);
  }
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--jwt-secret', SECRET, '--api-key', API_KEY, '--log-format', 'json', '--log', 'warn,tether=info', ...flags];
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TETHER_')));
  const child = spawn(BIN, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  const addr = await new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => fail(new Error(`tether did not start within ${GUARD_MS} ms:\n${seen}`)), GUARD_MS);
    const fail = (e) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(e);
    };
    child.once('exit', (code) => fail(new Error(`tether exited with ${code}:\n${seen}`)));
    let buffer = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      buffer += chunk;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        seen += line + '\n';
        try {
          const v = JSON.parse(line);
          if (v.fields?.message === 'tether listening') {
            clearTimeout(timer);
            child.removeAllListeners('exit');
            child.on('exit', () => children.delete(child));
            resolve(v.fields.addr);
          }
        } catch {
          // Not a JSON log line.
        }
      }
    });
  });
  const stopped = new Promise((resolve) => child.once('exit', resolve));
  t.after(() => {
    child.kill('SIGKILL');
    return stopped;
  });
  return {
    addr,
    port: Number(addr.split(':').pop()),
    url: `ws://${addr}/ws`,
    http: `http://${addr}`,
    /** Kills the server at once (SIGKILL): connections break without a close frame. */
    kill() {
      child.kill('SIGKILL');
      return stopped;
    },
  };
}

const b64url = (s) => Buffer.from(s).toString('base64url');

/** An HS256 token for `user`, expiring `ttlSeconds` from now (none if omitted). */
export function token(user, ttlSeconds, secret = SECRET) {
  const claims = { sub: user };
  if (ttlSeconds !== undefined) claims.exp = Math.floor(Date.now() / 1000) + ttlSeconds;
  const body = `${b64url('{"alg":"HS256","typ":"JWT"}')}.${b64url(JSON.stringify(claims))}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** POST /api/publish; resolves with the JSON answer. */
export async function publish(server, body) {
  const res = await fetch(`${server.http}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await res.json();
  if (res.status !== 200) throw new Error(`publish answered ${res.status}: ${JSON.stringify(answer)}`);
  return answer;
}

/** POST /api/publish_batch with one body per message. */
export async function publishBatch(server, messages) {
  const res = await fetch(`${server.http}/api/publish_batch`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ messages }),
  });
  const answer = await res.json();
  if (res.status !== 200) throw new Error(`publish_batch answered ${res.status}: ${JSON.stringify(answer)}`);
  return answer.results;
}

/** A client of `server` for `user` on Node's `ws`, closed by `t.after`. */
export function client(t, server, user, options = {}) {
  const c = new TetherClient({ url: server.url, token: token(user), WebSocket, ...options });
  t.after(() => c.close());
  return c;
}

/** A `ws` WebSocket that records every frame the client sends. */
export function recordingWebSocket(sent) {
  return class extends WebSocket {
    send(data, ...rest) {
      sent.push(JSON.parse(data));
      return super.send(data, ...rest);
    }
  };
}

/** Resolves when `check()` is truthy (polled); fails with `what` after GUARD_MS. */
export async function until(check, what) {
  const deadline = Date.now() + GUARD_MS;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** `promise`, or a failure naming `what` after GUARD_MS. */
export function within(promise, what) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), GUARD_MS);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

/** The next `event` the client emits (optionally one that `pick` accepts). */
export function next(client, event, pick = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`no ${event} event within ${GUARD_MS} ms`))), GUARD_MS);
    const off = client.on(event, (value) => {
      if (!pick(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/**
 * A TCP proxy on 127.0.0.1 port 0 in front of `target` (host:port). `cut()` ends every
 * connection through it without a WebSocket close frame, as a network failure would; while
 * `refusing`, new connections are closed at once. (Not `resetAndDestroy()`: on Node 20 a
 * process that used it sometimes spins at exit instead of ending.)
 */
export async function proxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set();
  const state = { refusing: false, connections: 0 };
  const server = net.createServer((inbound) => {
    state.connections++;
    if (state.refusing) return inbound.destroy();
    const outbound = net.connect(port, host);
    const pair = { inbound, outbound };
    pairs.add(pair);
    const close = () => {
      pairs.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', close).on('close', close);
    outbound.on('error', close).on('close', close);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = `127.0.0.1:${server.address().port}`;
  return {
    addr,
    url: `ws://${addr}/ws`,
    state,
    /** Ends every live connection; returns how many there were. */
    cut() {
      const n = pairs.size;
      for (const { inbound, outbound } of pairs) {
        inbound.destroy();
        outbound.destroy();
      }
      pairs.clear();
      return n;
    },
    /**
     * Stops forwarding what the server sends on every live connection (it waits in the
     * proxy): the server has delivered it, the client has not received it.
     */
    holdDownstream() {
      for (const { inbound, outbound } of pairs) {
        outbound.unpipe(inbound);
        outbound.pause();
      }
    },
    /** Stops every live connection's traffic, leaving the sockets open (a silent peer). */
    freeze() {
      for (const { inbound, outbound } of pairs) {
        inbound.unpipe(outbound);
        outbound.unpipe(inbound);
        inbound.pause();
        outbound.pause();
      }
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The first fenced block of `lang` after the heading `heading` in the package README. */
export function readmeExample(heading, lang) {
  const readme = readFileSync(join(PACKAGE, 'README.md'), 'utf8');
  const section = readme.split(`\n## ${heading}\n`)[1];
  assert.ok(section, `README has a "## ${heading}" section`);
  const block = section.split('\n## ')[0].match(new RegExp('```' + lang + '\\n([\\s\\S]*?)```'));
  assert.ok(block, `README "## ${heading}" has a ${lang} block`);
  return block[1];
}
