// tether-client: the client of the tether server's WebSocket protocol v1 (docs/protocol.md in
// the tether repository), for browsers and Node 20+. One module, no dependencies.
//
// The delivery rules follow the Rust client (`tether::client`): the client keeps one number,
// *processed*, the highest seq the application has finished with in the mailbox's epoch. Every
// connection resumes from it, so the server sends again exactly what was not processed; a
// delivery at or below it is dropped, so the application never sees a message twice; acks
// carry it to the server in batches and only free the server's copies.

const PRIORITIES = ['critical', 'high', 'normal', 'low'];
// A connection that stayed up this long was a success: the backoff starts over.
const STABLE_AFTER_MS = 2000;
// How long close() waits for the server's close frame.
const CLOSE_TIMEOUT_MS = 2000;
// Longest wait a 4100's retry_after_ms may impose (as the Rust client).
const MAX_RETRY_AFTER_MS = 600000;
// Longest jitter before a reconnect that `online` or `visibilitychange` brought forward.
const WAKE_JITTER_MS = 1000;

const DEFAULTS = {
  WebSocket: undefined,
  autoAck: true,
  ackBatch: 64,
  ackDelayMs: 10,
  backoff: undefined,
  maxReconnectAttempts: Infinity,
  connectTimeoutMs: 10000,
  keepaliveMs: 15000,
  idleTimeoutMs: 45000,
  requestTimeoutMs: 10000,
  maxPendingRequests: 256,
  resume: undefined,
  device: undefined,
};

/** The base of every error this client throws or reports; `code` is stable. */
export class TetherError extends Error {
  constructor(code, message, fields) {
    super(message);
    this.code = code;
    Object.assign(this, fields);
  }
}

// Explicit names: a minifier renames classes, and `err.name` is what a log shows.
const named = (name) => {
  const C = class extends TetherError {};
  Object.defineProperty(C.prototype, 'name', { value: name });
  return C;
};
Object.defineProperty(TetherError.prototype, 'name', { value: 'TetherError' });
export const ConfigError = named('ConfigError');
export const UnauthorizedError = named('UnauthorizedError');
export const ReplacedError = named('ReplacedError');
export const ProtocolError = named('ProtocolError');
export const GaveUpError = named('GaveUpError');
export const ClosedError = named('ClosedError');
export const HandlerError = named('HandlerError');
export const RequestError = named('RequestError');
export const AckError = named('AckError');

const configError = (setting, reason) =>
  new ConfigError('config', `tether-client option \`${setting}\` ${reason}`, { setting });
const closedError = () =>
  new ClosedError('closed', 'the client is closed: create a new TetherClient to connect again');
const isSeq = (n) => Number.isSafeInteger(n) && n >= 0;
const isEpoch = (e) => typeof e === 'string' && /^[0-9a-f]{16}$/i.test(e);
const text = (e) => (e instanceof Error ? e.message : String(e));
const isThenable = (v) => v != null && typeof v.then === 'function';
// What an iterator's consumer resolves with when it gave an item back unseen.
const UNSEEN = Symbol('unseen');

