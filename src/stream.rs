//! What the engine reports about a stream: its phase and which parts arrived, were delivered
//! and were acknowledged. The parts themselves are [`StreamPart`](crate::StreamPart)s; the
//! reordering and resumption behind them live in the shard (`shard/streams.rs`).

use crate::message::{AbortReason, Priority};
/// Where a stream is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamPhase {
    /// Parts are still arriving or waiting to be delivered or acknowledged.
    Open,
    /// Its last part was acknowledged.
    Completed,
    /// It was aborted; the user gets (or got) an abort marker.
    Aborted(AbortReason),
}

/// What the engine knows of one stream, from
/// [`Engine::stream_status`](crate::Engine::stream_status).
///
/// Parts are delivered and acknowledged in index order, so `acknowledged <= delivered <=
/// arrived` and each names a prefix: parts `0..acknowledged` are acknowledged, and so on.
/// A finished stream (completed or aborted) is remembered for a while without its per-part
/// detail: `held` and `missing` are then empty.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{Engine, Message, StreamPart, StreamPhase, UserId};
///
/// let engine = Engine::builder().build().unwrap();
/// let ann = UserId::new("ann").unwrap();
/// // Parts 0 and 2 arrive; 1 is late.
/// for i in [0, 2] {
///     let part = StreamPart::new("reply-1", i, i == 2);
///     engine.send(&ann, Message::new(format!("piece {i}")).with_stream_part(part)).await.unwrap();
/// }
/// let status = engine.stream_status(&ann, "reply-1").await.unwrap();
/// assert_eq!(status.phase, StreamPhase::Open);
/// assert_eq!(status.arrived, 1);
/// assert_eq!(status.held, [2]);
/// assert_eq!(status.missing, [1]);
/// assert_eq!(status.last, Some(2));
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStatus {
    /// Open, completed or aborted.
    pub phase: StreamPhase,
    /// The stream's priority, once part 0 has arrived.
    pub priority: Option<Priority>,
    /// Parts `0..arrived` have all arrived (and were released towards the user in order).
    pub arrived: u32,
    /// Parts that arrived ahead of a missing one and are held back, in index order.
    pub held: Vec<u32>,
    /// Parts not arrived yet below the highest index seen (or below the last part, once it
    /// is known), in index order.
    pub missing: Vec<u32>,
    /// The index of the last part, once a part marked last has arrived.
    pub last: Option<u32>,
    /// Parts `0..delivered` were handed to a session.
    pub delivered: u32,
    /// Parts `0..acknowledged` were acknowledged.
    pub acknowledged: u32,
}
