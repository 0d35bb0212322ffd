// Options are checked when the client is created: every limit refused just past its edge and
// accepted at it, with a ConfigError naming the option.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { ConfigError, TetherClient } from '../tether-client.js';

const base = { url: 'ws://127.0.0.1:7700', token: 't', WebSocket };
const make = (options) => new TetherClient({ ...base, ...options });
const refused = (options, setting) =>
  assert.throws(() => make(options), (e) => e instanceof ConfigError && e.code === 'config' && e.setting === setting, JSON.stringify(options));

test('URLs are normalised; other schemes and credentials are refused', () => {
  for (const [url, normal] of [
    ['ws://127.0.0.1:7700', 'ws://127.0.0.1:7700/ws'],
    ['ws://localhost/', 'ws://localhost/ws'],
    ['ws://[::1]:9/x?y=1', 'ws://[::1]:9/x?y=1'],
    ['http://h:1/tether/ws', 'ws://h:1/tether/ws'],
    ['https://h', 'wss://h/ws'],
    ['wss://h/ws#frag', 'wss://h/ws'],
  ]) {
    assert.equal(make({ url }).url, normal);
  }
  // Node has no page to resolve a path against.
  for (const url of ['', 'ftp://h/ws', 'ws://u:p@h/ws', '/ws', 7700]) refused({ url }, 'url');
});

test('the token is a non-empty string or a function', () => {
  make({ token: async () => 't' });
  for (const token of ['', undefined, 5, {}]) refused({ token }, 'token');
});

test('a WebSocket implementation is needed where the runtime has none', () => {
  refused({ WebSocket: 'ws' }, 'WebSocket');
  if (typeof globalThis.WebSocket === 'function') make({ WebSocket: undefined });
  else refused({ WebSocket: undefined }, 'WebSocket');
});

test('counts and durations are refused just below their minimum and accepted at it', () => {
  const edges = [
    ['ackBatch', 1], ['ackDelayMs', 0], ['connectTimeoutMs', 1], ['keepaliveMs', 1],
    ['requestTimeoutMs', 1], ['maxPendingRequests', 1], ['maxReconnectAttempts', 0],
  ];
  for (const [setting, min] of edges) {
    make({ [setting]: min });
    refused({ [setting]: min - 1 }, setting);
    refused({ [setting]: min + 0.5 }, setting);
  }
  make({ maxReconnectAttempts: Infinity });
  make({ keepaliveMs: 1000, idleTimeoutMs: 1001 });
  refused({ keepaliveMs: 1000, idleTimeoutMs: 1000 }, 'idleTimeoutMs');
  refused({ autoAck: 'yes' }, 'autoAck');
});

test('backoff needs 0 < baseMs <= maxMs', () => {
  make({ backoff: { baseMs: 1, maxMs: 1 } });
  make({ backoff: { baseMs: 500 } });
  refused({ backoff: { baseMs: 0 } }, 'backoff');
  refused({ backoff: { baseMs: 10, maxMs: 9 } }, 'backoff');
  refused({ backoff: { baseMs: 10, maxMs: Infinity } }, 'backoff');
});

test('a resume point needs an epoch of 16 hex digits and a seq', () => {
  const c = make({ resume: { epoch: '00000000000000ff', seq: 7 } });
  assert.deepEqual(c.resumePoint, { epoch: '00000000000000ff', seq: 7 });
  assert.equal(make({}).resumePoint, null);
  refused({ resume: { epoch: 'ff', seq: 7 } }, 'resume');
  refused({ resume: { epoch: '00000000000000ff', seq: -1 } }, 'resume');
});

test('a device is a non-empty string, or unset for the default device', () => {
  make({ device: 'phone' });
  make({ device: null });
  refused({ device: '' }, 'device');
  refused({ device: 7 }, 'device');
});

test('an unknown option is refused by name, so a typo never falls back to a default', () => {
  refused({ ackbatch: 8 }, 'ackbatch');
  assert.throws(() => new TetherClient(), ConfigError);
});

test('a new client is disconnected until connect()', () => {
  const c = make({});
  assert.equal(c.state, 'disconnected');
  assert.throws(() => c.on('message', 'not a function'), TypeError);
});
