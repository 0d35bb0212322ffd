// Reconnecting against the real server: abrupt drops and resume, token expiry and refresh,
// the close codes 4001, 4002 and 4100, backoff with full jitter across many clients, keepalive
// and the idle timeout.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  client, next, proxy, publish, publishBatch, recordingWebSocket, startServer, token, until,
} from './helpers.js';
import { GaveUpError, ReplacedError, TetherClient, UnauthorizedError } from '../tether-client.js';

test('after abrupt drops the client resumes: nothing lost, nothing handed over twice', async (t) => {
  const server = await startServer(t);
  const link = await proxy(server.addr);
  t.after(() => link.close());
  const c = client(t, server, 'flaky', { url: link.url, backoff: { baseMs: 5, maxMs: 50 } });
  const got = [];
  const infos = [];
  c.on('connected', (info) => infos.push(info));
  c.on('message', async (m) => {
    got.push(m.data);
    // Some handlers are still running when the connection drops.
    if (m.seq % 7 === 0) await new Promise((r) => setTimeout(r, 3));
  });
  await c.connect();
  let n = 0;
  const batch = () => publishBatch(server, Array.from({ length: 25 }, () => ({ to: 'flaky', data: n++ })));

  for (let round = 0; round < 4; round++) {
    // Cut while messages are on their way.
    await batch();
    link.cut();
    await batch(); // queued or delivered to a connection that is gone
    await until(() => c.state === 'connected' && got.length === n, `round ${round}: everything so far`);

    // Cut with a batch the server delivered and the client never received: exactly those
    // come again, and nothing the client had processed does.
    const reconnected = next(c, 'connected');
    link.holdDownstream();
    const outcomes = await batch();
    assert.ok(outcomes.every((o) => o.outcome === 'delivered'), JSON.stringify(outcomes));
    link.cut();
    const info = await reconnected;
    assert.equal(info.recovered, true);
    assert.equal(info.redelivered, 25);
    await until(() => got.length === n, `round ${round}: the held batch`);
  }
  assert.deepEqual(got, [...Array(n).keys()], 'every message once, in order');
  assert.equal(infos.length, 9);
  assert.ok(infos.slice(1).every((i) => i.recovered && i.epoch === infos[0].epoch));
});

test('a saved resume point carries over to a new client', async (t) => {
  const server = await startServer(t);
  await publishBatch(server, [1, 2, 3].map((n) => ({ to: 'saved', data: n })));
  const a = client(t, server, 'saved', { autoAck: false });
  const got = [];
  a.on('message', (m) => got.push(m));
  await a.connect();
  await until(() => got.length === 3, 'three messages');
  const epoch = a.resumePoint.epoch;
  await a.close(); // nothing acknowledged

  // The application had stored that it processed up to 2.
  const b = client(t, server, 'saved', { resume: { epoch, seq: 2 } });
  const again = [];
  b.on('message', (m) => again.push(m));
  const info = await b.connect();
  assert.equal(info.recovered, true);
  await until(() => again.length === 1, 'message 3');
  assert.deepEqual([again[0].seq, again[0].data], [3, 3]);
});

describe('tokens', { concurrency: true }, () => {
  test('an expiring token: the server closes with 4001, the token function is called again, the session resumes', async (t) => {
    const server = await startServer(t);
    let calls = 0;
    // Expires in 2-3 s (exp is whole seconds).
    const c = client(t, server, 'refresh', { token: async () => (calls++, token('refresh', 3)) });
    const infos = [];
    c.on('connected', (i) => infos.push(i));
    const got = [];
    c.on('message', (m) => got.push(m.data));
    const expired = next(c, 'disconnected');
    await c.connect();
    const d = await expired;
    assert.deepEqual([d.code, d.reason, d.wasConnected], [4001, 'the token expired', true]);
    await until(() => infos.length === 2, 'the second connection');
    assert.equal(calls, 2);
    assert.equal(infos[1].recovered, true);
    await publish(server, { to: 'refresh', data: 'after refresh' });
    await until(() => got.length === 1, 'a message on the refreshed session');
    assert.equal(c.state, 'connected');
  });

  test('a string token that expires stops the client with UnauthorizedError', async (t) => {
    const server = await startServer(t);
    const c = client(t, server, 'fixed', { token: token('fixed', 3) });
    const closed = next(c, 'closed');
    await c.connect();
    const { error } = await closed;
    assert.ok(error instanceof UnauthorizedError, String(error));
    assert.equal(error.reason, 'the token expired');
    assert.match(error.message, /token function/);
    assert.equal(c.state, 'closed');
  });

  test('a token the server refuses: connect() rejects with UnauthorizedError, nothing retries', async (t) => {
    const server = await startServer(t);
    const forged = token('mallory', undefined, 'some other secret of at least 32 bytes');
    for (const tok of [forged, async () => forged]) {
      const c = client(t, server, 'mallory', { token: tok });
      let attempts = 0;
      c.on('state', (s) => (attempts += s.state === 'connecting'));
      await assert.rejects(c.connect(), (e) => e instanceof UnauthorizedError && e.code === 'unauthorized');
      assert.equal(c.state, 'closed');
      assert.equal(attempts, 1);
    }
  });
});

