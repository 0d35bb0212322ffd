// Messages per second that one tether-client receives, on the load `tether-load` makes for one
// client, so the JavaScript and the Rust client can be compared on one server:
//
//   target/release/tether serve --listen 127.0.0.1:0 --jwt-secret "$S" --api-key "$K" \
//       --max-messages-per-user 200000 --max-bytes-per-user 256MiB &
//   target/release/tether-load --url ws://ADDR --jwt-secret "$S" --api-key "$K" \
//       --clients 1 --publishers 4 --batch 64 --rate 40000 --duration 10s --json
//   node bench/receive.js --url ws://ADDR --jwt-secret "$S" --api-key "$K" \
//       --publishers 4 --batch 64 --rate 40000 --duration 10s
//
// As tether-load does: publishers POST batches to /api/publish_batch over keep-alive HTTP, one
// request in flight each (spaced to --rate, all publishers together, if given), each message
// `{"r","u","p","n","t","pad"}` padded to --payload-bytes; the client (auto-ack) checks every
// message for loss and duplicates; after publishing, a drain of at most 5 s lets the last ones
// arrive; the rate is delivered / (publishing + drain) and the latency is from just before the
// publish request to the arrival. The publishers run in worker threads, as tether-load's run
// on other threads than its client. Node's publishers are slower than tether-load's, so
// without --rate this measures them rather than the client: compare at a rate both reach.
//
// With --backlog N instead, N messages are queued while the user is away and the rate is how
// fast the client takes the backlog: from connect() to the last message. Only the client and
// the server work then.
import { Agent, request } from 'node:http';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import WebSocket from 'ws';

const USER = 'bench-0';
// Microseconds on a clock the worker threads share.
const now = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

