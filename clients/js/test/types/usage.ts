// Compiled by types.test.js with `tsc --strict --noEmit`: what an editor checks for a user of
// the package. Each `@ts-expect-error` line must fail to compile, or tsc reports it unused.
import WebSocket from 'ws';
import {
  TetherClient, TetherError, HandlerError, RequestError, type ConnectedInfo, type Message, type PublishResult,
} from 'tether-client';

const client = new TetherClient({
  url: 'ws://127.0.0.1:7700/ws',
  token: async () => 'a token',
  WebSocket,
  autoAck: true,
  ackBatch: 64,
  ackDelayMs: 10,
  backoff: { baseMs: 100, maxMs: 30_000 },
  maxReconnectAttempts: Infinity,
  connectTimeoutMs: 10_000,
  keepaliveMs: 15_000,
  idleTimeoutMs: 45_000,
  requestTimeoutMs: 10_000,
  maxPendingRequests: 256,
  resume: { epoch: '00000000000000ff', seq: 3 },
});

const off = client.on('message', async (m: Message<{ text: string }>) => {
  const seq: number = m.seq;
  const text: string = m.data.text;
  if (m.stream?.last) console.log(seq, text, m.priority, m.id);
});
off();
client.on('streamAborted', (a) => console.log(a.stream, a.code, a.reason, a.seq));
client.on('state', ({ state, previous, reason }) => console.log(state, previous, reason));
client.on('connected', (info: ConnectedInfo) => console.log(info.recovered, info.missed.expired, info.missed.ids));
client.on('disconnected', (d) => console.log(d.code, d.reason, d.delayMs, d.wasConnected));
client.on('closed', ({ error }) => {
  if (error instanceof HandlerError) console.log(error.seq, error.cause);
  else if (error) console.log(error.code);
});
client.on('serverError', (e) => console.log(e.code, e.message));

async function main(): Promise<void> {
  const info = await client.connect();
  console.log(info.user, info.epoch, info.pending, info.redelivered);
  for await (const d of client.messages<number>()) {
    if (d.type === 'message') console.log(d.data + 1);
    else console.log(d.code);
    break;
  }
  client.ack(3);
  const result: PublishResult = await client.publish({ to: 'bob', data: [1, 2], priority: 'high', ttlMs: 1000, id: 'x', stream: { id: 's', part: 0 } });
  console.log(result.outcome, result.reason, result.evicted);
  const rtt: number = await client.ping();
  console.log(rtt, client.state, client.url, client.resumePoint?.seq);
  try {
    await client.publish({ to: 'bob', data: 1 });
  } catch (e) {
    if (e instanceof RequestError) console.log(e.code, e.serverCode);
    if (e instanceof TetherError) console.log(e.code);
  }
  client.reconnect();
  await client.close();
}
void main;

// @ts-expect-error: a misspelt option
new TetherClient({ url: 'ws://h', token: 't', ackbatch: 8 });
// @ts-expect-error: the token is required
new TetherClient({ url: 'ws://h' });
// @ts-expect-error: no such event
client.on('mesage', () => {});
// @ts-expect-error: no such priority
void client.publish({ to: 'bob', data: 1, priority: 'urgent' });
// @ts-expect-error: the state is read-only
client.state = 'closed';
