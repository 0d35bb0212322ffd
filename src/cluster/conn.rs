//! One connection type for a single Redis and a Redis Cluster, counting the requests it sends
//! (a pipeline is one), which is how the store measures round trips.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
enum Inner {
    /// Reconnects by itself (with backoff) when the connection drops.
    Single(ConnectionManager),
    /// Follows slot moves and failovers by itself.
    Cluster(ClusterConnection),
}

/// A cheap clone of the store's multiplexed connection: requests from every clone share it,
/// pipelined on the wire.
#[derive(Clone)]
pub(super) struct Conn {
    inner: Inner,
    trips: Arc<AtomicU64>,
}

impl Conn {
    pub(super) fn single(c: ConnectionManager) -> Self {
        Self {
            inner: Inner::Single(c),
            trips: Arc::default(),
        }
    }

    pub(super) fn cluster(c: ClusterConnection) -> Self {
        Self {
            inner: Inner::Cluster(c),
            trips: Arc::default(),
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// The cluster connection, for commands that go to every master.
    pub(super) fn as_cluster(&mut self) -> Option<&mut ClusterConnection> {
        match &mut self.inner {
            Inner::Cluster(c) => Some(c),
            Inner::Single(_) => None,
        }
    }

    /// Requests sent so far by every clone (a pipeline counts once).
    pub(super) fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}
