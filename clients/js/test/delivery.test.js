// Receiving against the real server: queuing while away, priority order, acknowledgement
// (automatic and manual), the handler and iterator APIs, streams, publish and ping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  client, next, publish, publishBatch, recordingWebSocket, startServer, until, within,
} from './helpers.js';
import { AckError, ClosedError, HandlerError, RequestError } from '../tether-client.js';

const collect = (c) => {
  const got = [];
  c.on('message', (m) => {
    got.push(m);
  });
  return got;
};

test('messages queued while the user is away arrive most urgent first, each band in order', async (t) => {
  const server = await startServer(t);
  for (const [n, priority] of [[1, 'low'], [2, 'normal'], [3, 'high'], [4, 'normal'], [5, 'critical']]) {
    assert.equal((await publish(server, { to: 'away', data: { n }, priority, id: `m-${n}` })).outcome, 'queued');
  }
  const c = client(t, server, 'away');
  const got = collect(c);
  const info = await c.connect();
  assert.equal(info.user, 'away');
  assert.equal(info.recovered, false);
  await until(() => got.length === 5, 'five messages');
  assert.deepEqual(
    got.map((m) => [m.priority, m.data.n, m.id]),
    [['critical', 5, 'm-5'], ['high', 3, 'm-3'], ['normal', 2, 'm-2'], ['normal', 4, 'm-4'], ['low', 1, 'm-1']],
  );
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4, 5]);
  assert.ok(got.every((m) => m.type === 'message'));
});

test('automatic acks go out in batches and settle everything on the server', async (t) => {
  const server = await startServer(t);
  const messages = Array.from({ length: 300 }, (_, n) => ({ to: 'batch', data: n }));
  for (let i = 0; i < messages.length; i += 100) await publishBatch(server, messages.slice(i, i + 100));
  const sent = [];
  const c = client(t, server, 'batch', { WebSocket: recordingWebSocket(sent) });
  const got = collect(c);
  await c.connect();
  await until(() => got.length === 300, '300 messages');
  await c.close();
  assert.deepEqual(got.map((m) => m.data), messages.map((m) => m.data));
  const acks = sent.filter((f) => f.type === 'ack').map((f) => f.seq);
  assert.equal(acks.at(-1), 300, 'the last ack covers the last message');
  assert.ok(acks.length < 300 / 8, `acks are batched: ${acks.length} ack frames for 300 messages`);
  assert.deepEqual([...acks].sort((a, b) => a - b), acks, 'acks only grow');

  // A fresh client (no resume point) gets nothing again: the server settled all 300.
  await publish(server, { to: 'batch', data: 'after' });
  const d = client(t, server, 'batch');
  const again = collect(d);
  const info = await d.connect();
  assert.equal(info.redelivered, 0);
  await until(() => again.length === 1, 'the next message');
  assert.deepEqual([again[0].seq, again[0].data], [301, 'after']);
});

test('a server window smaller than the ack batch does not stall delivery', async (t) => {
  const server = await startServer(t, ['--window', '4']);
  await publishBatch(server, Array.from({ length: 50 }, (_, n) => ({ to: 'narrow', data: n })));
  const c = client(t, server, 'narrow', { ackBatch: 64 });
  const got = collect(c);
  await c.connect();
  await until(() => got.length === 50, '50 messages through a window of 4');
  assert.deepEqual(got.map((m) => m.data), [...Array(50).keys()]);
});

test('manual acks: only what was acknowledged is settled; the rest comes again', async (t) => {
  const server = await startServer(t);
  await publishBatch(server, [1, 2, 3].map((n) => ({ to: 'manual', data: n })));
  const c = client(t, server, 'manual', { autoAck: false });
  const got = collect(c);
  await c.connect();
  await until(() => got.length === 3, 'three messages');
  assert.throws(() => c.ack(4), (e) => e instanceof AckError && e.code === 'not_received' && e.received === 3);
  assert.throws(() => c.ack(-1), AckError);
  c.ack(2);
  assert.deepEqual(c.resumePoint.seq, 2);

  // After a dropped connection, 3 (received, not acked) comes again; 1 and 2 do not.
  const reconnected = next(c, 'connected');
  c.reconnect();
  const info = await reconnected;
  assert.equal(info.recovered, true);
  await until(() => got.length === 4, 'the unacknowledged message again');
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 3]);
  await c.close();

  // The close acknowledged 2 only: a new client gets 3.
  const d = client(t, server, 'manual');
  const again = collect(d);
  await d.connect();
  await until(() => again.length === 1, 'message 3 for the next client');
  assert.equal(again[0].data, 3);
});

