//! Fills and acks of many sessions in one request: what keeps Redis round trips per
//! delivered message low. Both operations are safe to repeat (a fill names the seq it
//! expects next; acks are cumulative), so a batch that meets NOSCRIPT (after a Redis restart
//! emptied the script cache) is sent again whole once the scripts are loaded.

use futures_util::future::join_all;
use redis::{ErrorKind, Value};

use super::outcome::{Acked, Filled, SessionRef};
use super::reply::Reply;
use super::store::{acked, filled};
use super::{RedisStore, StoreError};

/// Fills and acks of many sessions, sent together by [`RedisStore::run`].
///
/// ```no_run
/// # async fn pass(store: &tether::cluster::RedisStore, sessions: &[tether::cluster::SessionRef]) {
/// use tether::cluster::{Batch, BatchReply};
///
/// let mut batch = Batch::new();
/// for s in sessions {
///     batch.fill(s, 1, 0, 64); // (next seq expected, ack up to, at most 64 now)
/// }
/// for reply in store.run(&batch).await.unwrap() {
///     if let Ok(BatchReply::Filled(f)) = reply {
///         println!("{} delivered", f.delivered.len());
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Fill {
        session: SessionRef,
        next_seq: u64,
        ack: u64,
        max: usize,
    },
    Ack {
        session: SessionRef,
        upto: u64,
    },
}

/// The answer to one operation of a batch, in the batch's order.
#[derive(Debug, Clone)]
pub enum BatchReply {
    /// A fill's answer, as [`RedisStore::fill`] gives it.
    Filled(Filled),
    /// An ack's answer, as [`RedisStore::ack`] gives it.
    Acked(Acked),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fill, as [`RedisStore::fill`] takes it.
    pub fn fill(&mut self, session: &SessionRef, next_seq: u64, ack: u64, max: usize) -> &mut Self {
        self.ops.push(Op::Fill {
            session: session.clone(),
            next_seq,
            ack,
            max,
        });
        self
    }

    /// Adds an ack, as [`RedisStore::ack`] takes it.
    pub fn ack(&mut self, session: &SessionRef, upto: u64) -> &mut Self {
        self.ops.push(Op::Ack {
            session: session.clone(),
            upto,
        });
        self
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

impl RedisStore {
    /// Runs every operation of `batch`: on one Redis as one pipeline (one round trip); on a
    /// Cluster as concurrent requests, which the client multiplexes per node (a pipeline
    /// may not span slots). Each operation has its own answer; a fenced session fails alone.
    /// The outer error means the batch as a whole got no answer (Redis unreachable): repeat it.
    pub async fn run(
        &self,
        batch: &Batch,
    ) -> Result<Vec<Result<BatchReply, StoreError>>, StoreError> {
        let invocations: Vec<_> = batch
            .ops
            .iter()
            .map(|op| match op {
                Op::Fill {
                    session,
                    next_seq,
                    ack,
                    max,
                } => self.fill_invocation(session, *next_seq, *ack, *max),
                Op::Ack { session, upto } => self.ack_invocation(session, *upto),
            })
            .collect();
        let values: Vec<Result<Value, StoreError>> = if self.conn.is_cluster() {
            let calls = invocations.iter().map(|inv| async move {
                let value: Value = inv.invoke_async(&mut self.conn.clone()).await?;
                Ok(value)
            });
            join_all(calls).await
        } else {
            let mut pipe = redis::pipe();
            for inv in &invocations {
                pipe.invoke_script(inv);
            }
            let values: Vec<Value> = match pipe.query_async(&mut self.conn.clone()).await {
                Err(e) if e.kind() == ErrorKind::NoScriptError => {
                    self.load_scripts().await?;
                    pipe.query_async(&mut self.conn.clone()).await?
                }
                other => other?,
            };
            values.into_iter().map(Ok).collect()
        };
        if values.len() != batch.len() {
            return Err(StoreError::Reply("a pipeline answered a different count"));
        }
        Ok(batch
            .ops
            .iter()
            .zip(values)
            .map(|(op, value)| {
                let reply = Reply::new(value?)?;
                match op {
                    Op::Fill { .. } => filled(reply).map(BatchReply::Filled),
                    Op::Ack { .. } => acked(reply).map(BatchReply::Acked),
                }
            })
            .collect())
    }
}
