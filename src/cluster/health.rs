//! Start-up checks: what in Redis's own configuration would break the delivery contract.
//!
//! An evicting `maxmemory-policy` lets Redis delete a mailbox, or part of one, under memory
//! pressure: acknowledged-by-Redis messages would vanish and seqs would be reused. Only
//! `noeviction` keeps the contract (writes then fail with OOM, which the store reports as
//! [`StoreError::is_out_of_memory`](super::StoreError::is_out_of_memory)). Without AOF, a
//! Redis restart loses everything since the last snapshot.

use std::fmt;

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::Value;

use super::{RedisStore, StoreError};

/// One Redis node's settings that matter to the contract; `None` where the node would not
/// say (managed services often disable `CONFIG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// The node's address (`"redis"` for a single Redis).
    pub node: String,
    /// `maxmemory-policy`: must be `noeviction`.
    pub maxmemory_policy: Option<String>,
    /// Whether the append-only file is on.
    pub appendonly: Option<bool>,
    /// `appendfsync`: `always`, `everysec` (the default: a crash of the machine, not of
    /// Redis, can lose up to a second) or `no`.
    pub appendfsync: Option<String>,
}

/// What [`RedisStore::health`] found on every node (every master of a Cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// One entry per node.
    pub nodes: Vec<NodeHealth>,
}

/// A setting that weakens or breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthIssue {
    /// Redis may evict keys: a server should refuse to start (see [`refuses`](Self::refuses)).
    Evicting {
        /// The node.
        node: String,
        /// Its `maxmemory-policy`.
        policy: String,
    },
    /// The node would not tell its `maxmemory-policy`: it cannot be checked.
    Unknown {
        /// The node.
        node: String,
    },
    /// No AOF: a restart of Redis loses what it accepted since its last snapshot.
    NoAof {
        /// The node.
        node: String,
    },
}

impl HealthIssue {
    /// Whether a server should refuse to start on it (rather than warn).
    pub fn refuses(&self) -> bool {
        matches!(self, HealthIssue::Evicting { .. })
    }
}

impl fmt::Display for HealthIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthIssue::Evicting { node, policy } => write!(
                f,
                "{node}: maxmemory-policy is {policy}; Redis may evict mailboxes and lose \
                 accepted messages. Set it to noeviction."
            ),
            HealthIssue::Unknown { node } => write!(
                f,
                "{node}: CONFIG GET is refused, so maxmemory-policy cannot be checked; it must \
                 be noeviction"
            ),
            HealthIssue::NoAof { node } => write!(
                f,
                "{node}: appendonly is off; a Redis restart loses what it accepted since its \
                 last snapshot"
            ),
        }
    }
}

impl Health {
    /// Every issue, nodes in order.
    ///
    /// ```
    /// use tether::cluster::{Health, NodeHealth};
    ///
    /// let node = |policy: &str, aof| NodeHealth {
    ///     node: "redis".into(),
    ///     maxmemory_policy: Some(policy.into()),
    ///     appendonly: Some(aof),
    ///     appendfsync: Some("everysec".into()),
    /// };
    /// assert!(Health { nodes: vec![node("noeviction", true)] }.issues().is_empty());
    /// let bad = Health { nodes: vec![node("allkeys-lru", false)] }.issues();
    /// assert_eq!(bad.len(), 2);
    /// assert!(bad[0].refuses() && !bad[1].refuses());
    /// ```
    pub fn issues(&self) -> Vec<HealthIssue> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let node = n.node.clone();
            match n.maxmemory_policy.as_deref() {
                Some("noeviction") => {}
                Some(policy) => out.push(HealthIssue::Evicting {
                    node: node.clone(),
                    policy: policy.to_owned(),
                }),
                None => out.push(HealthIssue::Unknown { node: node.clone() }),
            }
            if n.appendonly == Some(false) {
                out.push(HealthIssue::NoAof { node });
            }
        }
        out
    }
}

impl RedisStore {
    /// Reads `maxmemory-policy`, `appendonly` and `appendfsync` from every node (every master
    /// of a Cluster). A node that refuses `CONFIG` is reported with `None`s, not as an error.
    pub async fn health(&self) -> Result<Health, StoreError> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET")
            .arg("maxmemory-policy")
            .arg("appendonly")
            .arg("appendfsync");
        let mut conn = self.conn.clone();
        let answers: Vec<(String, Option<Value>)> = match conn.as_cluster() {
            Some(cluster) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match cluster.route_command(&cmd, all).await? {
                    Value::Map(per_node) => per_node
                        .into_iter()
                        .map(|(node, v)| (text(&node).unwrap_or_default(), Some(v)))
                        .collect(),
                    _ => return Err(StoreError::Reply("CONFIG GET on every master")),
                }
            }
            None => {
                let v = match cmd.query_async::<Value>(&mut conn).await {
                    Ok(v) => Some(v),
                    // A refused CONFIG is an answer (unknown), not an outage.
                    Err(e) if e.code().is_some() => None,
                    Err(e) => return Err(e.into()),
                };
                vec![("redis".to_owned(), v)]
            }
        };
        let nodes = answers
            .into_iter()
            .map(|(node, v)| {
                let get = |name: &str| v.as_ref().and_then(|v| config_value(v, name));
                NodeHealth {
                    maxmemory_policy: get("maxmemory-policy"),
                    appendonly: get("appendonly").map(|v| v == "yes"),
                    appendfsync: get("appendfsync"),
                    node,
                }
            })
            .collect();
        Ok(Health { nodes })
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One setting from a `CONFIG GET` answer: a flat name/value array (RESP2) or a map (RESP3).
fn config_value(v: &Value, name: &str) -> Option<String> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some(name))
            .and_then(|kv| kv.get(1).and_then(text)),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        _ => None,
    }
}