test('a token function that fails or hangs is a failed attempt: the client tries again', async (t) => {
  const server = await startServer(t);
  let calls = 0;
  const c = client(t, server, 'flaky-token', {
    connectTimeoutMs: 300,
    backoff: { baseMs: 10, maxMs: 20 },
    token: () => {
      calls++;
      if (calls === 1) throw new Error('auth server down');
      if (calls === 2) return new Promise(() => {});
      return token('flaky-token');
    },
  });
  const reasons = [];
  c.on('disconnected', (d) => reasons.push(d.reason));
  const info = await c.connect();
  assert.equal(info.user, 'flaky-token');
  assert.deepEqual(reasons, ['the token function failed: auth server down', 'no `connected` frame within 300 ms']);
  assert.equal(calls, 3);
});

test('4002: the older connection of a user stops with ReplacedError, the newer one stays', async (t) => {
  const server = await startServer(t);
  const first = client(t, server, 'twice');
  await first.connect();
  const closed = next(first, 'closed');
  const second = client(t, server, 'twice');
  await second.connect();
  const { error } = await closed;
  assert.ok(error instanceof ReplacedError, String(error));
  assert.equal(first.state, 'closed');
  assert.equal(second.state, 'connected');
  await publish(server, { to: 'twice', data: 'for the second' });
  const m = await next(second, 'message');
  assert.equal(m.data, 'for the second');
});

test('4100: the client waits at least retry_after_ms, then connects', async (t) => {
  const server = await startServer(t, ['--max-connections', '1']);
  const a = client(t, server, 'a');
  await a.connect();
  const b = client(t, server, 'b');
  const refused = next(b, 'disconnected');
  const connected = b.connect();
  const d = await refused;
  assert.equal(d.code, 4100);
  assert.equal(d.wasConnected, false);
  assert.ok(d.delayMs >= 1000, `waits at least the server's 1000 ms, drew ${d.delayMs}`);
  await a.close();
  const info = await connected;
  assert.equal(info.user, 'b');
});

test('clients cut off together by a server restart come back spread out', async (t) => {
  const server = await startServer(t);
  const N = 40;
  const clients = Array.from({ length: N }, (_, i) => {
    const c = client(t, server, `crowd-${i}`);
    c.delays = [];
    c.infos = [];
    c.on('disconnected', (d) => c.delays.push(d.delayMs));
    c.on('connected', (info) => c.infos.push(info));
    return c;
  });
  await Promise.all(clients.map((c) => c.connect()));
  await server.kill();
  const restarted = await startServer(t, [], server.port);
  await until(() => clients.every((c) => c.infos.length === 2), 'every client back');

  const first = clients.map((c) => c.delays[0]);
  // Full jitter: the first waits are drawn from [0, 100 ms], so they spread over the range
  // instead of all landing at one moment (a 40-client uniform sample misses either quarter
  // with probability 1e-5).
  assert.ok(first.every((d) => d >= 0 && d <= 100), String(first));
  assert.ok(Math.min(...first) < 25 && Math.max(...first) > 75, `first waits spread: ${first}`);
  assert.ok(new Set(first).size > N / 2, `mostly distinct: ${first}`);
  for (const c of clients) {
    c.delays.forEach((d, k) => assert.ok(d <= 100 * 2 ** k, `wait ${k} of ${c.delays}: within its ceiling`));
    // The engine restarted: a new mailbox, nothing to resume.
    assert.equal(c.infos[1].recovered, false);
    assert.notEqual(c.infos[1].epoch, c.infos[0].epoch);
  }
  await publish(restarted, { to: 'crowd-7', data: 'still delivering' });
  assert.equal((await next(clients[7], 'message')).data, 'still delivering');
});

test('reconnect waits stay within their growing ceilings, and maxReconnectAttempts gives up', async (t) => {
  const server = await startServer(t);
  await server.kill(); // nobody listens there now
  for (const max of [0, 1, 5]) {
    const c = new TetherClient({
      url: server.url, token: token('nobody'), WebSocket, backoff: { baseMs: 10, maxMs: 40 }, maxReconnectAttempts: max,
    });
    const delays = [];
    c.on('disconnected', (d) => delays.push(d.delayMs));
    await assert.rejects(c.connect(), (e) => e instanceof GaveUpError && e.attempts === max);
    assert.equal(delays.length, max);
    delays.forEach((d, k) => assert.ok(d <= Math.min(40, 10 * 2 ** k), `${delays}`));
    assert.equal(c.state, 'closed');
  }
});

test('keepalive pings hold a quiet connection open; a silent one is dropped and resumed', async (t) => {
  const server = await startServer(t);
  const link = await proxy(server.addr);
  t.after(() => link.close());
  const sent = [];
  const c = client(t, server, 'quiet', {
    url: link.url, keepaliveMs: 200, idleTimeoutMs: 1000, WebSocket: recordingWebSocket(sent),
  });
  let drops = 0;
  c.on('disconnected', () => drops++);
  await c.connect();
  // Eight pings take longer than the idle timeout: the pongs keep the connection alive.
  await until(() => sent.filter((f) => f.type === 'ping').length >= 8, 'eight keepalive pings');
  assert.equal(drops, 0);

  const dropped = next(c, 'disconnected');
  const back = next(c, 'connected');
  link.freeze();
  assert.match((await dropped).reason, /^no frame from the server for \d+ ms$/);
  assert.equal((await back).recovered, true);
});
