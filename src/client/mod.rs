//! A Rust client for the tether server (wire protocol v1 over `ws://`, or `wss://` with the
//! feature `tls` and [`ClientBuilder::tls_root_pem`]): it connects,
//! reconnects by itself with backoff, resumes where the application left off, and
//! acknowledges what the application has processed.
//!
// The examples start a server in-process: they run as doctests when it is compiled in.
#![cfg_attr(feature = "server", doc = "```")]
#![cfg_attr(not(feature = "server"), doc = "```ignore")]
//! use std::time::{Duration, SystemTime};
//! use tether::client::{Client, Event};
//! use tether::server::{auth::issue_token, config::ServerConfig, Server};
//! use tether::{Message, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server in-process, on a port the OS picks.
//! let secret = "an example secret of at least 32 bytes";
//! let config = ServerConfig::parse_from(
//!     ["serve", "--listen", "127.0.0.1:0", "--jwt-secret", secret, "--api-key", "an example api key"],
//!     [("", ""); 0],
//! )?;
//! let server = Server::start(config).await?;
//! let alice = UserId::new("alice")?;
//! server.engine().send(&alice, Message::new(r#"{"text":"hello"}"#)).await?;
//!
//! let token = issue_token(secret, &alice, Some(Duration::from_secs(3600)), SystemTime::now())?;
//! let url = format!("ws://{}/ws", server.local_addr());
//! let mut client = Client::builder(url, token).connect().await?;
//!
//! let Event::Connected(info) = client.recv().await? else { unreachable!("connected first") };
//! assert_eq!(info.user, "alice");
//! let Event::Message(m) = client.recv().await? else { unreachable!("then the message") };
//! assert_eq!(m.data_str(), r#"{"text":"hello"}"#);
//! // Closing acknowledges the message returned by the last `recv`: its handler is done.
//! client.close().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery, acknowledgement and duplicates
//!
//! Each message has a per-user `seq`. The client keeps one number, *processed*: the highest
//! seq the application has acknowledged, in the mailbox's current epoch. It resumes every new
//! connection from that number, so the server sends again exactly the messages with a higher
//! seq that are still unacknowledged. It also acknowledges it to the server, cumulatively and
//! in batches: as soon as 64 messages are due, as soon as the application has processed
//! everything the connection delivered and nothing more is arriving (so even a server window
//! smaller than 64 never stalls), and otherwise within 10 ms. The batching only delays when
//! the server frees its copies; what counts for redelivery is *processed*, kept here.
//!
//! - **Auto-ack** (the default): a message is processed when the application calls
//!   [`recv`](Client::recv) (or [`close`](Client::close)) again after receiving it, that is,
//!   when its handler has returned. A handler that panics or a client that is dropped leaves
//!   its last message unacknowledged, and it comes again on the next connection.
//! - **Manual** ([`ClientBuilder::auto_ack`]`(false)`): a message is processed when the
//!   application calls [`ack`](Client::ack) with its seq (or a higher one).
//!
//! `recv` never returns a message whose seq is at or below *processed*. Copies of messages
//! that a dead connection delivered but the application had not yet taken from the client
//! are dropped once a newer connection to the same mailbox epoch exists, since the server
//! sends those again on the new connection.
//!
//! With auto-ack the application sees every message exactly once across the reconnects of
//! one `Client`, including when a connection dies while a handler runs: the server sends
//! that message again on the new connection, but the next `recv` first marks the previous
//! message processed and only then checks the copy, which is no longer above *processed* and
//! is dropped. A message comes twice only across clients: when a handler panics or the
//! `Client` is dropped before its next `recv`, the message is not processed, and a client
//! that connects afterwards (resuming from [`resume_point`](Client::resume_point) or fresh)
//! receives it again. With manual acks, a message received but not yet passed to
//! [`ack`](Client::ack) when its connection dies comes again on the new connection. Either
//! way delivery is at-least-once, and nothing is lost while the mailbox exists.
//!
//! If the mailbox's epoch changes (the user stayed away past the server's retention and the
//! mailbox was created afresh), seqs start again from 1 and *processed* starts again from 0;
//! the [`Event::Connected`] of that connection says `recovered: false` and lists what was lost.
//!
//! # Reconnection
//!
//! On any disconnect the client emits [`Event::Disconnected`] and reconnects with
//! [`Backoff`](crate::Backoff) (full jitter; default from 100 ms doubling to 30 s, unlimited
//! attempts), except:
//!
//! | close code | meaning | what the client does |
//! |---|---|---|
//! | 4001 | unauthorized | stops: `recv` returns [`ClientError::Unauthorized`] |
//! | 4002 | a newer connection of the same user took over | stops: [`ClientError::Replaced`] (it does not fight back) |
//! | 4003 | protocol violation | stops: [`ClientError::ProtocolViolation`] |
//! | 4100 | try later | waits the close reason's `retry_after_ms` plus its jittered backoff, then reconnects |
//! | 1001 | server shutting down (or idle timeout) | reconnects with backoff |
//!
//! The backoff starts over once a connection has stayed up for 2 s, so a server that accepts
//! and drops at once cannot make the client spin. With
//! [`max_reconnect_attempts`](ClientBuilder::max_reconnect_attempts) the client gives up after
//! that many consecutive failed attempts ([`ClientError::GaveUp`]).
//!
//! # Bounds
//!
//! Everything is bounded: events wait in a channel of
//! [`event_capacity`](ClientBuilder::event_capacity); when it is full the client stops reading
//! the socket, so the server's delivery window (not this client) holds the rest. Outstanding
//! publishes and pings are capped by [`max_pending_requests`](ClientBuilder::max_pending_requests);
//! callers beyond that wait. Frames larger than [`max_frame_bytes`](ClientBuilder::max_frame_bytes)
//! end the client with [`ClientError::FrameTooBig`].
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `api.rs` | [`Client`], [`ClientHandle`], [`Event`], [`Publish`]: what the application holds |
//! | `config.rs` | [`ClientBuilder`] and the validated [`ClientConfig`] |
//! | `task.rs` | the connection task: dialing, reading, acking, reconnecting |
//! | `stream.rs` | the bytes under the WebSocket: TCP, or TLS over TCP for `wss://` |
//! | `frame.rs` | the frames, from the client's side: decoding the server's, encoding its own |
//! | `error.rs` | [`ClientError`] and the request errors; what a close code means |

#![forbid(unsafe_code)]

mod api;
mod channel;
mod config;
mod error;
mod frame;
mod stream;
mod task;

pub use api::{Client, ClientHandle, Publish};
pub use channel::{Disconnect, Event};
pub use config::{ClientBuilder, ClientConfig};
pub use error::{AckError, ClientConfigError, ClientError, RequestError};
pub use frame::{
    decode_publish_outcome, decode_server_frame, ConnectedInfo, DecodeError, Delivered, ErrorFrame,
    PublishOutcome, ServerFrame, StreamAborted, StreamPosition,
};