function checkOptions(options) {
  if (!options || typeof options !== 'object') throw configError('options', 'must be an object');
  for (const key of Object.keys(options)) {
    if (!(key in DEFAULTS) && key !== 'url' && key !== 'token') {
      throw configError(key, 'is not an option of this client');
    }
  }
  const o = { ...DEFAULTS };
  for (const key in options) if (options[key] !== undefined) o[key] = options[key];
  if (typeof options.url !== 'string' || !options.url) throw configError('url', 'must be a non-empty string');
  o.url = wsUrl(options.url);
  const token = options.token;
  if (!(typeof token === 'function' || (typeof token === 'string' && token))) {
    throw configError('token', 'must be a non-empty string or a function returning one');
  }
  o.token = token;
  o.WebSocket ??= globalThis.WebSocket;
  if (typeof o.WebSocket !== 'function') {
    throw configError(
      'WebSocket',
      'is needed: this runtime has no global WebSocket (Node 20); pass one, e.g. `WebSocket` from the ws package',
    );
  }
  const integer = (key, min) => {
    if (!(Number.isSafeInteger(o[key]) && o[key] >= min)) {
      throw configError(key, `must be an integer of at least ${min}, not ${o[key]}`);
    }
  };
  integer('ackBatch', 1);
  integer('ackDelayMs', 0);
  integer('connectTimeoutMs', 1);
  integer('keepaliveMs', 1);
  integer('idleTimeoutMs', o.keepaliveMs + 1);
  integer('requestTimeoutMs', 1);
  integer('maxPendingRequests', 1);
  if (o.maxReconnectAttempts !== Infinity) integer('maxReconnectAttempts', 0);
  if (typeof o.autoAck !== 'boolean') throw configError('autoAck', 'must be true or false');
  const b = { baseMs: 100, maxMs: 30000, ...o.backoff };
  if (!(b.baseMs > 0 && b.maxMs >= b.baseMs && Number.isFinite(b.maxMs))) {
    throw configError('backoff', 'needs 0 < baseMs <= maxMs, both finite');
  }
  o.backoff = b;
  if (o.device != null && !(typeof o.device === 'string' && o.device !== '')) {
    throw configError('device', 'must be a non-empty string (leave it unset for the default device)');
  }
  const r = o.resume;
  if (r != null && !(isEpoch(r.epoch) && isSeq(r.seq))) {
    throw configError('resume', 'must be { epoch: 16 hex digits, seq: integer >= 0 } (from `resumePoint`)');
  }
  return o;
}

function wsUrl(url) {
  let u;
  try {
    u = new URL(url, globalThis.location?.href);
  } catch {
    throw configError('url', `is not a URL: ${JSON.stringify(url)}`);
  }
  if (u.protocol === 'http:' || u.protocol === 'https:') u.protocol = u.protocol === 'http:' ? 'ws:' : 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw configError('url', `must be ws://, wss://, http(s):// or a path on the page's origin, not ${u.protocol}//`);
  }
  if (u.username || u.password) throw configError('url', 'must not carry credentials: use the token');
  if (u.pathname === '/') u.pathname = '/ws';
  u.hash = '';
  return u.href;
}

function retryAfterMs(reason) {
  try {
    const ms = JSON.parse(reason).retry_after_ms;
    if (isSeq(ms)) return Math.min(ms, MAX_RETRY_AFTER_MS);
  } catch {
    // A 4100 without a readable reason still means "not now".
  }
  return 1000;
}

function connectedInfo(f) {
  const m = f.missed;
  const counts = ['expired', 'evicted', 'rejected', 'shed', 'deduplicated'];
  if (
    typeof f.user !== 'string' || !isEpoch(f.epoch) || typeof f.recovered !== 'boolean' ||
    !isSeq(f.redelivered) || !isSeq(f.pending) || !m || typeof m !== 'object'
  ) return null;
  const missed = { ids: Array.isArray(m.ids) ? m.ids.filter((id) => typeof id === 'string') : [] };
  for (const c of counts) missed[c] = isSeq(m[c]) ? m[c] : 0;
  if (typeof m.reset === 'string') missed.reset = m.reset;
  const { user, epoch, recovered, redelivered, pending } = f;
  const info = { user, epoch, recovered, redelivered, pending, missed };
  if (typeof f.device === 'string') info.device = f.device;
  return info;
}

function delivery(f) {
  if (!isSeq(f.seq)) return null;
  if (f.type === 'stream_aborted') {
    const { seq, stream, code, reason } = f;
    if (typeof stream !== 'string' || typeof code !== 'string') return null;
    return { type: 'stream_aborted', seq, stream, code, reason: typeof reason === 'string' ? reason : code };
  }
  if (!PRIORITIES.includes(f.priority) || !('data' in f)) return null;
  const m = { type: 'message', seq: f.seq, priority: f.priority, data: f.data };
  if (f.id != null) {
    if (typeof f.id !== 'string') return null;
    m.id = f.id;
  }
  if (f.stream != null) {
    const s = f.stream;
    if (typeof s.id !== 'string' || !isSeq(s.part)) return null;
    m.stream = { id: s.id, part: s.part, last: s.last === true };
  }
  return m;
}