test('async handlers run one at a time, in seq order, and are acked when they settle', async (t) => {
  const server = await startServer(t);
  await publishBatch(server, Array.from({ length: 20 }, (_, n) => ({ to: 'slow', data: n })));
  const c = client(t, server, 'slow');
  let running = 0;
  let overlapped = false;
  const order = [];
  c.on('message', async (m) => {
    overlapped ||= running > 0;
    running++;
    await new Promise((r) => setTimeout(r, m.seq % 3));
    order.push(m.data);
    running--;
  });
  await c.connect();
  await until(() => order.length === 20 && c.resumePoint.seq === 20, 'twenty handled and processed');
  assert.equal(overlapped, false);
  assert.deepEqual(order, [...Array(20).keys()]);
});

test('the async iterator yields messages in order; leaving the loop counts the last one processed', async (t) => {
  const server = await startServer(t);
  await publishBatch(server, Array.from({ length: 6 }, (_, n) => ({ to: 'iter', data: n })));
  const c = client(t, server, 'iter');
  await c.connect();
  const seen = [];
  await within((async () => {
    for await (const m of c.messages()) {
      seen.push(m.data);
      if (seen.length === 4) break;
    }
  })(), 'four messages');
  assert.deepEqual(seen, [0, 1, 2, 3]);
  assert.equal(c.resumePoint.seq, 4, 'processed as the loop left');
  await c.close();

  const d = client(t, server, 'iter');
  await d.connect();
  const rest = [];
  await within((async () => {
    for await (const m of d.messages()) {
      rest.push(m.data);
      if (rest.length === 2) await d.close();
    }
  })(), 'the loop to end');
  assert.deepEqual(rest, [4, 5], 'the loop ends when the client closes');
});

test('a message handed to an iterator that is left before taking it goes to the next consumer', async (t) => {
  const server = await startServer(t);
  const c = client(t, server, 'abandoned');
  const first = c.messages();
  await c.connect();
  await publish(server, { to: 'abandoned', data: 'not taken' });
  // Long enough for the message to be handed to the first iterator (the outcome is the same
  // if it was not).
  await new Promise((r) => setTimeout(r, 100));
  await first.return();
  const second = c.messages();
  const { value } = await within(second.next(), 'the message on the second iterator');
  assert.deepEqual([value.seq, value.data], [1, 'not taken']);
  await second.return();
  await until(() => c.resumePoint.seq === 1, 'processed once the second loop left');
});

test('a handler that throws stops the client; its message is not acknowledged', async (t) => {
  const server = await startServer(t);
  await publishBatch(server, [1, 2, 3].map((n) => ({ to: 'fails', data: n })));
  const c = client(t, server, 'fails');
  c.on('message', (m) => {
    if (m.data === 2) throw new Error('cannot handle 2');
  });
  const closed = next(c, 'closed');
  await c.connect();
  const { error } = await closed;
  assert.ok(error instanceof HandlerError, String(error));
  assert.equal(error.seq, 2);
  assert.equal(error.cause.message, 'cannot handle 2');
  assert.equal(c.state, 'closed');
  assert.equal(c.resumePoint.seq, 1);

  const d = client(t, server, 'fails');
  const again = collect(d);
  await d.connect();
  await until(() => again.length === 2, 'messages 2 and 3 for the next client');
  assert.deepEqual(again.map((m) => m.data), [2, 3]);
});

test('streams: parts published out of order arrive in order; an abort marker follows the delivered parts', async (t) => {
  const server = await startServer(t);
  for (const part of [3, 1, 0, 4, 2]) {
    await publish(server, { to: 'streams', data: `part ${part}`, stream: { id: 'answer', part, last: part === 4 } });
  }
  const c = client(t, server, 'streams');
  const got = [];
  c.on('message', (m) => got.push(m));
  c.on('streamAborted', (a) => got.push(a));
  await c.connect();
  await until(() => got.length === 5, 'five parts');
  assert.deepEqual(got.map((m) => [m.stream.id, m.stream.part, m.stream.last, m.data]), [
    ['answer', 0, false, 'part 0'], ['answer', 1, false, 'part 1'], ['answer', 2, false, 'part 2'],
    ['answer', 3, false, 'part 3'], ['answer', 4, true, 'part 4'],
  ]);

  // A stream whose TTL passes after its first part was delivered ends with a marker.
  await publish(server, { to: 'streams', data: 'begun', stream: { id: 'cut', part: 0, last: false }, ttl_ms: 200 });
  await until(() => got.length === 7, 'the part and its abort marker');
  assert.deepEqual(got.slice(5).map((x) => [x.type, x.seq]), [['message', 6], ['stream_aborted', 7]]);
  assert.deepEqual([got[6].stream, got[6].code], ['cut', 'expired']);
  await c.close();

  // While away, in a mailbox that holds 2: a third message evicts the oldest, aborting its
  // stream as a whole.
  const small = await startServer(t, ['--max-messages-per-user', '2']);
  for (const part of [0, 1]) await publish(small, { to: 'away', data: part, stream: { id: 'big', part, last: false } });
  assert.equal((await publish(small, { to: 'away', data: 'newer' })).evicted, 2);
  const d = client(t, small, 'away');
  const seen = [];
  d.on('message', (m) => seen.push(m));
  d.on('streamAborted', (a) => seen.push(a));
  await d.connect();
  await until(() => seen.length === 2, 'the marker and the newer message');
  assert.deepEqual(seen.map((x) => [x.type, x.stream ?? null, x.code ?? x.data]), [
    ['stream_aborted', 'big', 'overflow'], ['message', null, 'newer'],
  ]);
});

