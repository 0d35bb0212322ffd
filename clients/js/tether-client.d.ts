// Type declarations of tether-client (tether-client.js). Kept by hand beside the module; the
// package's tests compile an example against them with `tsc --strict`.

/** A message priority, most urgent first. */
export type Priority = 'critical' | 'high' | 'normal' | 'low';

/** What the `WebSocket` option must be: the browser's, Node 22's, or the `ws` package's class. */
export interface WebSocketLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where to resume: the mailbox's epoch and the highest seq the application processed. */
export interface ResumePoint {
  /** 16 hex digits, from `connected`. */
  epoch: string;
  seq: number;
}

export interface TetherClientOptions {
  /**
   * The server's WebSocket URL: `ws://`, `wss://`, `http(s)://` (turned into ws(s)), or in a
   * browser a path on the page's origin such as `/ws`. An empty path means `/ws`.
   */
  url: string;
  /**
   * The token (an HS256 JWT the server accepts), or a function returning one (or a promise of
   * one). A function is called before every connection attempt, so it is also how an expired
   * token is replaced; a fixed string stops the client when its token expires.
   */
  token: string | (() => string | Promise<string>);
  /** The WebSocket class. Default: the global `WebSocket` (browsers, Node 22+); on Node 20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  /**
   * Acknowledge each message when its handler returns (or its promise resolves), or when an
   * iterator asks for the next one. Default true; with false, call `ack(seq)`.
   */
  autoAck?: boolean;
  /** Processed messages that make an ack go out at once. Default 64, at least 1. */
  ackBatch?: number;
  /** Longest an ack waits for more to batch, in ms. Default 10, at least 0. */
  ackDelayMs?: number;
  /** Reconnect waits: attempt n waits a random time in [0, min(maxMs, baseMs * 2^n)]. Default `{ baseMs: 100, maxMs: 30000 }`. */
  backoff?: { baseMs?: number; maxMs?: number };
  /** Consecutive failed attempts after which the client stops with GaveUpError. Default Infinity, at least 0. */
  maxReconnectAttempts?: number;
  /** Time from asking for the token to the `connected` frame, in ms. Default 10000. */
  connectTimeoutMs?: number;
  /** Send a protocol ping after this long without a frame from the server, in ms. Default 15000. */
  keepaliveMs?: number;
  /** Treat the connection as dead after this long without any frame, in ms. Default 45000; must exceed keepaliveMs. */
  idleTimeoutMs?: number;
  /** How long publish() and ping() wait for their answer, in ms. Default 10000. */
  requestTimeoutMs?: number;
  /** Publishes and pings awaiting an answer at once. Default 256, at least 1. */
  maxPendingRequests?: number;
  /** Resume the first connection from a point saved earlier (`resumePoint`). Default none. */
  resume?: ResumePoint | null;
  /**
   * This client is the user's device with this name (keep it in the app's storage): every
   * device of a user gets every message, with its own seqs and resume point. Default: the
   * user's default device.
   */
  device?: string | null;
}

/** What was lost while the user was away, by cause, and the most recent lost ids. */
export interface Missed {
  expired: number;
  evicted: number;
  rejected: number;
  shed: number;
  deduplicated: number;
  /** Why the device's whole mailbox was reset since its last connection (`device_evicted`). */
  reset?: string;
  ids: string[];
}

/** The server's `connected` frame. */
export interface ConnectedInfo {
  user: string;
  /** The device this connection is, when the client named one (the `device` option). */
  device?: string;
  epoch: string;
  /** The resume point was honoured: nothing processed is sent again. */
  recovered: boolean;
  /** Unacknowledged messages sent again first, with their original seqs. */
  redelivered: number;
  /** Messages waiting behind the delivery window. */
  pending: number;
  missed: Missed;
}

/** A message. `data` is the publisher's JSON value. */
export interface Message<T = unknown> {
  type: 'message';
  seq: number;
  priority: Priority;
  /** The publisher's message id, if it gave one. */
  id?: string;
  /** The message's place in a stream, if it is a part of one. */
  stream?: { id: string; part: number; last: boolean };
  data: T;
}

/** A stream that ended without its remaining parts; acknowledged like a message. */
export interface StreamAborted {
  type: 'stream_aborted';
  seq: number;
  stream: string;
  code: 'timeout' | 'expired' | 'overflow' | 'memory_budget' | 'producer' | (string & {});
  reason: string;
}