function publishFrame(p, ref) {
  const bad = (reason) => new RequestError('invalid_publish', `publish: ${reason}`);
  if (!p || typeof p !== 'object') throw bad('expected { to, data, ... }');
  if (typeof p.to !== 'string' || !p.to) throw bad('`to` must be a non-empty user id');
  const data = JSON.stringify(p.data);
  if (data === undefined) throw bad('`data` must be a JSON value');
  if (p.priority != null && !PRIORITIES.includes(p.priority)) throw bad(`\`priority\` must be one of ${PRIORITIES.join(', ')}`);
  if (p.ttlMs != null && !(isSeq(p.ttlMs) && p.ttlMs > 0)) throw bad('`ttlMs` must be an integer > 0');
  if (p.id != null && (typeof p.id !== 'string' || !p.id)) throw bad('`id` must be a non-empty string');
  const s = p.stream;
  if (s != null && !(typeof s.id === 'string' && s.id && isSeq(s.part) && (s.last == null || typeof s.last === 'boolean'))) {
    throw bad('`stream` must be { id: string, part: integer >= 0, last?: boolean }');
  }
  const frame = { type: 'publish', to: p.to, ref };
  if (p.priority != null) frame.priority = p.priority;
  if (p.ttlMs != null) frame.ttl_ms = p.ttlMs;
  if (p.id != null) frame.id = p.id;
  if (s != null) frame.stream = { id: s.id, part: s.part, last: s.last === true };
  // `data` last and spliced in as text, as the server's own frames carry it.
  return JSON.stringify(frame).slice(0, -1) + ',"data":' + data + '}';
}

/**
 * A tether client. Create it, attach listeners, call `connect()`. See README.md.
 */
export class TetherClient {
  #o;
  #on = new Map();
  #state = 'disconnected';
  #conn = null;
  #timer = 0;
  #attempt = 0;
  #epoch = null;
  #processed = 0;
  #received = 0;
  #queue = [];
  #busy = false;
  #consumers = new Set();
  #enders = new Set();
  #ref = 0;
  #ready = null;
  #unwatch = null;
  #closing = null;

  constructor(options) {
    this.#o = checkOptions(options);
    const r = this.#o.resume;
    if (r) {
      this.#epoch = r.epoch;
      this.#processed = r.seq;
    }
  }

  /** The WebSocket URL the client dials (normalised: `ws(s)://`, `/ws` for an empty path). */
  get url() {
    return this.#o.url;
  }

  /** `disconnected`, `connecting`, `connected` or `closed`. */
  get state() {
    return this.#state;
  }

  /** Where a later client may resume (`resume` option): `{ epoch, seq }`, or null before the first connection. */
  get resumePoint() {
    return this.#epoch ? { epoch: this.#epoch, seq: this.#processed } : null;
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== 'function') throw new TypeError('a listener must be a function');
    let set = this.#on.get(event);
    if (!set) this.#on.set(event, (set = new Set()));
    set.add(listener);
    // Messages that waited for a consumer go out after `on` returns, never inside it.
    if (event === 'message') queueMicrotask(() => this.#pump());
    return () => this.off(event, listener);
  }

  /** Removes a listener. */
  off(event, listener) {
    this.#on.get(event)?.delete(listener);
  }