test('publish resolves with the outcome; bad input and server refusals reject with RequestError', async (t) => {
  const server = await startServer(t, ['--allow-client-publish']);
  const alice = client(t, server, 'alice');
  await assert.rejects(alice.publish({ to: 'bob', data: 1 }), (e) => e instanceof RequestError && e.code === 'not_connected');
  await alice.connect();
  assert.deepEqual(await alice.publish({ to: 'bob', data: { hi: 1 }, priority: 'high', id: 'p-1', ttlMs: 60000 }), { outcome: 'queued' });
  assert.deepEqual(await alice.publish({ to: 'bob', data: { hi: 1 }, id: 'p-1' }), { outcome: 'duplicate' });
  await assert.rejects(alice.publish({ to: 'bob', data: 1, priority: 'urgent' }), (e) => e.code === 'invalid_publish');
  await assert.rejects(alice.publish({ to: 'bob', data: undefined }), (e) => e.code === 'invalid_publish');
  await assert.rejects(
    alice.publish({ to: 'bob', data: 1, id: 'x'.repeat(300) }),
    (e) => e instanceof RequestError && e.code === 'refused' && e.serverCode === 'invalid_field',
  );
  const rtt = await alice.ping();
  assert.ok(Number.isFinite(rtt) && rtt >= 0);

  const bob = client(t, server, 'bob');
  const got = collect(bob);
  await bob.connect();
  await until(() => got.length === 1, 'the published message');
  assert.deepEqual([got[0].data, got[0].priority, got[0].id], [{ hi: 1 }, 'high', 'p-1']);

  const closedServer = await startServer(t);
  const carol = client(t, closedServer, 'carol');
  await carol.connect();
  assert.deepEqual(await carol.publish({ to: 'dave', data: 1 }), { outcome: 'rejected', reason: 'publish_not_allowed' });
});

test('maxPendingRequests bounds requests awaiting an answer', async (t) => {
  const server = await startServer(t);
  const one = client(t, server, 'pending-1', { maxPendingRequests: 1 });
  await one.connect();
  const first = one.ping();
  await assert.rejects(one.ping(), (e) => e.code === 'too_many_requests');
  await first;
  const two = client(t, server, 'pending-2', { maxPendingRequests: 2 });
  await two.connect();
  await Promise.all([two.ping(), two.ping()]);
});

test('close() is final', async (t) => {
  const server = await startServer(t);
  const c = client(t, server, 'final');
  const states = [];
  c.on('state', (s) => states.push(s.state));
  let closedEvents = 0;
  c.on('closed', ({ error }) => {
    closedEvents++;
    assert.equal(error, null);
  });
  await c.connect();
  await Promise.all([c.close(), c.close()]);
  assert.equal(c.state, 'closed');
  assert.deepEqual(states, ['connecting', 'connected', 'closed']);
  assert.equal(closedEvents, 1);
  await assert.rejects(c.connect(), ClosedError);
  await assert.rejects(c.publish({ to: 'x', data: 1 }), ClosedError);
  await assert.rejects(c.ping(), ClosedError);
  const it = c.messages();
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  // The user is away now: a publish is queued, not delivered.
  assert.equal((await publish(server, { to: 'final', data: 1 })).outcome, 'queued');
});

test('every device of a user gets every message, each with its own seqs', async (t) => {
  const server = await startServer(t);
  const phone = client(t, server, 'dev', { device: 'phone' });
  const laptop = client(t, server, 'dev', { device: 'laptop' });
  const [onPhone, onLaptop] = [collect(phone), collect(laptop)];
  assert.equal((await phone.connect()).device, 'phone');
  assert.equal((await laptop.connect()).device, 'laptop');
  const outcome = await publish(server, { to: 'dev', data: 'both' });
  assert.deepEqual(outcome, { outcome: 'fanout', delivered: 2, queued: 0, dropped: 0 });
  await until(() => onPhone.length === 1 && onLaptop.length === 1, 'one message on each device');
  assert.deepEqual([onPhone[0].seq, onPhone[0].data], [1, 'both']);
  assert.deepEqual([onLaptop[0].seq, onLaptop[0].data], [1, 'both']);
});
