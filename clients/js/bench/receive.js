// Messages per second that one tether-client receives, on the load `tether-load` makes for one
// client, so the two clients can be compared on one server:
//
//   target/release/tether serve --listen 127.0.0.1:0 --jwt-secret "$S" --api-key "$K" &
//   target/release/tether-load --url ws://ADDR --jwt-secret "$S" --api-key "$K" \
//       --clients 1 --publishers 4 --batch 64 --duration 10s --json
//   node bench/receive.js --url ws://ADDR --jwt-secret "$S" --api-key "$K" \
//       --publishers 4 --batch 64 --duration 10s
//
// Like tether-load: publishers POST batches to /api/publish_batch over keep-alive HTTP, one
// request in flight each, each message `{"r","u","p","n","t","pad"}` padded to --payload-bytes;
// the client (auto-ack) checks every message; after publishing, a drain of at most 5 s lets
// the last ones arrive; the rate is delivered / (publishing + drain). The publishers run in
// worker threads, as tether-load's run on other threads than its clients.
//
// With --backlog N instead, N messages are queued while the user is away and the rate is how
// fast the client takes the backlog: from connect() to the last message (client-bound). The
// server must hold them: --max-messages-per-user N --max-bytes-per-user 256MiB.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const USER = 'bench-0';

function stamp(run, p, n, start, pad) {
  const t = Math.round((performance.now() - start) * 1000);
  return `{"r":${run},"u":0,"p":${p},"n":${n},"t":${t},"pad":"${pad}"}`;
}

async function post(http, apiKey, path, body) {
  const res = await fetch(`${http}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body,
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${path} answered ${res.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text);
}

// One publisher: batches until the deadline; reports the numbers the server accepted.
async function publisher({ http, apiKey, p, run, batch, deadline, start, pad, budget }) {
  const accepted = [];
  let n = 0;
  while (Date.now() < deadline && n < budget) {
    const count = Math.min(batch, budget - n);
    const numbers = Array.from({ length: count }, () => n++);
    const messages = numbers.map((k) => `{"to":"${USER}","data":${stamp(run, p, k, start, pad)}}`);
    const { results } = await post(http, apiKey, '/api/publish_batch', `{"messages":[${messages.join(',')}]}`);
    results.forEach((r, i) => {
      if (r.outcome === 'delivered' || r.outcome === 'queued') accepted.push(numbers[i]);
    });
  }
  return accepted;
}

if (!isMainThread) {
  parentPort.postMessage(await publisher({ ...workerData, start: performance.now() }));
} else {
  await main();
}

async function main() {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      'jwt-secret': { type: 'string', default: process.env.TETHER_JWT_SECRET },
      'api-key': { type: 'string', default: process.env.TETHER_API_KEY },
      publishers: { type: 'string', default: '4' },
      batch: { type: 'string', default: '64' },
      duration: { type: 'string', default: '10s' },
      'payload-bytes': { type: 'string', default: '64' },
      backlog: { type: 'string' },
    },
  });
  if (!values.url || !values['jwt-secret'] || !values['api-key']) {
    console.error('usage: node bench/receive.js --url ws://HOST:PORT --jwt-secret S --api-key K [--publishers 4] [--batch 64] [--duration 10s] [--payload-bytes 64] [--backlog N]');
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
  const seconds = Number(values.duration.replace(/s$/, ''));
  const pad = 'x'.repeat(Math.max(0, Number(values['payload-bytes']) - 64));
  const run = Math.floor(Math.random() * 2 ** 31);

  // What the client received: per publisher, the numbers seen.
  const seen = Array.from({ length: publishers }, () => new Set());
  let delivered = 0;
  let duplicates = 0;
  let lastAt = 0;
  const client = new TetherClient({ url: values.url, token: token(USER, undefined, values['jwt-secret']), WebSocket });
  client.on('message', (m) => {
    const d = m.data;
    if (d.r !== run) return; // an earlier run's leftovers
    const set = seen[d.p];
    if (set.has(d.n)) duplicates++;
    else {
      set.add(d.n);
      delivered++;
      lastAt = performance.now();
    }
  });

  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const drain = async (expected, limitMs) => {
    const until = performance.now() + limitMs;
    while (delivered < expected && performance.now() < until) await wait(5);
  };

  let report;
  if (values.backlog) {
    const total = Number(values.backlog);
    const budget = Math.ceil(total / publishers);
    const start = performance.now();
    const accepted = await Promise.all(Array.from({ length: publishers }, (_, p) =>
      publisher({ http, apiKey, p, run, batch, deadline: Infinity, start, pad, budget })));
    const published = accepted.reduce((a, x) => a + x.length, 0);
    const began = performance.now();
    await client.connect();
    await drain(published, 60000);
    const secs = (lastAt - began) / 1000;
    report = { mode: 'backlog', published, delivered, duplicates, lost: published - delivered, elapsed_secs: secs, delivery_rate: delivered / secs };
  } else {
    await client.connect();
    const began = performance.now();
    const deadline = Date.now() + seconds * 1000;
    const workers = Array.from({ length: publishers }, (_, p) => new Promise((resolve, reject) => {
      const w = new Worker(new URL(import.meta.url), {
        workerData: { http, apiKey, p, run, batch, deadline, pad, budget: Infinity },
      });
      w.once('message', resolve);
      w.once('error', reject);
    }));
    const accepted = await Promise.all(workers);
    const published = accepted.reduce((a, x) => a + x.length, 0);
    await drain(published, 5000);
    const secs = (performance.now() - began) / 1000;
    report = { mode: 'live', published, delivered, duplicates, lost: published - delivered, elapsed_secs: secs, delivery_rate: delivered / secs };
  }
  await client.close();
  console.log(`delivered ${report.delivered} of ${report.published} in ${report.elapsed_secs.toFixed(2)} s: ${Math.round(report.delivery_rate)} messages/s; lost ${report.lost}, duplicates ${report.duplicates}`);
  console.log(JSON.stringify(report));
  process.exit(report.lost || report.duplicates ? 1 : 0);
}
