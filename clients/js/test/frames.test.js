// What the client does with frames and closes the real server does not send on demand: a
// scripted WebSocket server on 127.0.0.1 port 0 plays the server's part. (Everything the real
// server can be made to do is tested against it in the other files.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';
import { ProtocolError, TetherClient } from '../tether-client.js';
import { next, startServer, token, until, client as realClient } from './helpers.js';

const CONNECTED = { type: 'connected', user: 'u', epoch: '00000000000000aa', recovered: false, redelivered: 0, pending: 0, missed: { expired: 0, evicted: 0, rejected: 0, shed: 0, deduplicated: 0, ids: [] } };

/** A server that runs `script(socket, connectFrame, n)` for the n-th connection (from 0). */
async function scripted(t, script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.once('listening', resolve));
  let n = 0;
  wss.on('connection', (socket) => {
    const i = n++;
    socket.once('message', (data) => script(socket, JSON.parse(data), i));
  });
  t.after(() => {
    for (const s of wss.clients) s.terminate();
    return new Promise((resolve) => wss.close(resolve));
  });
  return `ws://127.0.0.1:${wss.address().port}/ws`;
}

const make = (t, url, options = {}) => {
  const c = new TetherClient({ url, token: 't', WebSocket, ...options });
  t.after(() => c.close());
  return c;
};

test('a first frame other than `connected` stops the client with ProtocolError', async (t) => {
  const url = await scripted(t, (s) => s.send('{"type":"message","seq":1,"priority":"normal","data":1}'));
  const c = make(t, url);
  await assert.rejects(c.connect(), (e) => e instanceof ProtocolError && /before `connected`/.test(e.message));
  assert.equal(c.state, 'closed');
});

test('a delivery the client cannot read stops it, rather than let a later ack settle it unseen', async (t) => {
  for (const bad of [
    '{"type":"message","seq":"2","priority":"normal","data":1}',
    '{"type":"message","seq":2,"priority":"urgent","data":1}',
    '{"type":"message","seq":2,"priority":"normal"}',
    '{"type":"stream_aborted","seq":2,"code":"expired"}',
    'not json',
  ]) {
    const url = await scripted(t, (s) => {
      s.send(JSON.stringify(CONNECTED));
      s.send('{"type":"message","seq":1,"priority":"normal","data":"fine"}');
      s.send(bad);
    });
    const c = make(t, url);
    const got = [];
    c.on('message', (m) => got.push(m.data));
    const closed = next(c, 'closed');
    await c.connect();
    const { error } = await closed;
    assert.ok(error instanceof ProtocolError, `${bad}: ${error}`);
    assert.deepEqual(got, ['fine'], bad);
  }
});

test('unknown frame types are ignored; an error frame for no request is a serverError event', async (t) => {
  const url = await scripted(t, (s) => {
    s.send(JSON.stringify(CONNECTED));
    s.send('{"type":"something_newer","seq":"whatever"}');
    s.send('{"type":"error","code":"invalid_ack","message":"field `seq` is invalid"}');
    s.send('{"type":"message","seq":1,"priority":"critical","id":"m","stream":{"id":"s","part":0,"last":true},"data":null,"extra":1}');
  });
  const c = make(t, url);
  const errors = [];
  c.on('serverError', (e) => errors.push(e));
  const message = next(c, 'message');
  await c.connect();
  assert.deepEqual(await message, { type: 'message', seq: 1, priority: 'critical', id: 'm', stream: { id: 's', part: 0, last: true }, data: null });
  assert.deepEqual(errors, [{ code: 'invalid_ack', message: 'field `seq` is invalid' }]);
  assert.equal(c.state, 'connected');
});

test('a binary frame or a second `connected` drops the connection and the client reconnects', async (t) => {
  const url = await scripted(t, (s, _, i) => {
    s.send(JSON.stringify(CONNECTED));
    if (i === 0) s.send(Buffer.from([1, 2, 3]));
    if (i === 1) s.send(JSON.stringify(CONNECTED));
  });
  const c = make(t, url, { backoff: { baseMs: 1, maxMs: 1 } });
  const reasons = [];
  c.on('disconnected', (d) => reasons.push(d.reason));
  let connects = 0;
  c.on('connected', () => connects++);
  await c.connect();
  await until(() => connects === 3, 'the third connection');
  assert.deepEqual(reasons, ['a binary frame from the server', 'a second `connected` frame']);
});

test('the backoff grows while connections fail quickly and starts over after one stayed up', async (t) => {
  // Every connection is closed right after `connected`, except the third, which stays 2.2 s.
  const url = await scripted(t, (s, _, i) => {
    s.send(JSON.stringify(CONNECTED));
    setTimeout(() => s.close(1001, 'going away'), i === 2 ? 2200 : 0);
  });
  const random = Math.random;
  Math.random = () => 1; // the waits are then their ceilings
  t.after(() => (Math.random = random));
  const c = make(t, url, { backoff: { baseMs: 10, maxMs: 1000 } });
  const delays = [];
  c.on('disconnected', (d) => delays.push(d.delayMs));
  await c.connect();
  await until(() => delays.length === 5, 'five disconnects');
  assert.deepEqual(delays, [10, 20, 10, 20, 40]);
});

test('close 4003 from the real server stops the client with ProtocolError', async (t) => {
  const server = await startServer(t);
  let broken = false;
  const c = realClient(t, server, 'violator', {
    WebSocket: class extends WebSocket {
      send(data) {
        super.send(broken ? 'this is not JSON' : data);
      }
    },
  });
  await c.connect();
  const closed = next(c, 'closed');
  broken = true;
  c.ping().catch(() => {});
  const { error } = await closed;
  assert.ok(error instanceof ProtocolError, String(error));
  assert.match(error.message, /4003/);
});

test('connect() keeps trying while the server is not up yet', async (t) => {
  const server = await startServer(t);
  const port = server.port;
  await server.kill();
  const c = new TetherClient({ url: server.url, token: token('early'), WebSocket, backoff: { baseMs: 20, maxMs: 100 } });
  t.after(() => c.close());
  const connected = c.connect();
  await next(c, 'disconnected');
  await startServer(t, [], port);
  const info = await connected;
  assert.equal(info.user, 'early');
});