  /**
   * Starts connecting (and reconnecting, until `close()` or a permanent error). Resolves with
   * the first connection's `connected` info; rejects if the client stops before that.
   */
  connect() {
    if (this.#state === 'closed') return Promise.reject(closedError());
    if (!this.#ready) {
      let resolve, reject;
      const promise = new Promise((res, rej) => ((resolve = res), (reject = rej)));
      // Handled here, so a caller that does not await it never sees an unhandled rejection.
      promise.catch(() => {});
      this.#ready = { promise, resolve, reject };
      this.#watch();
      this.#dial('connect() called');
    }
    return this.#ready.promise;
  }

  /**
   * The messages (and stream abort markers) in order, as an async iterator. With auto-ack, a
   * message is processed when the loop asks for the next one or leaves.
   */
  messages() {
    let current = null; // the item the loop holds, and how to finish it
    let offered = null; // an item handed over before the loop asked for it
    let waiting = null;
    let ended = false;
    let failure = null;
    const consumer = (item, finish) => {
      if (waiting) {
        current = finish;
        waiting.resolve({ value: item, done: false });
        waiting = null;
      } else offered = { item, finish };
    };
    const end = (error) => {
      ended = true;
      failure = error;
      this.#consumers.delete(consumer);
      this.#enders.delete(end);
      if (offered) offered.finish(UNSEEN); // dispatched again
      offered = null;
      if (waiting) {
        if (error) waiting.reject(error);
        else waiting.resolve({ value: undefined, done: true });
      }
      waiting = null;
    };
    // Synchronous, so that a close() right after the loop acknowledges its last message.
    const settle = () => {
      const finish = current;
      current = null;
      finish?.();
    };
    if (this.#state === 'closed') ended = true;
    else {
      this.#consumers.add(consumer);
      this.#enders.add(end);
      queueMicrotask(() => this.#pump());
    }
    const iterator = {
      next: () => {
        settle();
        if (offered) {
          const { item, finish } = offered;
          offered = null;
          current = finish;
          return Promise.resolve({ value: item, done: false });
        }
        if (ended) return failure ? Promise.reject(failure) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (waiting = { resolve, reject }));
      },
      return: () => {
        settle();
        end(null);
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /**
   * Marks every message up to `seq` processed (cumulative). Needed with `autoAck: false`.
   * Throws AckError for a seq beyond what the client handed to the application.
   */
  ack(seq) {
    if (!isSeq(seq) || seq > this.#received) {
      throw new AckError(
        'not_received',
        `ack(${seq}): not a seq this client handed to the application (highest: ${this.#received}); acking it would settle messages never seen`,
        { seq, received: this.#received },
      );
    }
    this.#settle(seq, this.#epoch);
  }

  /**
   * Publishes a message to another user (the server must run with --allow-client-publish).
   * Resolves with `{ outcome, reason?, evicted? }`; rejects with RequestError.
   */
  publish(message) {
    return this.#request((conn, ref) => {
      conn.ws.send(publishFrame(message, ref));
      return (entry) => conn.requests.set(ref, entry);
    });
  }

  /** Sends a `ping`; resolves with the round trip in milliseconds. */
  ping() {
    return this.#request((conn) => {
      this.#send(conn, { type: 'ping' });
      const at = Date.now();
      return (entry) => {
        entry.at = at;
        conn.pings.push(entry);
      };
    });
  }

  /** Drops the connection as a network failure would and reconnects at once, resuming. */
  reconnect() {
    const conn = this.#conn;
    if (conn?.info) {
      this.#drop(conn, 'reconnect() called', true);
    } else if (this.#state === 'disconnected' && this.#timer) {
      clearTimeout(this.#timer);
      this.#dial('reconnect() called');
    }
  }

  /**
   * Final: acknowledges what was processed, closes the connection with 1000 and stops.
   * Resolves once the server closed too (at most about 2 s).
   */
  close() {
    if (!this.#closing) this.#closing = this.#stop(null);
    return this.#closing;
  }

  // -- events ------------------------------------------------------------------------------

  #emit(event, value) {
    const set = this.#on.get(event);
    if (!set) return;
    for (const listener of set) {
      try {
        listener(value);
      } catch (e) {
        // A failing listener must not corrupt the client; report it as any uncaught error.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  #set(state, reason) {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.#emit('state', { state, previous, reason });
  }

  // -- connecting --------------------------------------------------------------------------

  async #dial(reason) {
    this.#timer = 0;
    const conn = {
      ws: null, info: null, resume: null, maxReceived: 0, acked: 0, opened: 0, lastIn: 0,
      requests: new Map(), pings: [], keepalive: false, dead: false, timers: [], ackTimer: 0, ackAt: 0,
    };
    this.#conn = conn;
    this.#set('connecting', reason);
    // The timeout covers the token function too: a token request that hangs is a failed attempt.
    conn.timers.push(
      setTimeout(() => this.#drop(conn, `no \`connected\` frame within ${this.#o.connectTimeoutMs} ms`), this.#o.connectTimeoutMs),
    );
    let token = this.#o.token;
    try {
      if (typeof token === 'function') token = await token();
      if (typeof token !== 'string' || !token) throw new TypeError(`it returned ${typeof token}, not a token`);
    } catch (e) {
      return this.#ended(conn, { reason: `the token function failed: ${text(e)}` });
    }
    if (conn.dead) return;
    let ws;
    try {
      ws = new this.#o.WebSocket(this.#o.url);
    } catch (e) {
      this.#conn = null;
      return this.#stop(configError('url', `was refused by the WebSocket constructor: ${text(e)}`));
    }
    conn.ws = ws;
    conn.lastIn = Date.now();
    // Until close(), errors are followed by a close event that says more; and the ws package
    // throws an 'error' nobody listens to.
    ws.onerror = () => {};
    ws.onopen = () => {
      const resume = this.#epoch ? { epoch: this.#epoch, seq: this.#processed } : undefined;
      conn.resume = resume;
      this.#send(conn, { type: 'connect', token, resume, device: this.#o.device ?? undefined });
    };
    ws.onmessage = (e) => this.#frame(conn, e.data);
    ws.onclose = (e) => this.#ended(conn, { code: e.code, reason: e.reason });
  }

  #opened(conn, f) {
    const info = connectedInfo(f);
    if (!info) return this.#fatal(conn, 'an undecodable `connected` frame');
    for (const t of conn.timers) clearTimeout(t);
    if (info.epoch !== this.#epoch) {
      // A new mailbox: seqs start again from 1.
      this.#epoch = info.epoch;
      this.#processed = 0;
      this.#received = 0;
    }
    const r = conn.resume;
    // The server settled everything up to an honoured resume point.
    conn.acked = r && info.recovered && r.epoch === info.epoch ? r.seq : 0;
    conn.info = info;
    conn.opened = Date.now();
    const every = Math.max(1, Math.floor(this.#o.keepaliveMs / 2));
    conn.timers = [setInterval(() => this.#tick(conn), every)];
    this.#set('connected', info.recovered ? 'resumed' : 'connected');
    this.#emit('connected', info);
    this.#ready.resolve(info);
  }

  #tick(conn) {
    const quiet = Date.now() - conn.lastIn;
    if (quiet >= this.#o.idleTimeoutMs) return this.#drop(conn, `no frame from the server for ${quiet} ms`);
    // Browsers cannot send WebSocket pings: a protocol `ping` keeps both sides' idle timers fed.
    if (quiet >= this.#o.keepaliveMs && !conn.keepalive) {
      conn.keepalive = true;
      conn.pings.push({ keepalive: true });
      this.#send(conn, { type: 'ping' });
    }
  }

  // -- one connection's frames -------------------------------------------------------------

  #send(conn, frame) {
    try {
      conn.ws.send(JSON.stringify(frame));
    } catch (e) {
      this.#drop(conn, `send failed: ${text(e)}`);
    }
  }

  #frame(conn, data) {
    if (conn.dead) return;
    conn.lastIn = Date.now();
    if (typeof data !== 'string') return this.#drop(conn, 'a binary frame from the server');
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      f = null;
    }
    // Skipping a frame we cannot read could let a cumulative ack settle a message never seen.
    if (!f || typeof f !== 'object' || Array.isArray(f)) return this.#fatal(conn, `a frame that is not a JSON object: ${data.slice(0, 80)}`);
    if (!conn.info) {
      return f.type === 'connected' ? this.#opened(conn, f) : this.#fatal(conn, `\`${f.type}\` before \`connected\``);
    }
    switch (f.type) {
      case 'message':
      case 'stream_aborted': {
        const item = delivery(f);
        if (!item) return this.#fatal(conn, `an undecodable \`${f.type}\`: ${data.slice(0, 80)}`);
        if (item.seq > conn.maxReceived) conn.maxReceived = item.seq;
        // A copy of something already processed (the server had not seen the ack yet).
        if (item.seq <= this.#processed) return this.#ackSoon(conn);
        this.#queue.push(item);
        return this.#pump();
      }
      case 'publish_result': {
        const entry = conn.requests.get(f.ref);
        if (!entry) return;
        conn.requests.delete(f.ref);
        const result = { outcome: f.outcome };
        if (f.reason != null) result.reason = f.reason;
        if (f.evicted != null) result.evicted = f.evicted;
        return entry.resolve(result);
      }
      case 'pong': {
        const entry = conn.pings.shift();
        if (entry?.keepalive) conn.keepalive = false;
        else entry?.resolve(Date.now() - entry.at);
        return;
      }
      case 'error': {
        const entry = f.ref != null && conn.requests.get(f.ref);
        if (!entry) return this.#emit('serverError', { code: f.code, message: f.message });
        conn.requests.delete(f.ref);
        return entry.reject(
          new RequestError('refused', `the server refused the publish: ${f.code}: ${f.message}`, { serverCode: f.code }),
        );
      }
      case 'connected':
        return this.#drop(conn, 'a second `connected` frame');
      default:
      // A frame type a newer server added.
    }
  }

  #request(start) {
    if (this.#state === 'closed') return Promise.reject(closedError());
    const conn = this.#conn;
    if (!conn?.info) {
      return Promise.reject(new RequestError('not_connected', 'not connected: wait for the `connected` event and try again'));
    }
    if (conn.requests.size + conn.pings.length >= this.#o.maxPendingRequests) {
      return Promise.reject(
        new RequestError('too_many_requests', `${this.#o.maxPendingRequests} requests already await an answer (maxPendingRequests)`),
      );
    }
    return new Promise((resolve, reject) => {
      const ref = (++this.#ref).toString(36);
      let register;
      try {
        register = start(conn, ref);
      } catch (e) {
        return reject(e);
      }
      if (conn.dead) return reject(new RequestError('connection_lost', 'the connection was lost while sending: the outcome is unknown'));
      const entry = {
        resolve: (v) => (clearTimeout(entry.timer), resolve(v)),
        reject: (e) => (clearTimeout(entry.timer), reject(e)),
        timer: setTimeout(() => {
          conn.requests.delete(ref);
          // A ping keeps its place: pongs answer pings in order.
          entry.resolve = entry.reject = () => {};
          reject(new RequestError('timeout', `no answer within ${this.#o.requestTimeoutMs} ms; a publish may still have been accepted (give it an id to retry safely)`));
        }, this.#o.requestTimeoutMs),
      };
      register(entry);
    });
  }

  // -- delivering to the application -------------------------------------------------------

  #pump() {
    if (this.#busy) return;
    this.#busy = true;
    while (this.#queue.length && (this.#on.get('message')?.size || this.#consumers.size)) {
      const item = this.#queue.shift();
      if (item.seq <= this.#processed) continue;
      if (item.seq > this.#received) this.#received = item.seq;
      // Still being handled: its last finish resumes the pump.
      if (!this.#handle(item)) return;
    }
    this.#busy = false;
  }

  // Hands an item to every listener and iterator; true if all of them are done already.
  #handle(item) {
    const epoch = this.#epoch;
    let left = 1;
    let unseen = false;
    let later = false;
    const finish = (how) => {
      unseen ||= how === UNSEEN;
      if (--left) return;
      if (unseen) {
        if (epoch === this.#epoch && this.#state !== 'closed') this.#queue.unshift(item);
      } else if (this.#o.autoAck) this.#settle(item.seq, epoch);
      if (later) {
        this.#busy = false;
        this.#pump();
      }
    };
    const fail = (e) => {
      left = Infinity; // nothing settles it now
      this.#failed(item, e);
    };
    try {
      for (const listener of this.#on.get(item.type === 'message' ? 'message' : 'streamAborted') ?? []) {
        const r = listener(item);
        if (isThenable(r)) {
          left++;
          r.then(() => finish(), fail);
        }
      }
      for (const consumer of this.#consumers) {
        left++;
        consumer(item, finish);
      }
    } catch (e) {
      fail(e);
      return false;
    }
    finish();
    later = true;
    return left === 0;
  }

  #failed(item, e) {
    this.#stop(
      new HandlerError(
        'handler_failed',
        `a message handler failed on seq ${item.seq}: ${text(e)}; the message was not acknowledged and comes again to the next client (catch inside the handler what you mean to skip)`,
        { seq: item.seq, cause: e },
      ),
    );
  }

  #settle(seq, epoch) {
    if (epoch !== this.#epoch || seq <= this.#processed) return;
    this.#processed = seq;
    if (this.#conn?.info) this.#ackSoon(this.#conn);
  }

  // Acks go out when ackBatch are due, at once when everything the connection delivered is
  // processed (the server may be waiting for the ack: its window may be full), and otherwise
  // within ackDelayMs.
  #ackSoon(conn) {
    const target = Math.min(this.#processed, conn.maxReceived);
    if (target <= conn.acked) return;
    if (target - conn.acked >= this.#o.ackBatch) return this.#flushAck(conn);
    const now = Date.now();
    const idle = !this.#queue.length && target === conn.maxReceived;
    const at = now + (idle ? 0 : this.#o.ackDelayMs);
    if (conn.ackTimer && conn.ackAt <= at) return;
    clearTimeout(conn.ackTimer);
    conn.ackAt = at;
    conn.ackTimer = setTimeout(() => this.#flushAck(conn), at - now);
  }

  #flushAck(conn) {
    clearTimeout(conn.ackTimer);
    conn.ackTimer = 0;
    // The server refuses an ack beyond what this connection delivered.
    const target = Math.min(this.#processed, conn.maxReceived);
    if (conn.dead || !conn.info || target <= conn.acked) return;
    conn.acked = target;
    this.#send(conn, { type: 'ack', seq: target });
  }

  // -- endings -----------------------------------------------------------------------------

  // Stops using a connection: its timers, its handlers, its requests.
  #release(conn, error) {
    conn.dead = true;
    for (const t of conn.timers) clearTimeout(t);
    clearTimeout(conn.ackTimer);
    const ws = conn.ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    for (const entry of conn.requests.values()) entry.reject(error);
    for (const entry of conn.pings) entry.reject?.(error);
    conn.requests.clear();
    conn.pings = [];
  }

  // Ends a connection from this side, as a network failure would.
  #drop(conn, reason, now) {
    if (conn.dead) return;
    const ws = conn.ws;
    this.#ended(conn, { reason, now });
    if (ws) {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(1000, reason.slice(0, 120));
    }
  }

  #fatal(conn, detail) {
    conn.fatal = new ProtocolError('protocol', `the server broke the protocol: ${detail}; this client cannot go on (a bug: report it with the server's version)`);
    this.#drop(conn, detail);
  }

  #ended(conn, { code, reason, now }) {
    if (conn.dead) return;
    const session = conn.info;
    this.#release(
      conn,
      session
        ? new RequestError('connection_lost', 'the connection was lost before the answer: the outcome is unknown (give a publish an id to retry it safely)')
        : new RequestError('not_connected', 'not connected'),
    );
    if (this.#conn !== conn) return;
    this.#conn = null;
    // What the dead connection delivered and the application has not taken comes again.
    this.#queue = [];
    reason ||= code ? `closed with ${code}` : 'the connection failed';
    if (session && Date.now() - conn.opened >= STABLE_AFTER_MS) this.#attempt = 0;
    let error = conn.fatal;
    let atLeast = 0;
    if (code === 4001 && !(session && typeof this.#o.token === 'function')) {
      error = new UnauthorizedError(
        'unauthorized',
        `the server refused the token (4001: ${reason}): ${typeof this.#o.token === 'function' ? 'the token function returned a token the server does not accept' : 'pass a token function, which is called again on every reconnect and when a token expires'}`,
        { reason },
      );
    } else if (code === 4002) {
      error = new ReplacedError(
        'replaced',
        'a newer connection of the same user took over (4002); this client stops rather than fight back: one connection per user (close the other, or give each device its own user id)',
      );
    } else if (code === 4003) {
      error = new ProtocolError('protocol', `the server says this client broke the protocol (4003: ${reason}): a bug: report it`, { reason });
    } else if (code === 4100) {
      atLeast = retryAfterMs(reason);
    }
    if (!error && this.#attempt >= this.#o.maxReconnectAttempts) {
      error = new GaveUpError('gave_up', `gave up after ${this.#attempt} reconnect attempts (maxReconnectAttempts); the last ended with: ${reason}`, {
        attempts: this.#attempt,
      });
    }
    if (error) return this.#stop(error);
    let delayMs = 0;
    if (!now) {
      // Full jitter over the whole wait, after any retry_after: clients the server dropped
      // together come back spread out.
      const ceiling = Math.min(this.#o.backoff.maxMs, this.#o.backoff.baseMs * 2 ** this.#attempt);
      this.#attempt++;
      delayMs = Math.round(atLeast + Math.random() * ceiling);
    }
    this.#set('disconnected', reason);
    this.#emit('disconnected', { code, reason, delayMs, wasConnected: !!session });
    this.#timer = setTimeout(() => this.#dial(delayMs ? `retrying after ${delayMs} ms` : reason), delayMs);
  }

  async #stop(error) {
    if (this.#state === 'closed') return;
    clearTimeout(this.#timer);
    this.#timer = 0;
    this.#unwatch?.();
    const conn = this.#conn;
    this.#conn = null;
    this.#queue = [];
    let goodbye;
    if (conn) {
      if (conn.info) this.#flushAck(conn);
      const ws = conn.ws;
      this.#release(conn, closedError());
      if (ws) {
        goodbye = new Promise((resolve) => {
          const timer = setTimeout(resolve, CLOSE_TIMEOUT_MS);
          ws.onclose = () => (clearTimeout(timer), resolve());
        });
        try {
          ws.close(1000, 'client closing');
        } catch {
          // Already closing.
        }
      }
    }
    this.#set('closed', error ? error.message : 'close() called');
    for (const end of this.#enders) end(error);
    this.#ready?.reject(error || closedError());
    this.#emit('closed', { error });
    await goodbye;
  }

  #watch() {
    const g = globalThis;
    const doc = g.document;
    if (typeof g.addEventListener !== 'function') return;
    // Back online, or the page shown again: the wait is likely pointless now; a short jitter
    // still spreads the tabs of a network that came back.
    const wake = () => {
      if (this.#state !== 'disconnected' || !this.#timer) return;
      if (doc?.visibilityState === 'hidden' || g.navigator?.onLine === false) return;
      clearTimeout(this.#timer);
      const reason = 'woken: the browser is online and the page visible';
      this.#timer = setTimeout(() => this.#dial(reason), Math.random() * Math.min(this.#o.backoff.baseMs, WAKE_JITTER_MS));
    };
    g.addEventListener('online', wake);
    doc?.addEventListener('visibilitychange', wake);
    this.#unwatch = () => {
      g.removeEventListener('online', wake);
      doc?.removeEventListener('visibilitychange', wake);
    };
  }
}