export type Delivery<T = unknown> = Message<T> | StreamAborted;

export type State = 'disconnected' | 'connecting' | 'connected' | 'closed';

export interface StateChange {
  state: State;
  previous: State;
  reason: string;
}

export interface Disconnected {
  /** The close code, when the server sent one (4100, 1001, ...); 1006 for a broken connection. */
  code?: number;
  reason: string;
  /** The wait before the next attempt, in ms (0: at once). */
  delayMs: number;
  /** A session had been open (false: an attempt failed). */
  wasConnected: boolean;
}

export interface Publish {
  to: string;
  data: unknown;
  priority?: Priority;
  ttlMs?: number;
  /** Idempotency key: the server drops a second publish with the same id. */
  id?: string;
  stream?: { id: string; part: number; last?: boolean };
}

export interface PublishResult {
  outcome: 'delivered' | 'queued' | 'duplicate' | 'rejected';
  /** Why, when rejected (`mailbox_full`, `publish_not_allowed`, `rate_limited`, ...). */
  reason?: string;
  /** Older messages dropped to make room, when queued. */
  evicted?: number;
}

export interface Events {
  state: StateChange;
  connected: ConnectedInfo;
  disconnected: Disconnected;
  /** A message. Return a promise to have the next one wait for it. */
  message: Message;
  streamAborted: StreamAborted;
  /** An `error` frame that answers no request (the connection stays open). */
  serverError: { code: string; message: string };
  /** The client stopped for good: `error` is null after close(). */
  closed: { error: TetherError | null };
}

export class TetherClient {
  constructor(options: TetherClientOptions);
  readonly url: string;
  readonly state: State;
  readonly resumePoint: ResumePoint | null;
  on(event: 'message', listener: (message: Message<any>) => unknown): () => void;
  on(event: 'streamAborted', listener: (aborted: StreamAborted) => unknown): () => void;
  on<E extends keyof Events>(event: E, listener: (value: Events[E]) => void): () => void;
  off<E extends keyof Events>(event: E, listener: (value: Events[E]) => unknown): void;
  connect(): Promise<ConnectedInfo>;
  messages<T = unknown>(): AsyncIterableIterator<Delivery<T>>;
  ack(seq: number): void;
  publish(message: Publish): Promise<PublishResult>;
  ping(): Promise<number>;
  reconnect(): void;
  close(): Promise<void>;
}

export type ErrorCode =
  | 'config' | 'unauthorized' | 'replaced' | 'protocol' | 'gave_up' | 'closed' | 'handler_failed'
  | 'not_connected' | 'connection_lost' | 'timeout' | 'too_many_requests' | 'refused' | 'invalid_publish'
  | 'not_received';

export class TetherError extends Error {
  readonly code: ErrorCode;
}
/** An option out of range (`setting` names it). */
export class ConfigError extends TetherError {
  readonly code: 'config';
  readonly setting: string;
}
/** 4001: the server refused the token. */
export class UnauthorizedError extends TetherError {
  readonly code: 'unauthorized';
  readonly reason: string;
}
/** 4002: a newer connection of the same user took over. */
export class ReplacedError extends TetherError {
  readonly code: 'replaced';
}
/** 4003, or a frame this client cannot read. */
export class ProtocolError extends TetherError {
  readonly code: 'protocol';
}
/** maxReconnectAttempts failed attempts in a row. */
export class GaveUpError extends TetherError {
  readonly code: 'gave_up';
  readonly attempts: number;
}
/** The client is closed. */
export class ClosedError extends TetherError {
  readonly code: 'closed';
}
/** A message handler threw or rejected; the client stopped without acknowledging `seq`. */
export class HandlerError extends TetherError {
  readonly code: 'handler_failed';
  readonly seq: number;
  readonly cause: unknown;
}
/** A publish or ping without an outcome. */
export class RequestError extends TetherError {
  readonly code: 'not_connected' | 'connection_lost' | 'timeout' | 'too_many_requests' | 'refused' | 'invalid_publish';
  /** The server's error code, for `refused`. */
  readonly serverCode?: string;
}
/** ack() with a seq the application was never handed. */
export class AckError extends TetherError {
  readonly code: 'not_received';
  readonly seq: number;
  readonly received: number;
}