// One keep-alive connection per publisher (node:http: fetch costs more per request).
function post(agent, http, apiKey, body) {
  return new Promise((resolve, reject) => {
    const headers = { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    const req = request(`${http}/api/publish_batch`, { method: 'POST', agent, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (text += chunk));
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`publish_batch answered ${res.statusCode}: ${text.slice(0, 200)}`));
        else resolve(JSON.parse(text).results);
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

// One publisher: batches until the deadline or its budget; the numbers the server accepted.
async function publisher({ http, apiKey, p, run, batch, deadline, pad, budget, interval }) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const accepted = [];
  let n = 0;
  let nextAt = performance.now();
  while (Date.now() < deadline && n < budget) {
    if (interval) {
      const wait = nextAt - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      nextAt += interval;
    }
    const count = Math.min(batch, budget - n);
    const numbers = Array.from({ length: count }, () => n++);
    const t = now();
    const body = numbers.map((k) => `{"to":"${USER}","data":{"r":${run},"u":0,"p":${p},"n":${k},"t":${t},"pad":"${pad}"}}`);
    const results = await post(agent, http, apiKey, `{"messages":[${body.join(',')}]}`);
    results.forEach((r, i) => {
      if (r.outcome === 'delivered' || r.outcome === 'queued') accepted.push(numbers[i]);
    });
  }
  agent.destroy();
  return accepted;
}

if (!isMainThread) {
  // Started before the clock runs: the main thread sends the deadline when all are ready.
  parentPort.once('message', async (deadline) => parentPort.postMessage(await publisher({ ...workerData, deadline })));
  parentPort.postMessage('ready');
} else await main();

async function main() {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      'jwt-secret': { type: 'string', default: process.env.TETHER_JWT_SECRET },
      'api-key': { type: 'string', default: process.env.TETHER_API_KEY },
      publishers: { type: 'string', default: '4' },
      batch: { type: 'string', default: '64' },
      rate: { type: 'string' },
      duration: { type: 'string', default: '10s' },
      'payload-bytes': { type: 'string', default: '64' },
      backlog: { type: 'string' },
    },
  });
  if (!values.url || !values['jwt-secret'] || !values['api-key'] || !/^\d+s$/.test(values.duration)) {
    console.error('usage: node bench/receive.js --url ws://HOST:PORT --jwt-secret S --api-key K [--publishers 4] [--batch 64] [--rate R] [--duration 10s] [--payload-bytes 64] [--backlog N]');
    process.exit(2);
  }
  const { TetherClient } = await import('../tether-client.js');
  const { token } = await import('../test/helpers.js');
  const url = new URL(values.url);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) throw new Error('loopback servers only');
  const http = `http://${url.host}`;
  const apiKey = values['api-key'];
  const publishers = Number(values.publishers);
  const batch = Number(values.batch);
  const pad = 'x'.repeat(Math.max(0, Number(values['payload-bytes']) - 64));
  const run = Math.floor(Math.random() * 2 ** 31);

  const seen = Array.from({ length: publishers }, () => new Set());
  const latencies = [];
  let delivered = 0;
  let duplicates = 0;
  let lastAt = 0;
  const client = new TetherClient({ url: values.url, token: token(USER, undefined, values['jwt-secret']), WebSocket });
  client.on('message', (m) => {
    const d = m.data;
    if (d.r !== run) return; // left over from an earlier run
    const set = seen[d.p];
    if (set.has(d.n)) return void duplicates++;
    set.add(d.n);
    delivered++;
    lastAt = performance.now();
    latencies.push(now() - d.t);
  });
  const drain = async (expected, limitMs) => {
    const until = performance.now() + limitMs;
    while (delivered < expected && performance.now() < until) await new Promise((r) => setTimeout(r, 5));
  };

  let published;
  let secs;
  let publishSecs;
  if (values.backlog) {
    const budget = Math.ceil(Number(values.backlog) / publishers);
    const accepted = await Promise.all(Array.from({ length: publishers }, (_, p) =>
      publisher({ http, apiKey, p, run, batch, deadline: Infinity, pad, budget })));
    published = accepted.reduce((a, x) => a + x.length, 0);
    const began = performance.now();
    await client.connect();
    await drain(published, 60000);
    secs = (lastAt - began) / 1000;
    latencies.length = 0; // queued on purpose: not a latency
  } else {
    await client.connect();
    const interval = values.rate ? (batch / (Number(values.rate) / publishers)) * 1000 : 0;
    const workers = await Promise.all(Array.from({ length: publishers }, (_, p) => new Promise((resolve, reject) => {
      const w = new Worker(new URL(import.meta.url), { workerData: { http, apiKey, p, run, batch, pad, budget: Infinity, interval } });
      w.once('message', () => resolve(w));
      w.once('error', reject);
    })));
    const began = performance.now();
    const deadline = Date.now() + Number(values.duration.slice(0, -1)) * 1000;
    const accepted = await Promise.all(workers.map((w) => new Promise((resolve) => {
      w.once('message', resolve);
      w.postMessage(deadline);
    })));
    publishSecs = (performance.now() - began) / 1000;
    published = accepted.reduce((a, x) => a + x.length, 0);
    await drain(published, 5000);
    secs = (performance.now() - began) / 1000;
  }
  await client.close();
  latencies.sort((a, b) => a - b);
  const pct = (q) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : null);
  const report = {
    mode: values.backlog ? 'backlog' : 'live',
    published, delivered, duplicates, lost: published - delivered,
    publish_rate: publishSecs ? published / publishSecs : null,
    elapsed_secs: secs, delivery_rate: delivered / secs,
    latency: { p50_us: pct(0.5), p90_us: pct(0.9), p99_us: pct(0.99), max_us: pct(1) },
  };
  console.log(`delivered ${delivered} of ${published} in ${secs.toFixed(2)} s: ${Math.round(report.delivery_rate)} messages/s; lost ${report.lost}, duplicates ${duplicates}`);
  console.log(JSON.stringify(report));
  process.exit(report.lost || duplicates ? 1 : 0);
}
